"""GPU benchmark: the accelerator path next to a transformers pipeline on the same GPU, one run.

    python benchmarks/gpu.py --data ../shared/data/tweeteval/sentiment \\
        --posts ../shared/data/stream/tweets.jsonl [--out benchmarks/results] [--quick]

The shipped model is an int8 ONNX graph for CPUs. On a GPU the torch backend runs it from the
fp32 checkpoint ``sentistream dequantize`` writes (the weights the int8 graph multiplies by), so
this script:

1. records the machine (GPU name, memory, driver, CPU, libraries, ONNX Runtime providers);
2. dequantizes the default model and checks every precision (fp32, tf32, fp16, bf16) on the
   TweetEval validation tweets: agreement with the int8 model on CPU, macro-recall;
3. measures the classifier core in one process, rounds interleaved (ours: ``Classifier``
   through ``load_classifier``, the product path, per precision and batch shape; the baseline:
   ``transformers.pipeline`` on the same network and GPU, batch 1 as most scripts call it, and
   batch 64 in fp32 and fp16 as a user who tunes it would; the int8 model on this host's CPU
   cores for scale);
4. runs ``sentistream classify --backend torch`` and the pipeline script file in, file out,
   process start included;
5. measures the GPU's dense matmul peak per dtype with torch and reports model FLOP
   utilisation (useful ops of the real token lengths per second over that peak).

Writes ``<out>/<date>-<gpu>-gpu.json`` and ``.md``. Every section is written as soon as it is
measured, so a run cut short keeps what it had. Without a GPU it runs on the CPU (``--quick``
for a dry run of the script itself); the figures then say so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import interleaved, library_versions, machine, spread  # noqa: E402

LABELS = ["negative", "neutral", "positive"]


def gpu_info() -> dict[str, Any]:
    """The GPU as torch and nvidia-smi see it (empty when there is none)."""
    import torch

    info: dict[str, Any] = {"torch_cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        info["nvidia_smi"] = out
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    import onnxruntime as ort

    info["onnxruntime_providers"] = ort.get_available_providers()
    return info


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(dtype_name: str, m: int, k: int, n: int, seconds: float = 1.0) -> dict[str, Any]:
    """Dense matmul ops/s with torch on the benchmark device: median of 5 timed windows."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {
        "fp32": torch.float32,
        "tf32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }[dtype_name]
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    rates = []
    for _ in range(5):
        calls, t0 = 0, time.perf_counter()
        while True:
            for _ in range(10):
                a @ b
            sync()
            calls += 10
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        rates.append(2.0 * m * k * n * calls / elapsed)
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"dtype": dtype_name, "shape_mkn": [m, k, n], "ops_per_s": spread(rates)}


