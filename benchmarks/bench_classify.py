"""CLI benchmark: cold start, peak RSS and file throughput of `sentistream classify`.

Every figure is measured in fresh processes (process start included unless said otherwise),
repeated, and reported as median and spread. Results go to
``benchmarks/results/<date>-<host>-classify.json`` and a Markdown summary beside it.

    python benchmarks/bench_classify.py --data ../shared/data/tweeteval/sentiment
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def timed_run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall time and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {stderr[-2000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "stdout": stdout,
        "stderr": stderr,
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a live process in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def machine() -> dict[str, Any]:
    cpu = ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    import onnxruntime
    import tokenizers

    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "isa": [f for f in wanted if f in flags],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="TweetEval sentiment folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="tweet-sentiment")
    args = parser.parse_args()
    exe = [sys.executable, "-m", "sentistream"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")

    texts = (args.data / "val_text.txt").read_text(encoding="utf-8").split("\n")[:-1]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": args.model,
    }

    # Cold start: a fresh process classifies one text and prints the answer.
    timed_run([*exe, "classify", "--model", args.model, "warm the page cache"], env)
    cold = [
        timed_run([*exe, "classify", "--model", args.model, "I love this"], env)
        for _ in range(args.repeats)
    ]
    results["cold_start"] = {
        "command": 'sentistream classify "I love this"',
        "wall_s": spread([c["wall_s"] for c in cold]),
        "peak_rss_mb": spread([c["peak_rss_mb"] for c in cold]),
        "answer": cold[0]["stdout"].strip(),
    }
    import_only = [
        timed_run([sys.executable, "-c", "import sentistream.cli, sentistream.runtime"], env)
        for _ in range(args.repeats)
    ]
    results["import"] = {"wall_s": spread([c["wall_s"] for c in import_only])}

    # Throughput: the validation texts as a JSONL file, in and out of files.
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "val.jsonl"
        src.write_text(
            "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
        )
        runs = []
        for _ in range(max(3, args.repeats // 2 + 1)):
            r = timed_run(
                [
                    *exe,
                    "classify",
                    "--model",
                    args.model,
                    "--input",
                    str(src),
                    "--output",
                    str(Path(tmp) / "out.jsonl"),
                    "--no-progress",
                ],
                env,
            )
            summary = json.loads(r["stderr"].strip().splitlines()[-1])
            runs.append(
                {
                    "wall_s": r["wall_s"],
                    "rss": r["peak_rss_mb"],
                    "records": summary["records"],
                    "in_process_s": summary["seconds"],
                }
            )
    n = runs[0]["records"]
    results["file_throughput"] = {
        "command": "sentistream classify --input val.jsonl --output out.jsonl",
        "posts": n,
        "posts_per_s_process": spread([n / r["wall_s"] for r in runs]),
        "posts_per_s_in_process": spread([n / r["in_process_s"] for r in runs]),
        "peak_rss_mb": spread([r["rss"] for r in runs]),
    }

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{results['machine']['host']}-classify"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    c, f = results["cold_start"], results["file_throughput"]
    md = [
        f"# CLI benchmark {results['date']}",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"ISA {' '.join(results['machine']['isa'])}; onnxruntime "
        f"{results['machine']['onnxruntime']}, Python {results['machine']['python']}. "
        f"Model: {args.model}.",
        "",
        "| figure | median | min | max | runs |",
        "| --- | --- | --- | --- | --- |",
        f"| cold start to printed answer (s) | {c['wall_s']['median']} | {c['wall_s']['min']} | "
        f"{c['wall_s']['max']} | {c['wall_s']['n']} |",
        f"| cold start peak RSS (MB) | {c['peak_rss_mb']['median']} | {c['peak_rss_mb']['min']} | "
        f"{c['peak_rss_mb']['max']} | {c['peak_rss_mb']['n']} |",
        f"| import time (s) | {results['import']['wall_s']['median']} | "
        f"{results['import']['wall_s']['min']} | {results['import']['wall_s']['max']} | "
        f"{results['import']['wall_s']['n']} |",
        f"| file throughput, process start included (posts/s, {n} posts) | "
        f"{f['posts_per_s_process']['median']} | {f['posts_per_s_process']['min']} | "
        f"{f['posts_per_s_process']['max']} | {f['posts_per_s_process']['n']} |",
        f"| file throughput, in process (posts/s) | {f['posts_per_s_in_process']['median']} | "
        f"{f['posts_per_s_in_process']['min']} | {f['posts_per_s_in_process']['max']} | "
        f"{f['posts_per_s_in_process']['n']} |",
        f"| file run peak RSS (MB) | {f['peak_rss_mb']['median']} | {f['peak_rss_mb']['min']} | "
        f"{f['peak_rss_mb']['max']} | {f['peak_rss_mb']['n']} |",
        "",
        "Commands: `" + c["command"] + "` and `" + f["command"] + "`; reproduce with `make bench`.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
