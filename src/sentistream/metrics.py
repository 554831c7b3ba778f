"""Classification metrics with numpy only (usable on the serving path, no scikit-learn).

The official TweetEval metrics: sentiment = macro-averaged recall over its 3 classes;
emotion, hate, offensive = macro-F1; irony = F1 of the irony class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "OFFICIAL_METRIC",
    "classification_report",
    "confusion_matrix",
    "macro_f1",
    "macro_recall",
    "official_score",
]

IntArray = npt.NDArray[np.int64]

# task name -> (metric name, positive class index for single-class F1 or None)
OFFICIAL_METRIC: dict[str, str] = {
    "sentiment": "macro_recall",
    "emotion": "macro_f1",
    "hate": "macro_f1",
    "offensive": "macro_f1",
    "irony": "f1_irony",
    "reviews": "accuracy",  # SST-2 and IMDB report accuracy
}


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> IntArray:
    """Rows are true classes, columns predicted classes."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape} vs {p.shape}")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes):
        raise ValueError("labels out of range")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _per_class(cm: IntArray) -> tuple[npt.NDArray[np.float64], ...]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1, support


def macro_recall(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Unweighted mean of per-class recall (SemEval-2017 4A / TweetEval sentiment)."""
    _, recall, _, _ = _per_class(confusion_matrix(y_true, y_pred, n_classes))
    return float(recall.mean())


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    _, _, f1, _ = _per_class(confusion_matrix(y_true, y_pred, n_classes))
    return float(f1.mean())


def official_score(
    task: str, y_true: Sequence[int], y_pred: Sequence[int], n_classes: int
) -> float:
    """The TweetEval official metric for ``task`` (macro-F1 for tasks it does not know)."""
    metric = OFFICIAL_METRIC.get(task, "macro_f1")
    if metric == "macro_recall":
        return macro_recall(y_true, y_pred, n_classes)
    if metric == "accuracy":
        return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0
    if metric == "f1_irony":
        _, _, f1, _ = _per_class(confusion_matrix(y_true, y_pred, n_classes))
        return float(f1[1])
    return macro_f1(y_true, y_pred, n_classes)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str], task: str = ""
) -> dict[str, Any]:
    """Accuracy, macro recall/F1, the official metric, per-class P/R/F1 and the confusion matrix."""
    n = len(labels)
    cm = confusion_matrix(y_true, y_pred, n)
    precision, recall, f1, support = _per_class(cm)
    total = int(cm.sum())
    return {
        "n": total,
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "official_metric": OFFICIAL_METRIC.get(task, "macro_f1"),
        "official_score": official_score(task, y_true, y_pred, n),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {"labels": list(labels), "rows_true_cols_pred": cm.tolist()},
    }
