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

__all__ = ["evaluate_model", "evaluate_suite"]


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


def evaluate_suite(
    settings: Settings,
    data: Path,
    *,
    everyday: Path | None = None,
    output_dir: Path | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Score the model on the evaluation suite (``sentistream.evaluation``): TweetEval
    validation, the seven check sets under ``data/extra/check`` and the everyday posts; writes
    ``suite.json``, ``suite.md`` and ``suite.png`` into ``output_dir`` when given."""
    import numpy as np

    from sentistream.evaluation.render import markdown, plot
    from sentistream.evaluation.sets import suite_sets
    from sentistream.evaluation.suite import suite_report
    from sentistream.runtime import load_classifier

    sets = suite_sets(data, everyday)
    classifier = load_classifier(settings)
    task = task or classifier.primary_task
    if task not in classifier.tasks:
        raise InvalidInputError(
            f"model has no task {task!r} (tasks: {', '.join(classifier.tasks)})"
        )

    def probabilities(texts: list[str]) -> Any:
        cleaned = []
        for text in texts:
            try:
                cleaned.append(classifier.prepare(text))
            except InvalidInputError:
                cleaned.append("")  # scored as the empty string, like evaluate_model
        probs, _ = classifier.probabilities(cleaned)
        return np.asarray(probs[task])

    started = time.perf_counter()
    result = suite_report(
        sets, probabilities, classifier.tasks[task], f"{classifier.name}:{classifier.version}"
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "suite.json").write_text(json.dumps(result, indent=2) + "\n")
        (output_dir / "suite.md").write_text(markdown(result))
        plot([result], output_dir / "suite.png")
    return result
