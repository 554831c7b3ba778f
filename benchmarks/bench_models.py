"""Shipped models side by side on this machine: texts/s of the classifier core (int8 ONNX,
every task of each model), model file size and validation metrics from each manifest.

python benchmarks/bench_models.py --data ../shared/data/tweeteval/sentiment \
    --models tweet-sentiment tweet-sentiment-teacher tweet-sentiment:1

Each model is loaded in this process with the serving defaults; the models take turns over
``--repeats`` rounds (interleaved, so drift of the machine hits every model alike) on the same
validation texts, and the median and spread of texts/s are reported with ratios to the first
model. Writes ``benchmarks/results/<date>-<host>-models.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import RESULTS, machine, spread

from sentistream.config import Settings
from sentistream.repository import ModelRepository
from sentistream.runtime import load_classifier
from sentistream.training.data import load_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="TweetEval folder (val texts)")
    parser.add_argument("--models", nargs="+", required=True, help="NAME[:VERSION] ...")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--output-tag", default="models")
    args = parser.parse_args()

    texts = load_split(args.data, "val").texts[: args.texts]
    settings = Settings()
    repo = ModelRepository(settings.model_repository)
    classifiers = {}
    info: dict[str, Any] = {}
    for ref in args.models:
        clf = load_classifier(settings.model_copy(update={"model": ref}))
        folder = repo.resolve(ref)
        manifest = json.loads((folder / "manifest.json").read_text())
        clf.classify(texts[:64])  # warm-up
        classifiers[ref] = clf
        val = manifest.get("metrics", {}).get("validation", {})
        info[ref] = {
            "model": f"{clf.name}:{clf.version}",
            "tasks": list(clf.tasks),
            "layers": manifest.get("backbone", {}).get("num_hidden_layers"),
            "model_mb": round((folder / "model.onnx").stat().st_size / 1e6, 1),
            "val_official_int8": {
                t: round(r["int8"]["official_score"], 4) if "int8" in r else None
                for t, r in val.items()
            },
        }
    rates: dict[str, list[float]] = {ref: [] for ref in classifiers}
    for _ in range(args.repeats):
        for ref, clf in classifiers.items():
            t0 = time.perf_counter()
            clf.classify(texts)
            rates[ref].append(len(texts) / (time.perf_counter() - t0))
    first = args.models[0]
    base = spread(rates[first])["median"]
    for ref in classifiers:
        s = spread(rates[ref])
        info[ref]["texts_per_s"] = s
        info[ref]["ratio_vs_first"] = round(s["median"] / base, 3)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "data": f"{args.data} val, first {len(texts)} texts",
        "threads": settings.intra_op_threads,
        "repeats": args.repeats,
        "command": "python " + " ".join(sys.argv),
        "models": info,
    }
    host = result["machine"]["host"]
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{host}-{args.output_tag}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Models side by side ({result['machine']['cpu']}, {result['machine']['cores']} cores)",
        "",
        f"`{result['command']}`; {result['data']}; median of {args.repeats} interleaved rounds.",
        "",
        "| model | layers | tasks | size MB | texts/s (median) | spread | vs first | "
        "val official (int8) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _ref, r in info.items():
        s = r["texts_per_s"]
        vals = ", ".join(f"{t} {v:.4f}" for t, v in r["val_official_int8"].items() if v is not None)
        lines.append(
            f"| {r['model']} | {r['layers']} | {len(r['tasks'])} | {r['model_mb']} | "
            f"{s['median']:.0f} | {s['min']:.0f}-{s['max']:.0f} | {r['ratio_vs_first']}x | "
            f"{vals} |"
        )
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
