"""Score a model folder on a labelled split with the official TweetEval metric and more."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentistream.errors import InvalidInputError
from sentistream.metrics import classification_report

if TYPE_CHECKING:
    from sentistream.config import Settings

__all__ = ["evaluate_model"]


def evaluate_model(
    settings: Settings,
    data: Path,
    *,
    split: str = "val",
    task: str | None = None,
    output: Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> dict[str, Any]:
    """Classify every example of ``split`` and report accuracy, per-class P/R/F1, confusion
    matrix and the task's official metric. A text empty after cleaning is still scored (the
    model sees the empty string), so the denominators match the official split."""
    from sentistream.runtime import load_classifier
    from sentistream.training.data import load_split

    classifier = load_classifier(settings)
    task = task or classifier.primary_task
    if task not in classifier.tasks:
        raise InvalidInputError(
            f"model has no task {task!r} (tasks: {', '.join(classifier.tasks)})"
        )
    labelled = load_split(data, split, text_column=text_column, label_column=label_column)
    labels = classifier.tasks[task]
    if labelled.label_names != labels and labelled.label_names != [
        str(i) for i in range(len(labels))
    ]:
        raise InvalidInputError(
            f"dataset labels {labelled.label_names} do not match model labels {labels}"
        )
    cleaned, empty = [], 0
    for text in labelled.texts:
        try:
            cleaned.append(classifier.prepare(text))
        except InvalidInputError:
            cleaned.append("")
            empty += 1
    started = time.perf_counter()
    probs, _ = classifier.probabilities(cleaned)
    seconds = time.perf_counter() - started
    predicted = probs[task].argmax(-1).tolist()
    report = classification_report(labelled.labels, predicted, labels, task)
    summary = {
        "model": f"{classifier.name}:{classifier.version}",
        "task": task,
        "data": str(data),
        "split": split,
        "n": report["n"],
        "empty_after_cleaning": empty,
        report["official_metric"]: round(report["official_score"], 5),
        "accuracy": round(report["accuracy"], 5),
        "macro_f1": round(report["macro_f1"], 5),
        "texts_per_second": round(len(cleaned) / seconds, 1) if seconds else None,
    }
    result = {"summary": summary, "report": report}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    return result
