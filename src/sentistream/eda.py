"""Exploratory data analysis of a labelled dataset: ``sentistream eda DATA --output DIR``.

Writes ``DIR/README.md`` (Markdown report), ``DIR/eda.json`` (every figure) and PNG plots:
class counts and proportions per split, text length in characters and in tokens (the served
model's tokenizer, after the served cleaning), share of URLs / mentions / hashtags / emoji /
literal escapes / HTML entities, duplicates and train/validation overlap, and the most frequent
words per class. Needs matplotlib (the ``[train]`` extra); no torch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from sentistream.text import DEFAULT_MAX_CHARS, clean_or_empty
from sentistream.training.data import LabelledSplit, load_train_val

__all__ = ["eda", "surface_features"]

_URL = re.compile(r"(?:\bhttps?://|\bwww\.)\S+|\bhttp\b", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+")
_HASHTAG = re.compile(r"(?<![\w#])#\w+")
_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{4}|\\n|\\'|\\\"")
_ENTITY = re.compile(r"&(?:[a-zA-Z]+|#\d+);")
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\U0001f1e6-\U0001f1ff]")
_WORD = re.compile(r"[a-z][a-z']+")
_STOPWORD_TEXT = """
a about after again all also am an and any are as at be been before being but by can could
did do does doing don't for from had has have having he her here hers him his how i i'm if
in into is it it's its just me more most my no not now of on once only or other our out
over own s same she so some such t than that the their them then there these they this
those through to too under until up very was we were what when where which while who whom
why will with would you your user http amp rt
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def surface_features(texts: list[str]) -> dict[str, float]:
    """Share of texts containing each surface feature."""
    n = max(1, len(texts))
    patterns = {
        "url": _URL,
        "mention": _MENTION,
        "hashtag": _HASHTAG,
        "emoji": _EMOJI,
        "literal_escape": _ESCAPE,
        "html_entity": _ENTITY,
    }
    out = {name: sum(1 for t in texts if rx.search(t)) / n for name, rx in patterns.items()}
    out["empty"] = sum(1 for t in texts if not t.strip()) / n
    return out


def _top_words(texts: list[str], k: int = 15) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(w for w in _WORD.findall(t.lower()) if w not in STOPWORDS)
    return counts.most_common(k)


def _default_tokenizer() -> Path:
    from sentistream.config import BUNDLED_MODELS
    from sentistream.repository import ModelRepository

    return ModelRepository(BUNDLED_MODELS).resolve("tweet-sentiment") / "tokenizer.json"


