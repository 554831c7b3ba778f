"""Unlabeled text for domain adaptation and distillation: JSONL stream records, TweetEval train
splits, plain text files; validation texts are always excluded (no validation leakage).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from sentistream.text import clean_or_empty
from sentistream.training.data import load_split

__all__ = ["load_unlabeled", "read_texts", "validation_texts"]


def read_texts(path: Path) -> list[str]:
    """Every text of a source: a TweetEval folder's train and val, JSONL records' ``text``, a
    CSV/TSV's text column."""
    if path.is_dir():
        return load_split(path, "train").texts + load_split(path, "val").texts
    return _read_source(path)


def _read_source(path: Path) -> list[str]:
    if path.is_dir():
        return load_split(path, "train").texts
    if path.suffix == ".jsonl":
        texts = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                text = record.get("text") if isinstance(record, dict) else None
                if isinstance(text, str):
                    texts.append(text)
        return texts
    return load_split(path).texts


def validation_texts(folders: Iterable[Path], max_chars: int) -> set[str]:
    """Cleaned validation texts of TweetEval-style folders (to keep them out of training)."""
    out: set[str] = set()
    for folder in folders:
        if folder.is_dir() and (folder / "val_text.txt").exists():
            out.update(clean_or_empty(t, max_chars) for t in load_split(folder, "val").texts)
    return out


def load_unlabeled(
    sources: list[Path],
    *,
    exclude: set[str],
    max_chars: int,
    limit: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Cleaned, de-duplicated texts from ``sources``, minus ``exclude``; a seeded sample of
    ``limit`` when given."""
    seen: set[str] = set()
    texts: list[str] = []
    for source in sources:
        for raw in _read_source(source):
            text = clean_or_empty(raw, max_chars)
            if text and text not in seen and text not in exclude:
                seen.add(text)
                texts.append(text)
    if limit is not None and len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts
