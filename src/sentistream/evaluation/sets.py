"""The labelled sets of the evaluation suite and their loader.

- ``validation``: TweetEval sentiment validation (2,000 tweets), the split recipes, checkpoints
  and thresholds are chosen on;
- the seven out-of-domain check sets of ``extra/check/`` (never trained, distilled, calibrated or
  selected on): ``{"text", "label"}`` JSONL, three classes except ``sts_gold`` (negative /
  positive only, scored by comparing the two probabilities);
- ``everyday``: the project's 240 everyday posts (``tests/data/everyday_posts.jsonl``), written
  and labelled before any model saw them, with a ``kind`` per post.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CHECK_SETS", "EvalSet", "load_jsonl_set", "load_tweeteval_set", "suite_sets"]

#: The check suite, in report order; its figure is the unweighted mean over these sets.
CHECK_SETS = (
    "tse_test",
    "gop_debate",
    "apple_twitter",
    "sentistrength_twitter4242",
    "vader_tweets_gt",
    "weather",
    "sts_gold",
)


@dataclass(frozen=True)
class EvalSet:
    """One labelled set: texts with label names, and the labels the set uses (in model order
    once scored; a binary set uses a subset of the model's labels)."""

    name: str
    role: str  # "validation", "check" or "everyday"
    texts: list[str]
    labels: list[str]
    kinds: list[str] = field(default_factory=list)  # per text, where the set has them
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{self.source}: {len(self.texts)} texts, {len(self.labels)} labels")
        if self.kinds and len(self.kinds) != len(self.texts):
            raise ValueError(f"{self.source}: kinds do not match the texts")
        if not self.texts:
            raise ValueError(f"{self.source}: no examples")

    @property
    def label_names(self) -> list[str]:
        return sorted(set(self.labels))


def load_jsonl_set(path: Path, name: str | None = None, role: str = "check") -> EvalSet:
    """A ``{"text", "label"[, "kind"]}`` JSONL file; a bad line is an error naming file:line."""
    texts: list[str] = []
    labels: list[str] = []
    kinds: list[str] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read the evaluation set ({exc.strerror})") from exc
    with handle as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or not isinstance(label, str) or not label:
                raise ValueError(f"{path}:{number}: needs a string text and a string label")
            texts.append(text)
            labels.append(label)
            kind = row.get("kind")
            if isinstance(kind, str):
                kinds.append(kind)
    if kinds and len(kinds) != len(texts):
        raise ValueError(f"{path}: 'kind' is given for some posts only")
    return EvalSet(name or path.stem, role, texts, labels, kinds, str(path))


def load_tweeteval_set(folder: Path, split: str = "val", name: str = "validation") -> EvalSet:
    """A TweetEval task folder's split with its label names (empty lines are examples)."""
    from sentistream.training.data import load_split

    data = load_split(folder, split)
    return EvalSet(
        name,
        "validation",
        data.texts,
        [data.label_names[y] for y in data.labels],
        source=f"{folder}/{split}",
    )


def suite_sets(data: Path, everyday: Path | None) -> list[EvalSet]:
    """validation + the seven check sets (``data`` is the shared data folder) + everyday."""
    sentiment = data / "tweeteval" / "sentiment"
    missing = [str(sentiment)] if not sentiment.is_dir() else []
    checks = [data / "extra" / "check" / f"{name}.jsonl" for name in CHECK_SETS]
    missing += [str(p) for p in checks if not p.is_file()]
    if everyday is not None and not everyday.is_file():
        missing.append(str(everyday))
    if missing:
        raise FileNotFoundError("evaluation suite: missing " + ", ".join(missing))
    sets = [load_tweeteval_set(sentiment)]
    sets += [load_jsonl_set(p, name, "check") for p, name in zip(checks, CHECK_SETS, strict=True)]
    if everyday is not None:
        sets.append(load_jsonl_set(everyday, "everyday", "everyday"))
    return sets
