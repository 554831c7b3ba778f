"""Labelled datasets: the TweetEval folder layout, a CSV/TSV file with text and label columns, or
a JSONL file of ``{"text": ..., "label": ...}`` objects (the layout of ``extra/train`` and
``extra/check``).

Loading keeps every example (TweetEval's empty lines are real examples: dropping one shifts every
label after it) and fingerprints the files so a model manifest says exactly what it saw.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabelledSplit", "fingerprint", "load_split", "load_train_val"]


@dataclass(frozen=True)
class LabelledSplit:
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{self.source}: {len(self.texts)} texts but {len(self.labels)} labels"
            )
        bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
        if bad:
            raise ValueError(
                f"{self.source}: label {bad[0]} outside 0..{len(self.label_names) - 1}"
            )


def _read_lines(path: Path) -> list[str]:
    # TweetEval files are one example per line; keep empty lines (they are examples).
    with path.open(encoding="utf-8", newline="\n") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _tweeteval_labels(folder: Path) -> list[str]:
    mapping = folder / "mapping.txt"
    if not mapping.exists():
        raise FileNotFoundError(f"{folder} has no mapping.txt (TweetEval layout expected)")
    pairs = []
    for line in _read_lines(mapping):
        if line.strip():
            idx, name = line.split("\t", 1) if "\t" in line else line.split(None, 1)
            pairs.append((int(idx), name.strip()))
    return [name for _, name in sorted(pairs)]


def _load_tweeteval(folder: Path, split: str) -> LabelledSplit:
    names = _tweeteval_labels(folder)
    texts = _read_lines(folder / f"{split}_text.txt")
    labels = [int(x) for x in _read_lines(folder / f"{split}_labels.txt") if x.strip()]
    return LabelledSplit(texts, labels, names, f"{folder}/{split}")


def _load_table(path: Path, text_column: str, label_column: str) -> LabelledSplit:
    delimiter = "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","
    csv.field_size_limit(10_000_000)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
        fields = reader.fieldnames or []
        if text_column == "text" and "text" not in fields and "sentence" in fields:
            text_column = "sentence"  # GLUE/SST-2 layout
        if reader.fieldnames is None or text_column not in reader.fieldnames:
            raise ValueError(f"{path}: no column {text_column!r} (columns: {reader.fieldnames})")
        if label_column not in reader.fieldnames:
            raise ValueError(f"{path}: no column {label_column!r} (columns: {reader.fieldnames})")
        rows = [(r[text_column], r[label_column]) for r in reader]
    return _named_labels(path, [t for t, _ in rows], [lab for _, lab in rows])


def _named_labels(path: Path, texts: list[str], raw_labels: list[str]) -> LabelledSplit:
    """Integer labels as they are (names ``0..n-1``); string labels by sorted name."""
    raw = sorted(set(raw_labels))
    if all(x.lstrip("-").isdigit() for x in raw):
        ints = [int(lab) for lab in raw_labels]
        names = [str(i) for i in range(max(ints) + 1)]
        return LabelledSplit(texts, ints, names, str(path))
    index = {name: i for i, name in enumerate(raw)}
    return LabelledSplit(texts, [index[lab] for lab in raw_labels], raw, str(path))


def _load_jsonl(path: Path, text_column: str, label_column: str) -> LabelledSplit:
    """One JSON object per line with a string text and a label; any bad line is an error
    naming the file and line (a labelled set with a silently dropped row is a different set)."""
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            text, label = row.get(text_column), row.get(label_column)
            if not isinstance(text, str):
                raise ValueError(f"{path}:{number}: no string {text_column!r}")
            if not isinstance(label, str | int) or isinstance(label, bool):
                raise ValueError(f"{path}:{number}: no string or integer {label_column!r}")
            texts.append(text)
            labels.append(str(label))
    if not texts:
        raise ValueError(f"{path}: no examples")
    return _named_labels(path, texts, labels)


def load_split(
    path: Path, split: str = "train", text_column: str = "text", label_column: str = "label"
) -> LabelledSplit:
    """Load ``split`` from a TweetEval folder, or the whole of a CSV/TSV/JSONL file."""
    if path.is_dir():
        return _load_tweeteval(path, split)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return _load_jsonl(path, text_column, label_column)
    if path.is_file():
        return _load_table(path, text_column, label_column)
    raise FileNotFoundError(f"no dataset at {path}")


def load_train_val(
    path: Path,
    *,
    val_path: Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 13,
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[LabelledSplit, LabelledSplit]:
    """Train and validation splits: TweetEval's own, a given file, or a seeded hold-out."""
    if path.is_dir():
        return load_split(path, "train"), load_split(path, "val")
    train = load_split(path, text_column=text_column, label_column=label_column)
    if val_path is not None:
        val = load_split(val_path, text_column=text_column, label_column=label_column)
        return train, val
    order = list(range(len(train.texts)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(order) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]

    def pick(idx: list[int], name: str) -> LabelledSplit:
        return LabelledSplit(
            [train.texts[i] for i in idx],
            [train.labels[i] for i in idx],
            train.label_names,
            f"{train.source}[{name}]",
        )

    return pick(train_idx, "train"), pick(val_idx, "val")


def fingerprint(path: Path) -> str:
    """sha256 over the dataset's files (names and bytes), so a manifest pins its data."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
