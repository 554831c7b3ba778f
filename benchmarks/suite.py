"""The benchmark suite: every figure of docs/performance.md in one run (``make bench``).

Sections, each side by side with its baseline in the same run and reported as ratios:

1. classify: ``sentistream classify --input F --output O`` (process start included) vs the same
   file through a transformers + torch pipeline (``hf_classify_file.py``, pipeline batch size 1,
   its default, and 32), rounds interleaved;
2. roofline: int8/fp32 matmul peak measured with ONNX Runtime, ops per post from real token
   lengths, MFU at batch 1, 8, 32 and bucketed (``roofline.py``);
3. serverless: cold start, import, load, peak RSS, model size, CLI and server vs the pipeline
   (``serverless.py``);
4. server latency at 50% and 90% of saturation, ours vs the FastAPI + pipeline endpoint
   (``latency.py``);
5. tuning log: the ABAB experiments on the hot path (``tuning.py``);
6. stream end to end: ``bench_stream.py`` (Redis in -> workers -> Redis out vs a naive loop);
7. models side by side: ``bench_models.py`` when ``--models`` is given.

Writes ``benchmarks/results/<date>-<host>.json`` and ``<date>-<host>.md`` with PNG plots
beside them. ``--quick`` runs everything small (about 3 minutes) to check the machinery; its
figures are not for comparison and go to ``<date>-<host>-quick.*``.

    python benchmarks/suite.py --data ../shared/data [--checkpoint runs/multi-v2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    DATA,
    RESULTS,
    ROOT,
    background_load,
    baseline_args,
    child_env,
    free_stem,
    library_versions,
    machine,
    ratio_spread,
    run_measured,
    spread,
    val_texts,
)

HERE = Path(__file__).resolve().parent


def accelerator() -> dict[str, Any]:
    """What a GPU run would use: ORT providers and torch CUDA (never required)."""
    import onnxruntime as ort

    info: dict[str, Any] = {"onnxruntime_providers": ort.get_available_providers()}
    nvidia = shutil.which("nvidia-smi")
    info["nvidia_smi"] = None
    if nvidia:
        out = subprocess.run(
            [nvidia, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["nvidia_smi"] = out.stdout.strip() or None
    # torch is asked in a child process: importing it here would put ~300 MB and its OpenMP
    # runtime into the process that runs the in-process measurements.
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; c = torch.cuda.is_available(); "
         "print(c, torch.cuda.get_device_name(0) if c else '')"],
        capture_output=True, text=True, check=False, env=child_env(),
    )  # fmt: skip
    if probe.returncode == 0:
        cuda, _, name = probe.stdout.strip().partition(" ")
        info["torch_cuda"] = cuda == "True"
        if name:
            info["torch_device"] = name
    else:
        info["torch_cuda"] = None
    info["used"] = (
        "CUDAExecutionProvider" if "CUDAExecutionProvider" in info["onnxruntime_providers"] else
        "CPUExecutionProvider"
    )  # fmt: skip
    return info


# -- 1. file in, file out ---------------------------------------------------------------------
def classify_section(
    model: str,
    data: Path,
    checkpoint: Path | None,
    *,
    posts: int | None,
    rounds: int,
    threads: int,
    pipeline_batches: tuple[int, ...],
) -> dict[str, Any]:
    texts = val_texts(data, posts)
    cli = [sys.executable, "-m", "sentistream", "classify", "--model", model]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "posts.jsonl"
        src.write_text(
            "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
        )
        out = Path(tmp) / "out.jsonl"
        runners: dict[str, Callable[[], dict[str, float]]] = {}

        def ours() -> dict[str, float]:
            r = run_measured(
                [*cli, "--input", str(src), "--output", str(out), "--no-progress",
                 "--lanes", str(threads), "--intra-op-threads", "1"],
                child_env(),
            )  # fmt: skip
            summary = json.loads(r["stderr"].strip().splitlines()[-1])
            return {
                "posts_per_s": len(texts) / r["wall_s"],
                "in_process_posts_per_s": summary["records"] / summary["seconds"],
                "peak_rss_mb": r["peak_rss_mb"],
                "wall_s": r["wall_s"],
            }

        runners["sentistream classify"] = ours
        for batch in pipeline_batches:

            def pipe(batch: int = batch) -> dict[str, float]:
                cmd = [
                    sys.executable, str(HERE / "hf_classify_file.py"), "--input", str(src),
                    "--output", str(out), "--batch-size", str(batch), "--threads", str(threads),
                ]  # fmt: skip
                cmd += baseline_args(checkpoint, model)
                r = run_measured(cmd, child_env())
                summary = json.loads(r["stderr"].strip().splitlines()[-1])
                return {
                    "posts_per_s": len(texts) / r["wall_s"],
                    "in_process_posts_per_s": summary["records"] / summary["seconds"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    "wall_s": r["wall_s"],
                    "load_s": summary["load_seconds"],
                }

            runners[f"transformers pipeline (batch_size={batch})"] = pipe
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
        ours()  # warm the page cache for both
        next(iter(runners.values()))()
        names = list(runners)
        for r in range(rounds):
            for name in names if r % 2 == 0 else list(reversed(names)):
                runs[name].append(runners[name]())
    result: dict[str, Any] = {
        "posts": len(texts),
        "rounds": rounds,
        "threads": threads,
        "data": f"{data / 'val_text.txt'} as JSONL",
        "commands": {
            "ours": f"sentistream classify --model {model} --input posts.jsonl --output "
            f"out.jsonl --no-progress --lanes {threads} --intra-op-threads 1 (the default for "
            f"a file on {threads} cores: one single-threaded lane per core)",
            "baseline": "python benchmarks/hf_classify_file.py --input posts.jsonl --output "
            "out.jsonl --batch-size B " + " ".join(baseline_args(checkpoint, model)),
        },
        "runs": {},
    }
    base = runs["sentistream classify"]
    for name, rs in runs.items():
        entry: dict[str, Any] = {
            k: spread([r[k] for r in rs])
            for k in ("posts_per_s", "in_process_posts_per_s", "peak_rss_mb", "wall_s")
        }
        if name != "sentistream classify":
            entry["ours_over_this"] = ratio_spread(
                [r["posts_per_s"] for r in base], [r["posts_per_s"] for r in rs]
            )
            entry["in_process_ours_over_this"] = ratio_spread(
                [r["in_process_posts_per_s"] for r in base],
                [r["in_process_posts_per_s"] for r in rs],
            )
        result["runs"][name] = entry
    default_pipe = f"transformers pipeline (batch_size={pipeline_batches[0]})"
    result["ratio_vs_default_pipeline"] = result["runs"][default_pipe]["ours_over_this"]["median"]
    result["target_ratio"] = 10
    result["met_target"] = result["ratio_vs_default_pipeline"] >= 10
    return result


# -- 6./7. the existing benchmarks, as subprocesses --------------------------------------------
def run_existing(
    script: str,
    args: list[str],
    stem_suffix: str,
    timeout: float,
    env: dict[str, str] | None = None,
    keep_files: bool = False,
) -> dict[str, Any]:
    """Run benchmarks/<script>; return the JSON it wrote (``<date>-<host>-<stem_suffix>.json``).
    Unless ``keep_files``, the script's own result files are put back as they were before (the
    suite embeds the figures in its own file; a standalone run of the day stays untouched)."""
    host = machine()["host"]
    pattern = f"*-{host}-{stem_suffix}.*"
    # The script's files: <date>-<host>-<suffix>.json/.md, or -<suffix>-2.json... when a run of
    # the day exists already (benchlib.free_stem); not <suffix>-<other words> of other runs.
    own = re.compile(rf"\d{{4}}-\d{{2}}-\d{{2}}-{re.escape(host)}-{re.escape(stem_suffix)}(-\d+)?")

    def files() -> list[Path]:
        return [
            p
            for p in RESULTS.glob(f"*-{host}-{stem_suffix}*")
            if p.suffix in (".json", ".md") and own.fullmatch(p.stem)
        ]

    before = {p: p.read_bytes() for p in files()}
    started = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args],
            env=child_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{script} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        written = [p for p in files() if p.suffix == ".json" and p.stat().st_mtime >= started]
        if not written:
            raise RuntimeError(f"{script} wrote no {pattern} result")
        result: dict[str, Any] = json.loads(
            max(written, key=lambda p: p.stat().st_mtime).read_text()
        )
        prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
        result["command"] = f"{prefix}python benchmarks/{script} " + " ".join(args)
        return result
    finally:
        if not keep_files:
            for p in files():
                if p in before:
                    p.write_bytes(before[p])
                elif p.stat().st_mtime >= started:
                    p.unlink()


# -- plots ------------------------------------------------------------------------------------
def plots(results: dict[str, Any], stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = RESULTS / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    sec = results.get("classify")
    if isinstance(sec, dict) and "runs" in sec:
        names = list(sec["runs"])
        med = [sec["runs"][n]["posts_per_s"]["median"] for n in names]
        err = [
            [m - sec["runs"][n]["posts_per_s"]["min"] for n, m in zip(names, med, strict=True)],
            [sec["runs"][n]["posts_per_s"]["max"] - m for n, m in zip(names, med, strict=True)],
        ]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.barh(names, med, xerr=err, color=["tab:green"] + ["tab:gray"] * (len(names) - 1))
        ax.set_xlabel(
            f"posts/s, file in to file out, process start included ({sec['posts']} posts)"
        )
        ax.invert_yaxis()
        save(fig, "classify")

    roof = results.get("roofline")
    if isinstance(roof, dict) and "mfu" in roof:
        names = list(roof["mfu"])
        fig, ax = plt.subplots(figsize=(7, 3.2))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [roof["mfu"][n]["mfu_vs_int8_peak"] for n in names],
               width=0.4, label="MFU vs int8 peak")  # fmt: skip
        ax.bar([i + 0.2 for i in x], [roof["mfu"][n]["mixed_peak_utilisation"] for n in names],
               width=0.4, label="vs mixed int8/fp32 peak")  # fmt: skip
        ax.axhline(roof["target_mfu"], color="tab:red", linestyle="--", label="target 60%")
        ax.set_xticks(list(x), names)
        ax.set_ylim(0, 1)
        ax.set_ylabel("utilisation")
        ax.legend(fontsize=8)
        save(fig, "roofline")

    lat = results.get("latency")
    if isinstance(lat, dict) and "ours_rest" in lat:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        labels, p50, p99 = [], [], []
        for key, name in (("ours_rest", "sentistream"), ("baseline_rest", "pipeline")):
            if key not in lat:
                continue
            for level, r in lat[key]["levels"].items():
                labels.append(f"{name}\n{level} ({r['offered_per_s']:.0f}/s)")
                p50.append(r["p50_ms"] or 0)
                p99.append(r["p99_ms"] or 0)
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log)")
        ax.legend()
        save(fig, "latency")

    sl = results.get("serverless")
    if isinstance(sl, dict) and "cli" in sl:
        rows = [("CLI", sl["cli"]["wall_s"], sl["cli"]["peak_rss_mb"]),
                ("pipeline script", sl["transformers_pipeline"]["wall_s"],
                 sl["transformers_pipeline"]["peak_rss_mb"])]  # fmt: skip
        if "server" in sl:
            rows += [("server", sl["server"]["first_answer_s"], sl["server"]["peak_rss_mb"]),
                     ("pipeline server", sl["baseline_server"]["first_answer_s"],
                      sl["baseline_server"]["peak_rss_mb"])]  # fmt: skip
        if "server_one_model" in sl:
            one = sl["server_one_model"]
            rows.insert(3, ("server, 1 model", one["first_answer_s"], one["peak_rss_mb"]))
        if "server_serverless" in sl:
            one = sl["server_serverless"]
            rows.insert(4, ("1 model, HTTP", one["first_answer_s"], one["peak_rss_mb"]))
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
        colors = ["tab:gray" if "pipeline" in r[0] else "tab:green" for r in rows]
        a1.bar([r[0] for r in rows], [r[1]["median"] for r in rows], color=colors)
        a1.axhline(0.5, color="tab:red", linestyle="--")
        a1.set_ylabel("start to first answer, s")
        a2.bar([r[0] for r in rows], [r[2]["median"] for r in rows], color=colors)
        a2.axhline(200, color="tab:red", linestyle="--")
        a2.set_ylabel("peak RSS, MB")
        for ax in (a1, a2):
            ax.tick_params(axis="x", labelsize=7, labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        save(fig, "serverless")

    tun = results.get("tuning")
    if isinstance(tun, dict) and "experiments" in tun:
        labels, meds, lo, hi = [], [], [], []
        for exp in tun["experiments"]:
            for name, v in exp["variants"].items():
                if "ratio_vs_default" in v:
                    r = v["ratio_vs_default"]
                    labels.append(f"{exp.get('short', exp['name'])}: {name}")
                    meds.append(r["median"])
                    lo.append(r["median"] - r["min"])
                    hi.append(r["max"] - r["median"])
        if labels:
            fig, ax = plt.subplots(figsize=(8, 0.3 * len(labels) + 1))
            ax.barh(labels, meds, xerr=[lo, hi], color="tab:blue")
            ax.axvline(1.0, color="black")
            ax.set_xlabel("speed vs shipped default (paired ABAB rounds)")
            ax.tick_params(axis="y", labelsize=7)
            ax.invert_yaxis()
            save(fig, "tuning")
    return written


# -- report -----------------------------------------------------------------------------------
def _fmt(s: dict[str, Any] | None, digits: int = 1) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, n={s['n']})"


def hardware_bound(results: dict[str, Any]) -> dict[str, Any] | None:
    """The best classify ratio this machine allows this network: the forward at the measured
    int8 peak (roofline ceiling) plus this run's own process start and non-forward work set to
    zero, over the default pipeline's posts/s from the same run. When it is under the target,
    no implementation of this network reaches the target here; a smaller network has to."""
    c, r = results.get("classify"), results.get("roofline")
    if not (isinstance(c, dict) and "runs" in c and isinstance(r, dict)):
        return None
    ceiling = r.get("ceiling_posts_per_s_at_int8_peak")
    if not ceiling:
        return None
    ours = c["runs"]["sentistream classify"]
    posts = c["posts"]
    # Process start of our CLI in this run: wall time less the in-process time.
    start_s = max(
        0.0,
        posts / ours["posts_per_s"]["median"] - posts / ours["in_process_posts_per_s"]["median"],
    )
    best_posts_per_s = posts / (start_s + posts / ceiling)
    # The default pipeline (batch size 1) is the first baseline classify_section records.
    pipe = next(v for k, v in c["runs"].items() if k != "sentistream classify")
    ratio = best_posts_per_s / pipe["posts_per_s"]["median"]
    return {
        "ceiling_posts_per_s_at_int8_peak": ceiling,
        "process_start_s": round(start_s, 3),
        "best_file_posts_per_s": round(best_posts_per_s, 1),
        "best_ratio_vs_default_pipeline": round(ratio, 2),
        "target_reachable_with_this_network": ratio >= c["target_ratio"],
    }


def _peak_used_sentence(r: dict[str, Any]) -> str:
    """What the utilisation figures divide by (result files before 2026-12-03 have no
    ``peak_used``: their peak was the square shape's)."""
    used = r.get("peak_used")
    if not used:
        return ""
    return (
        f"Peak used for every utilisation figure: the fastest shape measured, before or after "
        f"the timed runs: int8 {used['int8']['ops_per_s'] / 1e9:.0f} Gops/s "
        f"({' x '.join(map(str, used['int8']['shape_mkn']))}), fp32 "
        f"{used['fp32']['ops_per_s'] / 1e9:.0f} Gops/s; the int8 peak moved "
        f"{used['int8_drift_after_over_before']:.2f}x over the timed runs. "
    )


def markdown(results: dict[str, Any], images: list[str]) -> str:
    m = results["machine"]
    bg = results["background"]
    lines = [
        f"# Benchmark suite {results['date']}{' (quick mode)' if results['quick'] else ''}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa']) or '-'}; "
        f"accelerator: {results['accelerator']['used']} (torch CUDA: "
        f"{results['accelerator'].get('torch_cuda')}). Libraries: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v)
        + f". Model: {results['model']}. Baseline weights: {results['baseline_weights']}.",
        "",
        f"Command: `{results['command']}`. Figures are median (min-max, n runs).",
        "",
    ]
    if bg["start"]["contaminated"] or bg["end"]["contaminated"]:
        lines += [
            "**Contaminated:** training processes shared the machine during this run "
            f"(load average at start {bg['start']['loadavg']}, at end {bg['end']['loadavg']}); "
            "absolute figures are low and noisy. Ratios measured in interleaved rounds are "
            "less affected but still not clean.",
            "",
        ]
    for name in images:
        lines.append(f"![{name}]({name})")
    lines.append("")
    c = results.get("classify")
    if isinstance(c, dict) and "runs" in c:
        lines += [
            f"## Classify a file ({c['posts']} posts, process start included)",
            "",
            "| runner | posts/s | in-process posts/s | peak RSS MB | ours / this | "
            "ours / this, in process |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in c["runs"].items():
            ratio = r.get("ours_over_this")
            inproc = r.get("in_process_ours_over_this")
            lines.append(
                f"| {name} | {_fmt(r['posts_per_s'])} | {_fmt(r['in_process_posts_per_s'])} | "
                f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(ratio, 2) if ratio else '1'} | "
                f"{_fmt(inproc, 2) if inproc else '1'} |"
            )
        lines += [
            "",
            f"Target >= 10x the default pipeline: {'met' if c['met_target'] else 'NOT met'} "
            f"({c['ratio_vs_default_pipeline']}x).",
            "",
        ]
        hb = results.get("hardware_bound")
        if isinstance(hb, dict):
            lines += [
                "Hardware bound (roofline section): with every op of the forward at the measured "
                f"int8 peak ({hb['ceiling_posts_per_s_at_int8_peak']:.0f} posts/s), no other "
                f"work and this run's process start ({hb['process_start_s']:.2f} s), the file "
                f"would go at {hb['best_file_posts_per_s']:.0f} posts/s: "
                f"**{hb['best_ratio_vs_default_pipeline']:.2f}x** the default pipeline, the most "
                "any implementation of this network can reach on this machine"
                + (
                    "."
                    if hb["target_reachable_with_this_network"]
                    else " (under the target: only a smaller network can reach it here)."
                ),
                "",
            ]
    r = results.get("roofline")
    if isinstance(r, dict) and "mfu" in r:
        pk = r["peak"]
        lines += [
            "## Roofline",
            "",
            f"Measured peak ({r['threads']} threads, ONNX Runtime): int8 MatMulInteger "
            f"{pk['int8']['ops_per_s']['median'] / 1e9:.0f} Gops/s, fp32 MatMul "
            f"{pk['fp32']['ops_per_s']['median'] / 1e9:.0f} Gops/s (shape "
            f"{pk['int8']['shape_mkn']}). "
            + _peak_used_sentence(r)
            + f"Tokens per post: mean {r['tokens']['mean']}, p95 "
            f"{r['tokens']['p95']}, max {r['tokens']['max']}. Ops per post: "
            f"{r['ops_per_post']['mean_gops']} G ({r['ops_per_post']['int8_share']:.0%} of them "
            "on int8 weights).",
            "",
            "| shape (M K N) | int8 Gops/s | fp32 Gops/s |",
            "| --- | --- | --- |",
        ]
        for i8, f32 in zip(
            r["peak_at_model_shapes"]["int8"], r["peak_at_model_shapes"]["fp32"], strict=True
        ):
            lines.append(
                f"| {' '.join(map(str, i8['shape_mkn']))} | "
                f"{i8['ops_per_s']['median'] / 1e9:.0f} | {f32['ops_per_s']['median'] / 1e9:.0f} |"
            )
        lines += [
            "",
            "| requests of | posts/s | useful Gops/s | MFU (int8 peak) | vs mixed peak | "
            "padding overhead | forward share | MFU of forward (executed ops) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, x in r["mfu"].items():
            label = name
            if x.get("lanes", 1) > 1:
                label = f"bucketed, {x['lanes']} lanes x 1 thread (shipped default)"
            elif name == "bucketed":
                label = f"bucketed, 1 lane x {r['threads']} threads"
            lines.append(
                f"| {label} | {_fmt(x['posts_per_s'])} | {_fmt(x['achieved_gops_per_s'])} | "
                f"{x['mfu_vs_int8_peak']:.1%} | {x['mixed_peak_utilisation']:.1%} | "
                f"{x['padding_overhead']:.2f}x | {x['forward_share_of_time']:.0%} | "
                f"{x['mfu_forward_only_executed_ops']:.1%} |"
            )
        prof = r.get("profile")
        if isinstance(prof, dict):
            top = ", ".join(f"{k} {v:.0%}" for k, v in list(prof["share_by_op_type"].items())[:6])
            lines += [
                "",
                f"Forward time by op (ORT profiler, bucketed): {top}. int8 kernels "
                f"{prof['share_int8_kernels']:.0%} of the time at "
                f"{prof['int8_kernel_efficiency']:.0%} of the int8 peak; "
                + (
                    f"fp32 kernels {prof['share_fp32_kernels']:.0%} at "
                    f"{prof['fp32_kernel_efficiency']:.0%} of the fp32 peak; "
                    if prof.get("fp32_kernel_efficiency") is not None
                    else "no fp32 matmul kernels; "
                )
                + f"other ops {prof['share_other']:.0%}.",
            ]
        lines += [
            "",
            f"Target MFU >= 60% of the int8 peak: {'met' if r['met_target'] else 'NOT met'} "
            f"(best {r['best_mfu']:.1%}).",
            "",
        ]
        if "ceiling_posts_per_s_at_int8_peak" in r:
            lines += [
                "Hardware ceiling of this network on this machine (every op at the measured "
                f"int8 peak, nothing else costing time): "
                f"{r['ceiling_posts_per_s_at_int8_peak']:.0f} posts/s at "
                f"{r['tokens']['mean']:.1f} tokens per post.",
                "",
            ]
    s = results.get("serverless")
    if isinstance(s, dict) and "cli" in s:
        lines += [
            "## Serverless profile (cold start and memory)",
            "",
            "| process | start to first answer s | import s | model load s | first inference s "
            "| peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- |",
            f'| `sentistream classify "..."` | {_fmt(s["cli"]["wall_s"], 3)} | - | - | - | '
            f"{_fmt(s['cli']['peak_rss_mb'], 0)} |",
        ]
        for key, name in (
            ("ours_in_process", "sentistream, in-process phases"),
            ("transformers_pipeline", "transformers + torch pipeline"),
        ):
            p = s[key]
            lines.append(
                f"| {name} | {_fmt(p['wall_s'], 3)} | {_fmt(p['import_s'], 3)} | "
                f"{_fmt(p['load_s'], 3)} | {_fmt(p['first_answer_s'], 3)} | "
                f"{_fmt(p['peak_rss_mb'], 0)} |"
            )
        if "server" in s:
            lines += [
                "",
                "| server | start to ready s | start to first answer s | peak RSS MB |",
                "| --- | --- | --- | --- |",
            ]
            for key, name in (("server", "sentistream serve (every model)"),
                              ("server_one_model", "sentistream serve --serve-models M"),
                              ("server_serverless",
                               "sentistream serve --serve-models M --no-grpc-enabled"),
                              ("baseline_server", "FastAPI + pipeline")):  # fmt: skip
                if key not in s:
                    continue
                p = s[key]
                lines.append(
                    f"| {name} | {_fmt(p['ready_s'], 3)} | {_fmt(p['first_answer_s'], 3)} | "
                    f"{_fmt(p['peak_rss_mb'], 0)} |"
                )
        files = s["model_files_mb"]
        ckpt = files["fp32_checkpoint"]
        ratios = ", ".join(f"{k} {v}" for k, v in s["ratios"].items())
        met = ", ".join(f"{k} {v}" for k, v in s["targets"].items() if k.endswith("met"))
        lines += [
            "",
            f"Model files: int8 ONNX {files['onnx_int8']} MB + tokenizer {files['tokenizer']} MB"
            + (f"; fp32 checkpoint {ckpt} MB" if ckpt else "")
            + f". Ratios: {ratios}. Targets (first answer < 0.5 s, peak RSS < 200 MB): {met}.",
            "",
        ]
    lat = results.get("latency")
    if isinstance(lat, dict) and "ours_rest" in lat:
        lines += [
            "## Server latency at 50% and 90% of saturation (REST, one text per request)",
            "",
            "| server | load | offered /s (arrived) | served /s | p50 ms | p90 ms | p99 ms "
            "| errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, name in (("ours_rest", "sentistream"), ("baseline_rest", "FastAPI + pipeline")):
            if key not in lat:
                continue
            sat = lat[key]["saturation"]
            lines.append(
                f"| {name} | saturation (closed loop, {sat['concurrency']} in flight) | - | "
                f"{sat['texts_per_s']} | {sat['p50_ms']} | {sat['p90_ms']} | {sat['p99_ms']} | "
                f"{sat['errors']} |"
            )
            for level, x in lat[key]["levels"].items():
                lines.append(
                    f"| {name} | {level} (open loop, Poisson) | {x['offered_per_s']} "
                    f"({x.get('arrived_per_s', '-')}) | "
                    f"{x['texts_per_s']} | {x['p50_ms']} | {x['p90_ms']} | {x['p99_ms']} | "
                    f"{x['errors']} |"
                )
        if "saturation_ratio" in lat:
            lines += ["", f"Saturation throughput, ours / baseline: {lat['saturation_ratio']}x."]
        lines.append("")
    t = results.get("tuning")
    if isinstance(t, dict) and "experiments" in t:
        lines += [
            "## Tuning log (ABAB interleaved, same process, same texts)",
            "",
            f"Rule: {t['rule']}.",
            "",
            "| experiment | workload | variant | texts/s (loads/s) | vs default (paired) | "
            "per CPU-s vs default | verdict | labels changed | max prob diff |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for exp in t["experiments"]:
            for name, v in exp["variants"].items():
                pred = v.get("predictions_vs_default", {})
                changed = (
                    f"{pred['labels_changed']} of {pred['texts']}"
                    if "labels_changed" in pred
                    else "-"
                )
                lines.append(
                    f"| {exp['name']} | {exp['workload']} ({exp['texts']}) | {name} | "
                    f"{_fmt(v.get('texts_per_s') or v.get('loads_per_s'))} | "
                    f"{_fmt(v.get('ratio_vs_default'), 3)} | "
                    f"{_fmt(v.get('cpu_ratio_vs_default'), 3)} | "
                    f"{v.get('verdict', 'shipped')} | {changed} | "
                    f"{pred.get('max_abs_prob_diff', '-')} |"
                )
        lines.append("")
    st = results.get("stream")
    if isinstance(st, dict) and "ours" in st:
        lines += [
            "## Stream end to end (Redis in -> workers -> Redis out)",
            "",
            "| setup | posts | posts/s | steady posts/s | vs naive loop | ids exactly once |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, x in st["ours"].items():
            lines.append(
                f"| {name} | {st['posts']} | {_fmt(x['posts_per_s'])} | "
                f"{_fmt(x['steady_posts_per_s'])} | {x['ratio_vs_naive']}x | {x['ids_ok']} |"
            )
        nv = st["naive"]
        lines += [
            f"| naive loop (transformers pipeline, one post at a time) | {nv['posts']} | "
            f"{nv['posts_per_s']} | - | 1x | - |",
            "",
            f"Command: `{st['command']}`. Targets: {st['targets']}.",
            "",
        ]
    mo = results.get("models")
    if isinstance(mo, dict) and "models" in mo:
        lines += [
            "## Models side by side (classifier core)",
            "",
            "| model | layers | tasks | size MB | texts/s | vs first |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for _ref, x in mo["models"].items():
            lines.append(
                f"| {x['model']} | {x['layers']} | {len(x['tasks'])} | {x['model_mb']} | "
                f"{_fmt(x['texts_per_s'])} | {x['ratio_vs_first']}x |"
            )
        lines += ["", f"Command: `{mo['command']}`.", ""]
    failed = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if failed:
        lines += ["## Sections that failed", ""]
        lines += [f"- {k}: `{v.splitlines()[-1] if v else ''}`" for k, v in failed.items()]
        lines.append("")
    lines += ["Reproduce: `make bench` (details and explanations: docs/performance.md).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--model", default="tweet-sentiment", help="NAME or NAME:VERSION")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=ROOT / "runs" / "multi-v2",
        help="fp32 training checkpoint of the model for the transformers baseline (if absent: "
        "the pretrained backbone with an untrained head, which costs the same to run)",
    )
    parser.add_argument("--models", nargs="*", default=[], help="also compare these models")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--quick", action="store_true", help="small runs to check the code")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["classify", "roofline", "serverless", "latency", "tuning", "stream", "models"],
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="only rewrite the Markdown and plots of an existing result JSON",
    )
    args = parser.parse_args()
    if args.render:
        saved: dict[str, Any] = json.loads(args.render.read_text())
        stem = args.render.stem
        if "hardware_bound" not in saved:  # derived from figures the file already has
            bound = hardware_bound(saved)
            if bound is not None:
                saved["hardware_bound"] = bound
        saved["plots"] = plots(saved, stem)
        args.render.with_suffix(".md").write_text(markdown(saved, saved["plots"]))
        return 0
    sentiment = args.data / "tweeteval" / "sentiment"
    checkpoint = args.checkpoint if (args.checkpoint / "model.safetensors").exists() else None
    quick = args.quick
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "command": "python benchmarks/suite.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": library_versions(),
        "accelerator": accelerator(),
        "model": args.model,
        "baseline_weights": f"checkpoint {checkpoint}" if checkpoint else
        "pretrained backbone + untrained head (same cost as the fine-tuned model)",
        "threads": args.threads,
        "background": {"start": background_load()},
    }  # fmt: skip

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name in args.skip:
            return
        t0 = time.perf_counter()
        print(f"[suite] {name} ...", flush=True)
        try:
            results[name] = fn()
        except Exception:  # one broken section must not lose the others' figures
            results[name] = {"error": traceback.format_exc()}
            print(results[name]["error"], file=sys.stderr, flush=True)
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[suite] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    from latency import server_latency
    from roofline import roofline
    from serverless import serverless_profile
    from tuning import run_tuning

    section(
        "classify",
        lambda: classify_section(
            args.model,
            sentiment,
            checkpoint,
            posts=300 if quick else None,
            rounds=1 if quick else 3,
            threads=args.threads,
            pipeline_batches=(1,) if quick else (1, 32),
        ),
    )
    section("roofline", lambda: roofline(args.model, sentiment, threads=args.threads, quick=quick))
    section(
        "serverless",
        lambda: serverless_profile(
            args.model, checkpoint, repeats=1 if quick else 5, threads=args.threads
        ),
    )
    section(
        "latency",
        lambda: server_latency(
            args.model,
            checkpoint,
            sentiment,
            duration=2.0 if quick else 10.0,
            threads=args.threads,
        ),
    )
    section(
        "tuning",
        lambda: run_tuning(
            args.model,
            sentiment,
            threads=args.threads,
            texts_limit=200 if quick else 1000,
            batch1_texts=50 if quick else 150,
            rounds=2 if quick else 4,
        ),
    )
    stream_args = ["--data", str(args.data / "stream" / "tweets.jsonl")]
    stream_args += (
        ["--posts", "1000", "--baseline-posts", "100", "--no-single-worker"]
        if quick
        else ["--posts", "10000", "--baseline-posts", "500"]
    )
    if checkpoint is not None:
        stream_args += ["--checkpoint", str(checkpoint)]
    # bench_stream.py's workers read the model from the environment like any deployment.
    section(
        "stream",
        lambda: run_existing(
            "bench_stream.py", stream_args, "stream", 900, env={"SENTISTREAM_MODEL": args.model}
        ),
    )
    if args.models:
        models_args = ["--data", str(sentiment), "--models", *args.models, "--output-tag",
                       "suite-models", "--repeats", "2" if quick else "5"]  # fmt: skip
        if quick:
            models_args += ["--texts", "300"]
        section(
            "models",
            lambda: run_existing(
                "bench_models.py", models_args, "suite-models", 900, keep_files=True
            ),
        )

    bound = hardware_bound(results)
    if bound is not None:
        results["hardware_bound"] = bound
    results["background"]["end"] = background_load()
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{results['machine']['host']}" + (
        "-quick" if quick else ""
    )
    if not quick:
        stem = free_stem(stem, RESULTS)
    images = plots(results, stem)
    results["plots"] = images
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(results, images))
    print(f"[suite] wrote {RESULTS / stem}.json, .md and {len(images)} plots in "
          f"{results['seconds']:.0f} s", flush=True)  # fmt: skip
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