def _timed(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def macro_recall(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean([(pred[gold == c] == c).mean() for c in range(3) if (gold == c).any()]))


class Report:
    """Results dict written to JSON (and Markdown) after every section."""

    def __init__(self, out: Path, stem: str) -> None:
        self.out, self.stem = out, stem
        self.data: dict[str, Any] = {"errors": {}}

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"[gpu-bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            value = fn()
            self.data[name] = value
        except Exception:  # one section failing must not lose the others
            self.data["errors"][name] = traceback.format_exc()[-3000:]
            print(self.data["errors"][name], flush=True)
            value = None
        print(f"[gpu-bench] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        self.write()
        return value

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{self.stem}.json").write_text(json.dumps(self.data, indent=2))
        (self.out / f"{self.stem}.md").write_text(markdown(self.data))


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown section: heading, table, blank line."""
    return [
        f"## {title}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def _rate(s: dict[str, float]) -> str:
    return f"{s['median']:.0f} [{s['min']:.0f}-{s['max']:.0f}]"


def _times(ratio: float | None) -> str:
    return f"{float('nan') if ratio is None else ratio:.2f}x"


def markdown(r: dict[str, Any]) -> str:
    g = r.get("gpu", {})
    m = r.get("machine", {})
    lines = [
        f"# GPU benchmark {r.get('date', '')}",
        "",
        f"GPU: {g.get('name', 'none')} ({g.get('memory_gib', '?')} GiB, capability "
        f"{g.get('capability', '?')}, CUDA {g.get('cuda', '?')}; nvidia-smi: "
        f"{g.get('nvidia_smi')}). CPU: {m.get('cpu')} ({m.get('cores')} cores). ONNX Runtime "
        f"providers: {g.get('onnxruntime_providers')}. Libraries: {r.get('libraries')}.",
        "",
        f"Model: {r.get('model')}; weights on the GPU: `sentistream dequantize` of it "
        f"({r.get('dequantize', {}).get('seconds', '?')} s). Command: `{r.get('command')}`.",
        "",
    ]
    acc = r.get("accuracy") or {}
    if acc:
        lines += _table(
            "Precision check (TweetEval sentiment validation)",
            ["variant", "device", "agreement with int8 (CPU)", "macro-recall"],
            [
                [name, row["device"], f"{row['agreement_with_int8']:.4f}",
                 f"{row['macro_recall']:.4f}"]
                for name, row in acc.items()
            ],
        )  # fmt: skip
    core = r.get("core")
    if core:
        lines += _table(
            f"Classifier core, posts/s ({core['posts']} posts, {core['rounds']} rounds "
            "interleaved, median [min-max])",
            ["variant", "posts/s", "vs pipeline batch 1", "vs pipeline fp16 batch 64", "MFU"],
            [
                [name, _rate(row["posts_per_s"]), _times(row.get("vs_pipeline_b1")),
                 _times(row.get("vs_pipeline_fp16_b64")),
                 "" if row.get("mfu") is None else f"{100 * row['mfu']:.2f}%"]
                for name, row in core["variants"].items()
            ],
        )  # fmt: skip
    st = r.get("stages")
    if st:
        lines += _table(
            f"Where the time goes ({st['posts']} posts, {st['batches']} batches, "
            f"{st['precision']})",
            ["stage", "s (median)", "us per post"],
            [
                [name, f"{row['seconds']['median']:.3f}", f"{row['us_per_post']:.1f}"]
                for name, row in st.items()
                if isinstance(row, dict)
            ],
        )
    ln = r.get("lanes") or {}
    if ln:
        lines += _table(
            "Lanes (torch backend, GPU default)",
            ["lanes", "posts/s", "vs 1 lane"],
            [
                [name, _rate(row["posts_per_s"]), _times(row["vs_lanes_1"])]
                for name, row in ln.items()
            ],
        )
    cli = r.get("file")
    if cli:
        lines += _table(
            f"File in, file out, process start included ({cli['posts']} posts)",
            ["command", "wall s", "posts/s", "vs pipeline batch 1"],
            [
                [f"`{row['command']}`", f"{row['wall_s']:.2f}", f"{row['posts_per_s']:.0f}",
                 _times(row.get("vs_pipeline_b1"))]
                for row in cli["runs"].values()
            ],
        )  # fmt: skip
    peaks = r.get("peaks") or []
    if peaks:
        lines += _table(
            "Dense matmul peak (torch)",
            ["dtype", "shape", "ops/s"],
            [
                [row["dtype"], str(row["shape_mkn"]), f"{row['ops_per_s']['median'] / 1e12:.1f} T"]
                for row in peaks
            ],
        )
    if r.get("errors"):
        lines += ["## Errors", ""] + [
            f"- {k}: {v.splitlines()[-1]}" for k, v in r["errors"].items()
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="TweetEval sentiment folder")
    parser.add_argument("--posts", type=Path, required=True, help="JSONL posts (id, text)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--core-posts", type=int, default=20000)
    parser.add_argument("--file-posts", type=int, default=5000)
    parser.add_argument("--b1-posts", type=int, default=2000, help="posts for pipeline batch 1")
    parser.add_argument("--b64-posts", type=int, default=10000, help="posts for pipeline batch 64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of the script")
    parser.add_argument(
        "--sections",
        default="accuracy,core,file,peaks",
        help="comma-separated: accuracy, stages, lanes, core, file, peaks",
    )
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "critical")
    if args.quick:
        args.core_posts, args.file_posts, args.b1_posts, args.rounds = 300, 200, 100, 1
        args.b64_posts = 300

    from sentistream.config import Settings
    from sentistream.repository import ModelRepository
    from sentistream.runtime import load_classifier
    from sentistream.training.dequantize import checkpoint_from_onnx

    gpu = gpu_info()
    on_gpu = bool(gpu["torch_cuda"])
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu.get("name", "cpu")).lower()).strip("-") or "cpu"
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    report = Report(args.out, f"{date}-{slug}-gpu" + ("-quick" if args.quick else ""))
    report.data.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine=machine(),
        gpu=gpu,
        libraries=library_versions(),
    )
    folder = ModelRepository(Settings().model_repository).resolve(args.model)
    report.data["model"] = f"{folder.parent.name} v{folder.name}"
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    ckpt = work / "checkpoint"

    def dequantize() -> dict[str, Any]:
        t0 = time.perf_counter()
        checkpoint_from_onnx(folder, ckpt)
        return {"seconds": round(time.perf_counter() - t0, 2), "folder": str(ckpt)}

    report.section("dequantize", dequantize)
    precisions = ["fp32", "tf32", "fp16", "bf16"] if on_gpu else ["fp32"]
    device = "cuda" if on_gpu else "cpu"

    def torch_classifier(precision: str, batch: int = 0, tokens: int = 0) -> Any:
        # batch / tokens 0: the GPU defaults (GPU_BATCH_SIZE rows, GPU_MAX_BATCH_TOKENS)
        return load_classifier(
            Settings(
                backend="torch",
                model=str(ckpt),
                torch_precision=precision,
                batch_size=batch,
                max_batch_tokens=tokens,
            )
        )

    # The CPU row stays on the CPU even where onnxruntime-gpu would pick its CUDA provider.
    int8 = load_classifier(
        Settings(model=args.model, providers=["CPUExecutionProvider"]).with_lane_per_core()
    )
    val = [
        t for t in (args.data / "val_text.txt").read_text(encoding="utf-8").split("\n") if t.strip()
    ]
    gold = np.array([int(x) for x in (args.data / "val_labels.txt").read_text().split()])
    val = val[: len(gold)]
    if args.quick:
        val, gold = val[:200], gold[:200]

    def accuracy() -> dict[str, Any]:
        base = np.array([LABELS.index(p.label) for p in int8.classify(val)])
        rows = {
            "int8 ONNX (shipped)": {
                "device": "cpu",
                "agreement_with_int8": 1.0,
                "macro_recall": macro_recall(base, gold),
            }
        }
        for precision in precisions:
            clf = torch_classifier(precision)
            pred = np.array([LABELS.index(p.label) for p in clf.classify(val)])
            rows[f"torch {precision}"] = {
                "device": device,
                "agreement_with_int8": float((pred == base).mean()),
                "macro_recall": macro_recall(pred, gold),
            }
        return rows

    sections = set(args.sections.split(","))
    if "accuracy" in sections:
        report.section("accuracy", accuracy)

    posts = [
        json.loads(line)
        for line in args.posts.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ][: max(args.core_posts, args.file_posts)]
    texts = [p["text"] for p in posts][: args.core_posts]

    def core() -> dict[str, Any]:
        from hf_baseline import load_pipeline
        from roofline import count_model_ops

        ops = count_model_ops(folder / "model.onnx")
        lengths = [len(ids) for ids in int8.encode([int8.prepare(t) for t in texts])]
        ops_per_post = float(np.mean([sum(ops.ops(n)) for n in lengths]))
        variants: dict[str, Callable[[], float]] = {}
        peak_dtype: dict[str, str] = {}

        def rate(fn: Callable[[], object], n: int) -> float:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return n / (time.perf_counter() - t0)

        def classify_rate(clf: Any) -> Callable[[], float]:
            return lambda: rate(lambda: clf.classify(texts), len(texts))

        for precision in precisions:
            clf = torch_classifier(precision)
            shape = f"auto batch {clf.batch_size}, {clf.max_batch_tokens} tokens"
            name = f"ours torch {precision} ({shape})"
            variants[name] = classify_rate(clf)
            peak_dtype[name] = precision
        if on_gpu:
            for batch in (32, 64, 128, 512, 1024):
                name = f"ours torch fp16 batch {batch}"
                variants[name] = classify_rate(torch_classifier("fp16", batch, 131072))
                peak_dtype[name] = "fp16"
        if "CUDAExecutionProvider" in gpu["onnxruntime_providers"]:
            ort_gpu = load_classifier(
                Settings(model=args.model, providers=["CUDAExecutionProvider"])
            )
            variants["ours int8 ONNX, ORT CUDA provider"] = lambda: rate(
                lambda: ort_gpu.classify(texts), len(texts)
            )
        cpu_row = f"ours int8 ONNX on the CPU ({os.cpu_count()} cores, shipped settings)"
        variants[cpu_row] = lambda: rate(lambda: int8.classify(texts), len(texts))
        b1_texts, b64_texts = texts[: args.b1_posts], texts[: args.b64_posts]
        for label, precision, batch, subset in (
            ("pipeline fp32 batch 1", "fp32", 1, b1_texts),
            ("pipeline fp32 batch 64", "fp32", 64, b64_texts),
            ("pipeline fp16 batch 64", "fp16", 64, b64_texts),
        ):
            if precision != "fp32" and not on_gpu:
                continue
            pipe, _ = load_pipeline(ckpt, threads=os.cpu_count() or 1, precision=precision)

            def pipeline_rate(p: Any, b: int, s: list[str]) -> Callable[[], float]:
                return lambda: rate(lambda: p(s, batch_size=b), len(s))

            variants[label] = pipeline_rate(pipe, batch, subset)
            peak_dtype[label] = precision
        measured = interleaved(variants, rounds=args.rounds, warmup=1)
        rows: dict[str, Any] = {}
        b1 = statistics.median(measured["pipeline fp32 batch 1"])
        f16 = statistics.median(measured.get("pipeline fp16 batch 64", [float("nan")]))
        for name, values in measured.items():
            med = statistics.median(values)
            rows[name] = {
                "posts_per_s": spread(values),
                "vs_pipeline_b1": med / b1,
                "vs_pipeline_fp16_b64": med / f16,
                "peak_dtype": peak_dtype.get(name),
            }
        return {
            "posts": len(texts),
            "b1_posts": len(b1_texts),
            "b64_posts": len(b64_texts),
            "rounds": args.rounds,
            "ops_per_post": ops_per_post,
            "mean_tokens": float(np.mean(lengths)),
            "variants": rows,
        }

    def stages() -> dict[str, Any]:
        """Where one classify call of the GPU default spends its time: each stage alone, median
        of 3 after a warm-up; "forward, one sync" launches every batch and waits once."""
        import torch

        clf = torch_classifier("fp32")
        cleaned = [clf.prepare(t) for t in texts]
        ids = clf.encode(cleaned)
        plan = clf.plan_batches([len(x) for x in ids])
        model = clf.backend.model

        def forward_one_sync() -> None:
            outs = []
            with torch.inference_mode():
                for idx in plan:
                    input_ids, mask = clf._pad(ids, idx)
                    outs.append(
                        model(
                            torch.from_numpy(input_ids).to(clf.backend.device),
                            torch.from_numpy(mask).to(clf.backend.device),
                        )
                    )
            sync()

        probs, lengths = clf.probabilities_of_ids(ids)
        steps: dict[str, Callable[[], object]] = {
            "classify (all stages)": lambda: clf.classify(texts),
            "prepare (clean + validate)": lambda: [clf.prepare(t) for t in texts],
            "encode (tokenizer)": lambda: clf.encode(cleaned),
            "pad only": lambda: [clf._pad(ids, idx) for idx in plan],
            "pad + forward, sync per batch (as shipped)": lambda: list(clf._forward_all(ids, plan)),
            "pad + forward, one sync": forward_one_sync,
            "build predictions": lambda: clf.build_predictions(probs, lengths, ["sentiment"]),
        }
        out: dict[str, Any] = {
            "posts": len(texts),
            "batches": len(plan),
            "precision": clf.backend.precision,
        }
        for name, fn in steps.items():
            fn()
            times = []
            for _ in range(3):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t0)
            out[name] = {
                "seconds": spread(times),
                "us_per_post": 1e6 * statistics.median(times) / len(texts),
            }
        return out

    if "stages" in sections:
        report.section("stages", stages)

    def lanes() -> dict[str, Any]:
        """The GPU default with 1, 2 and 4 lanes (batches in flight from that many threads, so
        the host pads and launches one batch while the GPU runs another)."""
        variants: dict[str, Callable[[], float]] = {}

        def lane_rate(clf: Any) -> Callable[[], float]:
            return lambda: len(texts) / _timed(lambda: clf.classify(texts))

        for n in (1, 2, 4):
            clf = torch_classifier("fp32")
            clf.lanes = n
            variants[f"lanes {n}"] = lane_rate(clf)
        measured = interleaved(variants, rounds=args.rounds, warmup=1)
        one = statistics.median(measured["lanes 1"])
        return {
            name: {"posts_per_s": spread(v), "vs_lanes_1": statistics.median(v) / one}
            for name, v in measured.items()
        }

    if "lanes" in sections:
        report.section("lanes", lanes)
    core_result = report.section("core", core) if "core" in sections else None

    def file_runs() -> dict[str, Any]:
        src = work / "posts.jsonl"
        src.write_text("".join(json.dumps(p) + "\n" for p in posts[: args.file_posts]))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        py = sys.executable
        commands = {
            "ours torch (auto)": [
                py,
                "-m",
                "sentistream",
                "classify",
                "--backend",
                "torch",
                "--model",
                str(ckpt),
                "--input",
                str(src),
                "--output",
                str(work / "ours.jsonl"),
            ],
            "ours int8 ONNX (default providers)": [
                py,
                "-m",
                "sentistream",
                "classify",
                "--input",
                str(src),
                "--output",
                str(work / "int8.jsonl"),
            ],
            "pipeline fp32 batch 1": [
                py,
                str(HERE / "hf_classify_file.py"),
                "--checkpoint",
                str(ckpt),
                "--input",
                str(src),
                "--output",
                str(work / "hf.jsonl"),
                "--threads",
                str(os.cpu_count() or 1),
            ],
        }
        runs: dict[str, Any] = {}
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
            shown = " ".join(Path(c).name if "/" in c else c for c in cmd)
            runs[name] = {
                "command": shown,
                "wall_s": round(wall, 3),
                "posts_per_s": args.file_posts / wall,
            }
        b1 = runs["pipeline fp32 batch 1"]["posts_per_s"]
        for row in runs.values():
            row["vs_pipeline_b1"] = row["posts_per_s"] / b1
        return {"posts": args.file_posts, "runs": runs}

    if "file" in sections:
        report.section("file", file_runs)

    def peaks() -> list[dict[str, Any]]:
        big = 8192 if on_gpu else 512
        rows = [matmul_peak(d, big, big, big) for d in precisions]
        if on_gpu:
            rows.append(matmul_peak("fp16", 10240, 384, 1536))  # one FFN matmul of a batch
        return rows

    peak_rows = report.section("peaks", peaks) if "peaks" in sections else None
    if core_result and peak_rows:
        best: dict[str, float] = {}
        for row in peak_rows:
            best[row["dtype"]] = max(best.get(row["dtype"], 0.0), row["ops_per_s"]["median"])
        for row in core_result["variants"].values():
            if row.get("peak_dtype") in best:
                row["mfu"] = (
                    row["posts_per_s"]["median"]
                    * core_result["ops_per_post"]
                    / best[row["peak_dtype"]]
                )
        report.write()
    print(f"[gpu-bench] wrote {report.out / report.stem}.json", flush=True)
    return 0 if not report.data["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
