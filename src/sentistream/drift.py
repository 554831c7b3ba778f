"""Prediction drift against the training reference, with numpy only (no torch).

A *profile* describes a population of posts by four binned distributions:

- ``label``: the primary task's predicted label mix;
- ``length``: characters of the cleaned text;
- ``unk_rate``: the share of a text's tokens the tokenizer maps to ``[UNK]`` (specials excluded);
- ``confidence``: the primary task's top probability (its mean is kept too).

:func:`build_reference_profile` computes it once, on validation data, and ``sentistream profile``
stores it in the model's ``manifest.json`` as ``reference_profile``. :class:`DriftMonitor` keeps
the same histograms over a sliding window of live posts and compares them with the population
stability index, ``PSI = sum((live - ref) * ln(live / ref))`` per feature (proportions floored at
``1e-4`` so an empty bin is finite). Rule of thumb: below 0.1 stable, above 0.25 a real shift.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sentistream.runtime.base import Classifier

__all__ = [
    "FEATURES",
    "PROFILE_FORMAT",
    "DriftMonitor",
    "TextFeatures",
    "build_reference_profile",
    "psi",
    "read_texts",
    "store_reference_profile",
    "text_features",
]

PROFILE_FORMAT = "sentistream-profile/1"
FEATURES = ("label", "length", "unk_rate", "confidence")
# Inner cut points: a value v falls in bin ``searchsorted(cuts, v, side="right")``, so there are
# len(cuts) + 1 bins and nothing needs an infinite edge (JSON has none).
LENGTH_CUTS = [16.0, 32.0, 48.0, 64.0, 80.0, 96.0, 112.0, 128.0, 144.0, 160.0, 200.0, 280.0]
UNK_CUTS = [1e-9, 0.02, 0.05, 0.1, 0.2]  # first bin: no unknown token at all
CONFIDENCE_CUTS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
PSI_FLOOR = 1e-4
FloatArray = npt.NDArray[np.float64]


def psi(
    reference: Sequence[float] | FloatArray,
    live: Sequence[float] | FloatArray,
    floor: float = PSI_FLOOR,
) -> float:
    """Population stability index of two binned distributions (proportions or counts)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValueError(f"bins differ: {ref.shape} vs {cur.shape}")
    if ref.sum() <= 0 or cur.sum() <= 0:
        return 0.0
    ref = np.maximum(ref / ref.sum(), floor)
    cur = np.maximum(cur / cur.sum(), floor)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _bin(cuts: Sequence[float], value: float) -> int:
    return int(np.searchsorted(np.asarray(cuts), value, side="right"))


class TextFeatures:
    """Per-text inputs of a profile: cleaned length and unknown-token share."""

    def __init__(self, unk_id: int | None, special_ids: set[int]) -> None:
        self.unk_id = unk_id
        self.special_ids = special_ids

    def unk_rates(self, ids: Sequence[Sequence[int]]) -> list[float]:
        out = []
        for seq in ids:
            content = [i for i in seq if i not in self.special_ids]
            unk = sum(1 for i in content if i == self.unk_id) if self.unk_id is not None else 0
            out.append(unk / len(content) if content else 0.0)
        return out


def text_features(classifier: Any) -> TextFeatures | None:
    """How to measure unknown tokens with ``classifier``'s tokenizer (None: it has none, e.g. a
    remote model; the ``unk_rate`` feature is then left out)."""
    tokenizer = getattr(classifier, "tokenizer", None)
    if tokenizer is None:
        return None
    ids = [tokenizer.token_to_id(t) for t in ("[UNK]", "<unk>")]
    unk = next((i for i in ids if i is not None), None)
    specials = {
        i
        for t in ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>")
        if (i := tokenizer.token_to_id(t)) is not None
    }
    return TextFeatures(unk, specials)


def _histogram(cuts: Sequence[float], values: Sequence[float]) -> list[float]:
    counts = np.bincount(
        np.searchsorted(np.asarray(cuts), np.asarray(values, dtype=np.float64), side="right"),
        minlength=len(cuts) + 1,
    )
    total = counts.sum()
    return [round(float(c / total), 6) if total else 0.0 for c in counts]


def build_reference_profile(
    classifier: Classifier, texts: Sequence[str], *, data: str | None = None, batch: int = 256
) -> dict[str, Any]:
    """The reference profile of ``texts`` under ``classifier`` (its primary task).

    Texts that cleaning refuses (empty, oversized) are skipped, as the worker dead-letters them.
    Returns the dict stored as ``reference_profile`` in ``manifest.json``.
    """
    from sentistream.errors import InvalidInputError

    cleaned: list[str] = []
    for text in texts:
        try:
            cleaned.append(classifier.prepare(text))
        except InvalidInputError:
            continue
    if not cleaned:
        raise ValueError("no usable text to build a reference profile from")
    task = classifier.primary_task
    labels = classifier.tasks[task]
    features = text_features(classifier)
    label_counts = np.zeros(len(labels), dtype=np.float64)
    confidences: list[float] = []
    unk: list[float] = []
    for start in range(0, len(cleaned), batch):
        chunk = cleaned[start : start + batch]
        for pred in classifier.classify_clean(chunk, [task]):
            label_counts[labels.index(pred.label)] += 1
            confidences.append(pred.score)
        if features is not None:
            unk.extend(features.unk_rates(classifier.encode(chunk)))
    lengths = [float(len(c)) for c in cleaned]
    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "task": task,
        "n": len(cleaned),
        "data": data,
        "features": {
            "label": {
                "bins": list(labels),
                "proportions": [round(float(c / len(cleaned)), 6) for c in label_counts],
            },
            "length": {"cuts": LENGTH_CUTS, "proportions": _histogram(LENGTH_CUTS, lengths)},
            "confidence": {
                "cuts": CONFIDENCE_CUTS,
                "proportions": _histogram(CONFIDENCE_CUTS, confidences),
            },
        },
        "mean": {
            "length": round(float(np.mean(lengths)), 3),
            "confidence": round(float(np.mean(confidences)), 6),
        },
    }
    if features is not None:
        profile["features"]["unk_rate"] = {
            "cuts": UNK_CUTS,
            "proportions": _histogram(UNK_CUTS, unk),
        }
        profile["mean"]["unk_rate"] = round(float(np.mean(unk)), 6)
    return profile


class DriftMonitor:
    """The reference profile's histograms over the last ``window`` live posts, and PSI.

    ``observe`` is called from the worker's batch loop; ``snapshot`` from the metrics and
    dashboard endpoints (a lock keeps them consistent). Counts are updated incrementally, so
    both are O(bins), whatever the window.
    """

    def __init__(
        self,
        profile: dict[str, Any],
        *,
        window: int = 1000,
        threshold: float = 0.2,
        min_samples: int = 200,
    ) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be positive")
        self.profile = profile
        self.window = window
        self.threshold = threshold
        self.min_samples = min(min_samples, window)
        feats: dict[str, Any] = profile["features"]
        self.labels: list[str] = list(feats["label"]["bins"])
        self.cuts: dict[str, list[float]] = {
            name: list(spec["cuts"]) for name, spec in feats.items() if spec.get("cuts") is not None
        }
        self.features = [f for f in FEATURES if f in feats]
        self.reference = {f: np.asarray(feats[f]["proportions"], dtype=np.float64) for f in self}
        self.counts = {f: np.zeros_like(self.reference[f]) for f in self}
        self._rows: deque[tuple[tuple[int, ...], float]] = deque()
        self._confidence_sum = 0.0
        self._lock = threading.Lock()
        self.observed = 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.features)

    def _bins(
        self, label: str, length: float, confidence: float, unk_rate: float
    ) -> tuple[int, ...]:
        row = []
        for f in self.features:
            if f == "label":
                row.append(self.labels.index(label))
            else:
                value = {"length": length, "confidence": confidence, "unk_rate": unk_rate}[f]
                row.append(_bin(self.cuts[f], value))
        return tuple(row)

    def observe(
        self,
        labels: Sequence[str],
        lengths: Sequence[int],
        confidences: Sequence[float],
        unk_rates: Sequence[float] | None = None,
    ) -> None:
        """Add a batch of posts (labels of the primary task, cleaned lengths, top scores)."""
        with self._lock:
            for i, label in enumerate(labels):
                if label not in self.labels:
                    continue
                conf = float(confidences[i])
                rate = float(unk_rates[i]) if unk_rates is not None else 0.0
                row = self._bins(label, float(lengths[i]), conf, rate)
                for f, b in zip(self.features, row, strict=True):
                    self.counts[f][b] += 1
                self._rows.append((row, conf))
                self._confidence_sum += conf
                self.observed += 1
                if len(self._rows) > self.window:
                    old, old_conf = self._rows.popleft()
                    for f, b in zip(self.features, old, strict=True):
                        self.counts[f][b] -= 1
                    self._confidence_sum -= old_conf

    def psi(self) -> dict[str, float]:
        """PSI per feature over the current window (0 while the window is empty)."""
        with self._lock:
            return {f: psi(self.reference[f], self.counts[f]) for f in self.features}

    def snapshot(self) -> dict[str, Any]:
        """What the metrics endpoint and the dashboard show."""
        values = self.psi()
        with self._lock:
            n = len(self._rows)
            mean_conf = self._confidence_sum / n if n else None
        ready = n >= self.min_samples
        return {
            "psi": {f: round(v, 6) for f, v in values.items()},
            "threshold": self.threshold,
            "window": self.window,
            "samples": n,
            "min_samples": self.min_samples,
            "drifted": bool(ready and any(v > self.threshold for v in values.values())),
            "drifted_features": [f for f, v in values.items() if ready and v > self.threshold],
            "mean_confidence": round(mean_conf, 6) if mean_conf is not None else None,
            "reference_mean_confidence": self.profile.get("mean", {}).get("confidence"),
        }


def read_texts(path: Path, split: str = "val", limit: int | None = None) -> list[str]:
    """Texts of a TweetEval folder (``<split>_text.txt``), a ``.txt`` file (one per line) or a
    JSONL file of posts (``text`` field)."""
    import json

    if path.is_dir():
        path = path / f"{split}_text.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if path.suffix == ".jsonl":
                if not line.strip():
                    continue
                obj = json.loads(line)
                obj = obj.get("data", obj) if "text" not in obj else obj
                texts.append(str(obj["text"]))
            else:
                texts.append(line)
            if limit is not None and len(texts) >= limit:
                break
    return texts


def store_reference_profile(folder: Path, profile: dict[str, Any]) -> Path:
    """Write ``profile`` into ``folder/manifest.json`` as ``reference_profile`` (validated
    first; the other fields and their order are kept). Returns the manifest path."""
    import json

    from sentistream.errors import ModelLoadError
    from sentistream.manifest import Manifest

    path = folder / "manifest.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["reference_profile"] = profile
    try:
        Manifest.model_validate(raw)
    except ValueError as exc:
        raise ModelLoadError(f"the profile does not fit {path}: {exc}") from exc
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
