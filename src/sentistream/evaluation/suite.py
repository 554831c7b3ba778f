"""Score a model on every set of the suite and summarise it.

Per set: macro-recall (the SemEval/TweetEval sentiment metric, the check suite's too), macro-F1,
accuracy, per-class precision and recall, and the confusion matrix. A set with fewer classes
than the model (``sts_gold``: negative / positive) is scored on those classes' probabilities
only. The summary: the check-suite mean macro-recall (unweighted over the seven sets), each
class's mean precision and recall over the check sets that have it, the everyday accuracy per
kind of post, and whether the errors are balanced (:data:`BALANCE`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sentistream.evaluation.sets import EvalSet
from sentistream.metrics import classification_report

__all__ = ["BALANCE", "balance_verdict", "score_set", "suite_report", "summarise"]

FloatArray = npt.NDArray[np.float32]
#: A model's errors fit the product when, on validation and on the check-suite mean, every
#: class has precision and recall >= ``min_precision`` / ``min_recall`` and neutral recall is
#: >= ``min_neutral_recall`` (a monitor that calls neutral posts negative raises false alarms).
BALANCE = {"min_precision": 0.60, "min_recall": 0.60, "min_neutral_recall": 0.65}


def score_set(probs: FloatArray, model_labels: Sequence[str], eval_set: EvalSet) -> dict[str, Any]:
    """The report of one set from the model's probabilities (rows = texts, columns =
    ``model_labels``)."""
    if probs.shape != (len(eval_set.texts), len(model_labels)):
        raise ValueError(
            f"{eval_set.name}: probabilities of shape {probs.shape} for "
            f"{len(eval_set.texts)} texts and {len(model_labels)} labels"
        )
    names = [lab for lab in model_labels if lab in set(eval_set.labels)]
    unknown = sorted(set(eval_set.labels) - set(model_labels))
    if unknown:
        raise ValueError(f"{eval_set.name}: labels {unknown} are not the model's {model_labels}")
    columns = [list(model_labels).index(lab) for lab in names]
    predicted = probs[:, columns].argmax(axis=1).tolist()
    truth = [names.index(lab) for lab in eval_set.labels]
    report = classification_report(truth, predicted, names, "sentiment")
    report["name"] = eval_set.name
    report["role"] = eval_set.role
    report["source"] = eval_set.source
    if eval_set.kinds:
        by_kind: dict[str, list[bool]] = {}
        for kind, t, p in zip(eval_set.kinds, truth, predicted, strict=True):
            by_kind.setdefault(kind, []).append(t == p)
        report["accuracy_by_kind"] = {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}
    return report


def summarise(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Check-suite mean, per-class means over the check sets, validation and everyday figures."""
    checks = [r for r in reports if r["role"] == "check"]
    summary: dict[str, Any] = {}
    if checks:
        summary["check_mean_macro_recall"] = float(np.mean([r["macro_recall"] for r in checks]))
        summary["check_mean_macro_f1"] = float(np.mean([r["macro_f1"] for r in checks]))
        per_class: dict[str, dict[str, float]] = {}
        labels = sorted({lab for r in checks for lab in r["per_class"]})
        for lab in labels:
            having = [r["per_class"][lab] for r in checks if lab in r["per_class"]]
            per_class[lab] = {
                "precision": float(np.mean([c["precision"] for c in having])),
                "recall": float(np.mean([c["recall"] for c in having])),
                "sets": len(having),
            }
        summary["check_mean_per_class"] = per_class
    for r in reports:
        if r["role"] == "validation":
            summary["validation_macro_recall"] = r["macro_recall"]
        if r["role"] == "everyday":
            summary["everyday_accuracy"] = r["accuracy"]
    summary["balance"] = balance_verdict(reports, summary)
    return summary


def _class_failures(per_class: dict[str, dict[str, float]], where: str) -> list[str]:
    out = []
    for lab, c in per_class.items():
        if c["precision"] < BALANCE["min_precision"]:
            out.append(f"{where} {lab} precision {c['precision']:.3f} < {BALANCE['min_precision']}")
        floor = BALANCE["min_neutral_recall"] if lab == "neutral" else BALANCE["min_recall"]
        if c["recall"] < floor:
            out.append(f"{where} {lab} recall {c['recall']:.3f} < {floor}")
    return out


def balance_verdict(reports: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Whether validation and the check-suite mean meet :data:`BALANCE`, and what fails."""
    failures: list[str] = []
    for r in reports:
        if r["role"] == "validation":
            failures += _class_failures(r["per_class"], "validation")
    if "check_mean_per_class" in summary:
        failures += _class_failures(summary["check_mean_per_class"], "check mean")
    return {"balanced": not failures, "failures": failures, "rule": dict(BALANCE)}


def suite_report(
    sets: Sequence[EvalSet],
    probabilities: Callable[[list[str]], FloatArray],
    model_labels: Sequence[str],
    model: str,
) -> dict[str, Any]:
    """Score every set with ``probabilities`` (texts -> primary-task probabilities) at once."""
    texts = [t for s in sets for t in s.texts]
    probs = probabilities(texts)
    reports = []
    start = 0
    for s in sets:
        part = probs[start : start + len(s.texts)]
        start += len(s.texts)
        reports.append(score_set(part, model_labels, s))
    return {"model": model, "sets": reports, "summary": summarise(reports)}
