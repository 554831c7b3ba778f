"""Performance regression guard that CI can afford (well under a minute).

Measures, in one process and in interleaved rounds, the classifier core (``Classifier.classify``
of the shipped model, serving defaults) and a transformers + torch text-classification pipeline
on the same network (``hf_baseline.load_pipeline``; pipeline batch size 1, its default) on the
same texts (the bundled sample posts, repeated), with the same thread count. The figure is the
median of the per-round ratios ours/pipeline: both sides see the same machine noise, so the
ratio holds on a busy 2-core CI runner where absolute texts/s do not.

It fails only on a large regression: the median ratio below ``--tolerance`` (default 0.5) times
the committed baseline in ``benchmarks/baseline.json``. ``--update`` rewrites the baseline
(do that on a quiet machine, and commit it with the reason).

    python benchmarks/guard.py            # exit 1 on a large regression
    python benchmarks/guard.py --update   # record a new baseline
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BASELINE = Path(__file__).resolve().parent / "baseline.json"
SAMPLE = Path(__file__).resolve().parent.parent / "src" / "sentistream" / "samples" / "posts.jsonl"


def guard_texts(repeat: int = 6) -> list[str]:
    texts = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    return texts * repeat


# When CI runs on a CPU of another int8 class than the baseline's (say AVX2 without VNNI, where
# int8 gains less over fp32), the baseline ratio does not carry over; the guard then fails only
# below this floor, which a lost int8 graph or a lost batching path still falls under.
CROSS_MACHINE_FLOOR = 2.0


def isa_class(flags: list[str]) -> str:
    """The int8 capability that sets the ratio: AMX, VNNI (AVX-512 or AVX), AVX-512, AVX2."""
    for name, wanted in (
        ("amx", {"amx_int8"}),
        ("vnni", {"avx512_vnni", "avx_vnni"}),
        ("avx512", {"avx512f"}),
        ("avx2", {"avx2"}),
    ):
        if wanted & set(flags):
            return name
    return "other"


def judge(
    ratio: float, baseline: float, tolerance: float, same_machine_class: bool = True
) -> tuple[bool, str]:
    """Pass unless ``ratio`` fell below ``tolerance`` x ``baseline`` (or, on another class of
    CPU than the baseline's, below the lower of that and ``CROSS_MACHINE_FLOOR``)."""
    floor = baseline * tolerance
    rule = f"{tolerance:.0%} of it"
    if not same_machine_class and floor > CROSS_MACHINE_FLOOR:
        floor, rule = CROSS_MACHINE_FLOOR, "the cross-machine floor: other CPU class"
    ok = ratio >= floor
    verdict = "ok" if ok else "REGRESSION"
    return ok, (
        f"{verdict}: ours/pipeline {ratio:.2f}x (baseline {baseline:.2f}x, fails below "
        f"{floor:.2f}x = {rule})"
    )


def measure(model: str, rounds: int, threads: int) -> dict[str, Any]:
    from hf_baseline import load_pipeline

    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    texts = guard_texts()
    clf = load_classifier(Settings(model=model, intra_op_threads=threads))
    from benchlib import model_layers

    pipe, source = load_pipeline(None, threads, model_layers(model))
    clf.classify(texts[:16])
    pipe(texts[:16], batch_size=1)

    def ours() -> float:
        t0 = time.perf_counter()
        clf.classify(texts)
        return len(texts) / (time.perf_counter() - t0)

    def theirs() -> float:
        t0 = time.perf_counter()
        pipe(texts, batch_size=1)
        return len(texts) / (time.perf_counter() - t0)

    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {
        "model": f"{clf.name}:{clf.version}",
        "texts": len(texts),
        "rounds": rounds,
        "threads": threads,
        "pipeline_weights": source,
        "ours_texts_per_s": round(statistics.median(a), 1),
        "pipeline_texts_per_s": round(statistics.median(b), 1),
        "ratios": [round(x, 3) for x in ratios],
        "ratio": round(statistics.median(ratios), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--update", action="store_true", help="write the measured baseline")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.perf_counter()
    result = measure(args.model, args.rounds, args.threads)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.update:
        from benchlib import background_load, machine

        record = {
            "ratio": result["ratio"],
            "measured": result,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "background": background_load(),
            "command": "python benchmarks/guard.py --update",
        }
        args.baseline.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
        return 0
    from benchlib import machine

    baseline = json.loads(args.baseline.read_text())
    here = isa_class(machine()["isa"])
    there = isa_class(baseline.get("machine", {}).get("isa", []))
    ok, message = judge(result["ratio"], float(baseline["ratio"]), args.tolerance, here == there)
    result.update(
        {
            "baseline_ratio": baseline["ratio"],
            "isa_class": here,
            "baseline_isa_class": there,
            "ok": ok,
            "message": message,
        }
    )
    print(json.dumps(result))
    print(message, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
