"""A balanced decision: per-class logit offsets chosen on validation.

A model trained with class weights (or on data whose class mix differs from the traffic it will
see) leans toward some classes: tweet-sentiment v3 called 216 of 869 neutral validation tweets
negative, with negative precision 0.51. Adding a constant offset to each class's logit (prior or
"logit adjustment", Menon et al. 2021) moves the decision boundary without retraining; a common
offset changes nothing, so the first class's is fixed at 0.

:func:`fit_decision_bias` searches the offsets on a grid and keeps the ones with the best
macro-recall among those that meet the balance floors (every class's precision and recall,
neutral recall) on every given group of validation rows, with a margin. When no offset meets
them, it keeps the one that misses them least. :func:`balance_checkpoint` applies the result to a
training checkpoint by adding the offsets to the primary head's bias, so the ONNX export, the
int8 model and the torch backend all carry the same decision; the checkpoint records the offsets
and the figures before and after.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sentistream.metrics import classification_report

__all__ = ["BalanceFloors", "balance_checkpoint", "fit_decision_bias"]

Array = np.ndarray[Any, Any]


class BalanceFloors:
    """Floors the decision must meet on every validation group (with ``margin`` added)."""

    def __init__(
        self,
        min_precision: float = 0.60,
        min_recall: float = 0.60,
        min_neutral_recall: float = 0.65,
        margin: float = 0.02,
    ) -> None:
        self.min_precision = min_precision + margin
        self.min_recall = min_recall + margin
        self.min_neutral_recall = min_neutral_recall + margin

    def shortfall(self, cm: Array, labels: Sequence[str]) -> float:
        """Sum of the amounts by which per-class precision/recall miss their floors (0: met)."""
        tp = np.diag(cm).astype(np.float64)
        support = np.maximum(cm.sum(axis=1), 1)
        predicted = np.maximum(cm.sum(axis=0), 1)
        recall, precision = tp / support, tp / predicted
        total = 0.0
        for i, label in enumerate(labels):
            floor = self.min_neutral_recall if label == "neutral" else self.min_recall
            total += max(0.0, floor - recall[i]) + max(0.0, self.min_precision - precision[i])
        return total


def _confusion(y: Array, pred: Array, n: int) -> Array:
    return np.bincount(y * n + pred, minlength=n * n).reshape(n, n)


def fit_decision_bias(
    logits: Array,
    labels: Sequence[int],
    label_names: Sequence[str],
    *,
    groups: Sequence[Array] | None = None,
    floors: BalanceFloors | None = None,
    span: float = 2.0,
    step: float = 0.05,
) -> tuple[list[float], dict[str, Any]]:
    """Offsets per class (the first is 0) and a report; see the module doc. ``groups`` are
    row-index arrays whose every one must meet the floors (default: all rows)."""
    floors = floors or BalanceFloors()
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n = len(label_names)
    if z.shape != (len(y), n):
        raise ValueError(f"logits of shape {z.shape} for {len(y)} labels of {n} classes")
    groups = list(groups) if groups else [np.arange(len(y))]
    grid = np.round(np.arange(-span, span + step / 2, step), 6)
    best: tuple[float, float, tuple[float, ...]] | None = None
    for offsets in itertools.product(grid, repeat=n - 1):
        trial = np.asarray((0.0, *offsets))
        pred = (z + trial).argmax(axis=1)
        miss = 0.0
        for rows in groups:
            miss += floors.shortfall(_confusion(y[rows], pred[rows], n), label_names)
        cm = _confusion(y, pred, n)
        recall = float(np.mean(np.diag(cm) / np.maximum(cm.sum(axis=1), 1)))
        # lexicographic: meet the floors (least shortfall) first, then macro-recall, then the
        # smallest offsets (ties are broken towards changing the model least)
        key = (-round(miss, 9), recall, -float(np.abs(trial).sum()))
        if best is None or key > (best[0], best[1], -float(np.abs(best[2]).sum())):
            best = (key[0], key[1], tuple(trial))
    assert best is not None
    bias = [round(float(b), 4) for b in best[2]]
    before = classification_report(y.tolist(), z.argmax(1).tolist(), list(label_names), "sentiment")
    after = classification_report(
        y.tolist(), (z + np.asarray(bias)).argmax(1).tolist(), list(label_names), "sentiment"
    )
    report = {
        "method": "per-class logit offsets, grid search on validation: best macro-recall "
        "among offsets meeting the balance floors on every validation group",
        "offsets": dict(zip(label_names, bias, strict=True)),
        "floors_met": best[0] == 0.0,
        "floors": {
            "min_precision": floors.min_precision,
            "min_recall": floors.min_recall,
            "min_neutral_recall": floors.min_neutral_recall,
        },
        "before": _brief(before),
        "after": _brief(after),
    }
    return bias, report


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "macro_recall": round(report["macro_recall"], 5),
        "macro_f1": round(report["macro_f1"], 5),
        "accuracy": round(report["accuracy"], 5),
        "per_class": {
            k: {"precision": round(v["precision"], 4), "recall": round(v["recall"], 4)}
            for k, v in report["per_class"].items()
        },
    }


def balance_checkpoint(folder: Path, output: Path, *, floors: BalanceFloors | None = None) -> Path:
    """Fit the offsets on the run's own validation split of its primary task (every source's
    hold-out together, and the TweetEval validation alone when the run has it, must meet the
    floors) and write ``output``: the checkpoint with the offsets added to the primary head's
    bias, ``decision_bias`` recorded in checkpoint.json."""
    import torch

    from sentistream.text import clean_or_empty
    from sentistream.training.finetune import encode_texts, predict_logits
    from sentistream.training.model import load_checkpoint, save_checkpoint
    from sentistream.training.transfer import run_splits

    model, tokenizer, meta = load_checkpoint(folder)
    if meta.get("decision_bias"):
        raise ValueError(f"{folder} already carries a decision bias: balance its parent")
    task = str(meta["primary_task"])
    paths = {k: Path(v["path"]) for k, v in (meta.get("task_data") or {}).items()}
    path = paths.get(task, Path(meta["data"]))
    _, val, ranges = run_splits(path, meta.get("training_config") or {})
    max_chars = int(meta.get("max_chars", 1000))
    tokenizer.no_padding()
    ids = encode_texts(
        tokenizer,
        [clean_or_empty(t, max_chars) for t in val.texts],
        int(meta["max_length"]),
        str(meta.get("truncation", "head")),
    )
    k = model.task_names.index(task)
    logits = predict_logits(model, ids, torch.device("cpu"))[k]
    groups = [np.arange(len(val.labels))]
    tweeteval = [r for src, r in ranges.items() if Path(src).is_dir()]
    groups += [np.arange(a, b) for a, b in tweeteval if (a, b) != (0, len(val.labels))]
    bias, report = fit_decision_bias(logits, val.labels, model.tasks[task], groups=groups)
    report["validation"] = {src: list(r) for src, r in ranges.items()}
    report["groups"] = ["all validation"] + [
        f"{src}" for src, r in ranges.items() if Path(src).is_dir()
    ]
    for src, (a, b) in ranges.items():
        adjusted = (logits[a:b] + np.asarray(bias)).argmax(1).tolist()
        report.setdefault("after_by_source", {})[src] = _brief(
            classification_report(val.labels[a:b], adjusted, model.tasks[task], "sentiment")
        )
    head = model.heads[task]
    assert isinstance(head, torch.nn.Linear) and head.bias is not None
    with torch.no_grad():
        head.bias.add_(torch.tensor(bias, dtype=head.bias.dtype))
    out_meta = {k: v for k, v in meta.items() if k not in {"tasks", "task_order"}}
    out_meta["decision_bias"] = {task: report}
    out_meta["balanced_from"] = str(folder)
    save_checkpoint(model, tokenizer, output, out_meta)
    print(
        json.dumps(
            {
                "offsets": report["offsets"],
                "floors_met": report["floors_met"],
                "before": report["before"],
                "after": report["after"],
            },
            indent=1,
        )
    )
    return output