def _stats(values: list[int]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64) if values else np.zeros(1)
    return {
        "mean": round(float(a.mean()), 2),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def eda(
    data: Path,
    output: Path,
    *,
    tokenizer_path: Path | None = None,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    val_fraction: float = 0.1,
    seed: int = 42,
    name: str | None = None,
    label_names: list[str] | None = None,
) -> dict[str, Any]:
    """Analyse ``data`` (TweetEval folder, or CSV/TSV with a seeded hold-out) into ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = load_train_val(
        data,
        val_fraction=val_fraction,
        seed=seed,
        text_column=text_column,
        label_column=label_column,
    )
    splits: dict[str, LabelledSplit] = {"train": train, "val": val}
    labels = train.label_names
    if label_names is not None:
        if len(label_names) != len(labels):
            raise ValueError(f"--label-names gives {len(label_names)} names for labels {labels}")
        labels = list(label_names)
    tokenizer = Tokenizer.from_file(str(tokenizer_path or _default_tokenizer()))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    output.mkdir(parents=True, exist_ok=True)
    title = name or data.name
    report: dict[str, Any] = {"data": str(data), "labels": labels, "splits": {}}

    lengths: dict[str, dict[str, list[int]]] = {}
    for split, ds in splits.items():
        cleaned = [clean_or_empty(t, DEFAULT_MAX_CHARS * 100) for t in ds.texts]
        tokens = [len(e.ids) for e in tokenizer.encode_batch(cleaned)]
        chars = [len(t) for t in ds.texts]
        lengths[split] = {"chars": chars, "tokens": tokens}
        counts = np.bincount(np.asarray(ds.labels, dtype=np.int64), minlength=len(labels))
        normalized = [" ".join(t.lower().split()) for t in ds.texts]
        report["splits"][split] = {
            "n": len(ds.texts),
            "class_counts": {lab: int(c) for lab, c in zip(labels, counts, strict=True)},
            "class_share": {
                lab: round(float(c) / max(1, len(ds.texts)), 4)
                for lab, c in zip(labels, counts, strict=True)
            },
            "chars": _stats(chars),
            "tokens": _stats(tokens),
            "over_max_length": round(
                sum(1 for t in tokens if t > max_length) / max(1, len(tokens)), 4
            ),
            "surface": {k: round(v, 4) for k, v in surface_features(ds.texts).items()},
            "duplicates": len(normalized) - len(set(normalized)),
            "conflicting_duplicates": _conflicts(normalized, ds.labels),
            "top_words": {
                lab: _top_words([t for t, y in zip(ds.texts, ds.labels, strict=True) if y == k])
                for k, lab in enumerate(labels)
            },
        }
    train_set = {" ".join(t.lower().split()) for t in train.texts}
    overlap = sum(1 for t in val.texts if " ".join(t.lower().split()) in train_set)
    report["train_val_overlap"] = {
        "val_texts_in_train": overlap,
        "share": round(overlap / max(1, len(val.texts)), 4),
    }

    # -- plots ------------------------------------------------------------------------------
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    width = 0.38
    x = np.arange(len(labels))
    for i, split in enumerate(splits):
        share = [report["splits"][split]["class_share"][lab] for lab in labels]
        ax.bar(
            x + (i - 0.5) * width, share, width, label=f"{split} (n={report['splits'][split]['n']})"
        )
    ax.set_xticks(x, labels, rotation=20)
    ax.set_ylabel("share of texts")
    ax.set_title(f"{title}: class proportions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "classes.png")
    plt.close(fig)

    for unit in ("chars", "tokens"):
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
        top = float(max(np.percentile(lengths["train"][unit], 99.5), 1))
        step = max(1, round(top / 40))  # whole-number bins: lengths are integers
        bins = [float(b) for b in np.arange(0, top + step, step)]
        for split in splits:
            ax.hist(
                np.clip(lengths[split][unit], 0, top),
                bins=bins,
                alpha=0.55,
                density=True,
                label=split,
            )
        if unit == "tokens":
            ax.axvline(
                max_length, color="k", linestyle="--", linewidth=1, label=f"max_length {max_length}"
            )
        ax.set_xlabel(f"length ({unit}{', after cleaning' if unit == 'tokens' else ''})")
        ax.set_ylabel("density")
        ax.set_title(f"{title}: text length in {unit}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(output / f"length_{unit}.png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    feats = list(report["splits"]["train"]["surface"])
    x = np.arange(len(feats))
    for i, split in enumerate(splits):
        ax.bar(
            x + (i - 0.5) * width,
            [report["splits"][split]["surface"][f] for f in feats],
            width,
            label=split,
        )
    ax.set_xticks(x, feats, rotation=25)
    ax.set_ylabel("share of texts")
    ax.set_title(f"{title}: surface features")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "surface.png")
    plt.close(fig)

    (output / "eda.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "README.md").write_text(_markdown(title, report, max_length))
    return report


def _conflicts(normalized: list[str], labels: list[int]) -> int:
    seen: dict[str, set[int]] = {}
    for t, y in zip(normalized, labels, strict=True):
        seen.setdefault(t, set()).add(y)
    return sum(1 for ys in seen.values() if len(ys) > 1)


def _markdown(title: str, r: dict[str, Any], max_length: int) -> str:
    labels = r["labels"]
    splits = r["splits"]
    lines = [
        f"# EDA: {title}",
        "",
        f"Data: `{r['data']}`. Generated by `sentistream eda`; figures in `eda.json`.",
        "",
        "## Classes",
        "",
        "| split | n | " + " | ".join(labels) + " |",
        "| --- | --- |" + " --- |" * len(labels),
    ]
    for split, s in splits.items():
        cells = [f"{s['class_counts'][lab]} ({100 * s['class_share'][lab]:.1f}%)" for lab in labels]
        lines.append(f"| {split} | {s['n']} | " + " | ".join(cells) + " |")
    lines += ["", "![class proportions](classes.png)", "", "## Length", ""]
    lines += [
        "| split | chars mean / median / p95 / max | tokens mean / median / p95 / max | "
        f"over {max_length} tokens |",
        "| --- | --- | --- | --- |",
    ]
    for split, s in splits.items():
        c, t = s["chars"], s["tokens"]
        lines.append(
            f"| {split} | {c['mean']} / {c['median']:.0f} / {c['p95']:.0f} / {c['max']:.0f} | "
            f"{t['mean']} / {t['median']:.0f} / {t['p95']:.0f} / {t['max']:.0f} | "
            f"{100 * s['over_max_length']:.2f}% |"
        )
    lines += [
        "",
        "Tokens are counted after the served cleaning, with the served model's tokenizer.",
        "",
        "![length in characters](length_chars.png) ![length in tokens](length_tokens.png)",
        "",
        "## Surface features (share of texts)",
        "",
        "| split | " + " | ".join(splits["train"]["surface"]) + " |",
        "| --- |" + " --- |" * len(splits["train"]["surface"]),
    ]
    for split, s in splits.items():
        lines.append(
            f"| {split} | " + " | ".join(f"{100 * v:.1f}%" for v in s["surface"].values()) + " |"
        )
    ov = r["train_val_overlap"]
    lines += [
        "",
        "![surface features](surface.png)",
        "",
        "## Duplicates and overlap",
        "",
        "| split | duplicate texts | duplicates with conflicting labels |",
        "| --- | --- | --- |",
    ]
    for split, s in splits.items():
        lines.append(f"| {split} | {s['duplicates']} | {s['conflicting_duplicates']} |")
    lines += [
        "",
        f"Validation texts also in train (case/space-insensitive): {ov['val_texts_in_train']} "
        f"({100 * ov['share']:.2f}%).",
        "",
        "## Most frequent words per class (train, stopwords removed)",
        "",
        "| class | words |",
        "| --- | --- |",
    ]
    for lab, words in splits["train"]["top_words"].items():
        lines.append(f"| {lab} | " + ", ".join(f"{w} ({n})" for w, n in words) + " |")
    lines.append("")
    return "\n".join(lines)
