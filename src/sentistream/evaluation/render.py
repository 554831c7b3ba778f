"""The suite as Markdown tables (for model cards and docs) and one comparison plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["comparison_table", "markdown", "plot"]

_SHORT = {"negative": "neg", "neutral": "neu", "positive": "pos"}


def _pr(report: dict[str, Any], label: str) -> str:
    c = report["per_class"].get(label)
    return "-" if c is None else f"{c['precision']:.3f} / {c['recall']:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """One model's suite: a row per set, the check-suite mean, the balance verdict and the
    confusion matrices."""
    labels = ["negative", "neutral", "positive"]
    head = "| set | n | macro-recall | macro-F1 | accuracy | " + " | ".join(
        f"{_SHORT.get(lab, lab)} P / R" for lab in labels
    )
    lines = [head + " |", "|" + " --- |" * (5 + len(labels))]
    for r in result["sets"]:
        name = f"**{r['name']}**" if r["role"] != "check" else r["name"]
        lines.append(
            f"| {name} | {r['n']:,} | {r['macro_recall']:.3f} | {r['macro_f1']:.3f} | "
            f"{r['accuracy']:.3f} | " + " | ".join(_pr(r, lab) for lab in labels) + " |"
        )
    s = result["summary"]
    if "check_mean_macro_recall" in s:
        per = s["check_mean_per_class"]
        cells = [
            f"{per[lab]['precision']:.3f} / {per[lab]['recall']:.3f}" if lab in per else "-"
            for lab in labels
        ]
        lines.append(
            f"| **check-suite mean** | | **{s['check_mean_macro_recall']:.3f}** | "
            f"{s['check_mean_macro_f1']:.3f} | | " + " | ".join(cells) + " |"
        )
    verdict = s["balance"]
    lines += [
        "",
        "Balanced errors (every class precision and recall >= 0.60, neutral recall >= 0.65, on "
        "validation and on the check-suite mean): "
        + ("**yes**" if verdict["balanced"] else "**no**: " + "; ".join(verdict["failures"])),
    ]
    everyday = next((r for r in result["sets"] if r["role"] == "everyday"), None)
    if everyday is not None and "accuracy_by_kind" in everyday:
        kinds = everyday["accuracy_by_kind"]
        lines += [
            "",
            "Everyday posts, accuracy by kind: "
            + ", ".join(f"{k} {v:.0%}" for k, v in kinds.items())
            + f" (all {everyday['accuracy']:.1%} of {everyday['n']}).",
        ]
    lines += [
        "",
        "<details><summary>Confusion matrices (rows true, columns predicted)</summary>",
        "",
    ]
    for r in result["sets"]:
        cm = r["confusion_matrix"]
        names = [_SHORT.get(x, x) for x in cm["labels"]]
        rows = [
            f"{names[i]}: " + " ".join(f"{v:>5}" for v in row)
            for i, row in enumerate(cm["rows_true_cols_pred"])
        ]
        lines.append(f"- {r['name']} ({' '.join(names)}): " + "; ".join(rows))
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def comparison_table(results: Sequence[dict[str, Any]]) -> str:
    """Macro-recall of several models side by side, a row per set, then the check mean."""
    names = [r["model"] for r in results]
    lines = ["| set | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for i, first in enumerate(results[0]["sets"]):
        cells = [f"{r['sets'][i]['macro_recall']:.3f}" for r in results]
        lines.append(f"| {first['name']} | " + " | ".join(cells) + " |")
    means = [
        f"**{r['summary'].get('check_mean_macro_recall', float('nan')):.3f}**" for r in results
    ]
    lines.append("| **check-suite mean** | " + " | ".join(means) + " |")
    accs = [f"{r['summary'].get('everyday_accuracy', float('nan')):.1%}" for r in results]
    lines.append("| everyday accuracy | " + " | ".join(accs) + " |")
    return "\n".join(lines) + "\n"


def plot(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Macro-recall per set, one bar per model, with the check-suite mean; ``None`` when
    matplotlib is not installed (it comes with the [train] extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sets = [s["name"] for s in results[0]["sets"]] + ["check-suite mean"]
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(sets) * max(1, len(results)) + 1.5))
    for k, result in enumerate(results):
        values = [s["macro_recall"] for s in result["sets"]]
        values.append(result["summary"].get("check_mean_macro_recall", 0.0))
        ys = [i + k * width for i in range(len(sets))]
        ax.barh(ys, values, height=width, label=result["model"])
        for y, v in zip(ys, values, strict=True):
            ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=7)
    ax.set_yticks([i + width * (len(results) - 1) / 2 for i in range(len(sets))])
    ax.set_yticklabels(sets)
    ax.invert_yaxis()
    ax.set_xlim(0.4, 1.0)
    ax.set_xlabel("macro-recall")
    ax.set_title("Evaluation suite: validation, check sets, everyday posts")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
