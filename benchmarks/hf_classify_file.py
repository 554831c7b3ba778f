"""The baseline of ``sentistream classify --input F --output O``: the same file in and out through
a Hugging Face transformers pipeline on the same network (``hf_baseline.load_pipeline``).

    python benchmarks/hf_classify_file.py --input posts.jsonl --output out.jsonl \
        [--checkpoint runs/multi-v2] [--batch-size 1] [--threads 2]

Reads JSONL posts (``id``, ``text``), runs ``pipeline(texts, batch_size=...)`` (the default
batch size of a pipeline is 1, which is what most hand-written scripts use) and writes one JSON
record per post (id, label, score, scores). Prints a JSON summary on stderr like the CLI does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, help="encoder depth when no checkpoint is given")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hf_baseline import load_pipeline

    pipe, source = load_pipeline(args.checkpoint, args.threads, args.layers)
    loaded = time.perf_counter()
    posts = [json.loads(line) for line in args.input.read_text(encoding="utf-8").splitlines()]
    results = pipe([p["text"] for p in posts], batch_size=args.batch_size)
    with args.output.open("w", encoding="utf-8") as out:
        for post, scores in zip(posts, results, strict=True):
            best = max(scores, key=lambda s: s["score"])
            record = {
                "id": post.get("id"),
                "label": best["label"],
                "score": round(float(best["score"]), 6),
                "scores": {s["label"]: round(float(s["score"]), 6) for s in scores},
            }
            out.write(json.dumps(record) + "\n")
    done = time.perf_counter()
    summary = {
        "records": len(posts),
        "seconds": round(done - loaded, 4),
        "load_seconds": round(loaded - started, 4),
        "batch_size": args.batch_size,
        "weights": source,
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
