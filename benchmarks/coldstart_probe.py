"""One cold start, timed from inside a fresh process: import, model load, first answer.

    python benchmarks/coldstart_probe.py ours --model tweet-sentiment
    python benchmarks/coldstart_probe.py transformers [--checkpoint runs/multi-v2]

Prints one JSON line: ``import_s`` (the libraries a caller needs), ``load_s`` (model and
tokenizer), ``first_answer_s`` (one text through the model) and the answer. The parent
(``serverless.py``) times the whole process from ``exec`` to exit and reads its peak RSS, so
interpreter start is included there. ``transformers`` is the pipeline people write by hand:
``import transformers`` + torch, load the fp32 checkpoint, ``pipeline(text)``.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def ours(model: str, text: str) -> dict[str, object]:
    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    t1 = time.perf_counter()
    classifier = load_classifier(Settings(model=model))
    t2 = time.perf_counter()
    [prediction] = classifier.classify([text])
    t3 = time.perf_counter()
    return {
        "import_s": t1 - T0,
        "load_s": t2 - t1,
        "first_answer_s": t3 - t2,
        "answer": prediction.label,
    }


def transformers_pipeline(
    checkpoint: Path | None, threads: int, text: str, layers: int | None = None
) -> dict[str, object]:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hf_baseline import load_pipeline

    t1 = time.perf_counter()
    pipe, source = load_pipeline(checkpoint, threads, layers)
    t2 = time.perf_counter()
    scores = pipe(text)
    t3 = time.perf_counter()
    scores = scores[0] if scores and isinstance(scores[0], list) else scores
    return {
        "import_s": t1 - T0,
        "load_s": t2 - t1,
        "first_answer_s": t3 - t2,
        "answer": max(scores, key=lambda s: s["score"])["label"],
        "weights": source,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["ours", "transformers"])
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text", default="I love this")
    parser.add_argument("--layers", type=int, help="baseline encoder depth without a checkpoint")
    args = parser.parse_args()
    if args.kind == "ours":
        out = ours(args.model, args.text)
    else:
        out = transformers_pipeline(args.checkpoint, args.threads, args.text, args.layers)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
