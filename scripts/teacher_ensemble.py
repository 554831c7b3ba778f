"""Which teacher signal to distill from: single teachers and weighted ensembles on validation.

    python scripts/teacher_ensemble.py --teacher runs/teacher-mpnet \
        --members runs/minilm-s1 runs/minilm-s2 runs/minilm-s3 --output FILE.json

Scores every checkpoint on the teacher run's own validation split (TweetEval validation plus
the fixed hold-outs of the extra sets; the check sets are never used) through the shared,
resumable score cache, then reports macro-recall (all validation, and TweetEval validation
alone) and per-class precision/recall for: each model, the members' mean, and the teacher with
the members at several weights. Selection is on validation only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from sentistream.metrics import classification_report
from sentistream.text import clean_or_empty
from sentistream.training.transfer import ensemble_logits, run_splits, score_checkpoint


def _report(logits: np.ndarray[Any, Any], y: list[int], labels: list[str]) -> dict[str, Any]:
    r = classification_report(y, logits.argmax(1).tolist(), labels, "sentiment")
    return {
        "macro_recall": round(r["macro_recall"], 5),
        "macro_f1": round(r["macro_f1"], 5),
        "per_class": {
            k: {"precision": round(v["precision"], 4), "recall": round(v["recall"], 4)}
            for k, v in r["per_class"].items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--members", type=Path, nargs="*", default=[])
    parser.add_argument("--cache", type=Path, default=Path("runs/teacher-cache"))
    parser.add_argument("--weights", type=float, nargs="*", default=[1.0, 2.0, 3.0])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    meta = json.loads((args.teacher / "checkpoint.json").read_text())
    task = meta["primary_task"]
    labels = meta["tasks"][task]
    path = Path(meta["task_data"][task]["path"])
    _, val, ranges = run_splits(path, meta["training_config"])
    texts = [clean_or_empty(t, int(meta.get("max_chars", 1000))) for t in val.texts]
    tweeteval = next((r for src, r in ranges.items() if Path(src).is_dir()), None)

    logits = {}
    for folder in [args.teacher, *args.members]:
        scores = score_checkpoint(folder, texts, args.cache)
        order = json.loads((folder / "checkpoint.json").read_text()).get("task_order") or [task]
        logits[str(folder)] = scores[order.index(task)]

    def row(name: str, z: np.ndarray[Any, Any]) -> dict[str, Any]:
        out = {"signal": name, "validation": _report(z, val.labels, labels)}
        if tweeteval is not None:
            a, b = tweeteval
            out["tweeteval_validation"] = _report(z[a:b], val.labels[a:b], labels)
        return out

    rows = [row(name, z) for name, z in logits.items()]
    members = [logits[str(m)] for m in args.members]
    teacher = logits[str(args.teacher)]
    if members:
        [mean] = ensemble_logits([[z] for z in members])
        rows.append(row("members' mean", mean))
        for w in args.weights:
            [mixed] = ensemble_logits(
                [[teacher]] + [[z] for z in members], [w] + [1.0] * len(members)
            )
            rows.append(row(f"teacher x{w:g} + members", mixed))
    result = {
        "validation": {"examples": len(texts), "sources": {k: list(v) for k, v in ranges.items()}},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        te = r.get("tweeteval_validation", {}).get("macro_recall")
        print(
            f"{r['signal']:<40} all-val {r['validation']['macro_recall']:.4f}  tweeteval-val {te}"
        )


if __name__ == "__main__":
    main()
