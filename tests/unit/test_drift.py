"""Drift: PSI arithmetic, the sliding window, reference profiles and their place in the manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sentistream.drift import (
    CONFIDENCE_CUTS,
    LENGTH_CUTS,
    DriftMonitor,
    build_reference_profile,
    psi,
    read_texts,
    store_reference_profile,
)
from sentistream.errors import ModelLoadError
from sentistream.manifest import load_manifest
from sentistream.testing import tiny_model_folder

SHIPPED = Path(__file__).resolve().parents[2] / "src/sentistream/models/tweet-sentiment/1"


def test_psi_values() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([1, 1], [10, 10]) == 0.0  # counts or proportions alike
    expected = (0.7 - 0.5) * math.log(0.7 / 0.5) + (0.3 - 0.5) * math.log(0.3 / 0.5)
    assert psi([0.5, 0.5], [0.7, 0.3]) == pytest.approx(expected)
    # An empty bin is floored at 1e-4: finite, and large.
    assert psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    )
    assert psi([0.5, 0.5], [0, 0]) == 0.0  # nothing observed yet
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def _profile(labels: list[str], label_mix: list[float]) -> dict[str, Any]:
    uniform_len = [1 / (len(LENGTH_CUTS) + 1)] * (len(LENGTH_CUTS) + 1)
    conf = [0.0] * len(CONFIDENCE_CUTS) + [1.0]
    return {
        "task": "sentiment",
        "n": 100,
        "features": {
            "label": {"bins": labels, "proportions": label_mix},
            "length": {"cuts": LENGTH_CUTS, "proportions": uniform_len},
            "confidence": {"cuts": CONFIDENCE_CUTS, "proportions": conf},
        },
        "mean": {"confidence": 0.97},
    }


def test_window_slides_and_flag_needs_min_samples() -> None:
    labels = ["negative", "neutral", "positive"]
    monitor = DriftMonitor(
        _profile(labels, [1 / 3, 1 / 3, 1 / 3]), window=30, threshold=0.2, min_samples=20
    )
    assert monitor.features == ["label", "length", "confidence"]  # no unk_rate in this profile
    lengths = [int(c) - 1 for c in LENGTH_CUTS] + [300]  # one post per length bin
    # 13 negatives only: far off, but below min_samples -> no flag yet.
    monitor.observe(["negative"] * 13, lengths, [0.99] * 13)
    snap = monitor.snapshot()
    assert snap["psi"]["label"] > 1 and snap["psi"]["length"] == pytest.approx(0, abs=1e-9)
    assert not snap["drifted"] and snap["samples"] == 13
    monitor.observe(["negative"] * 13, lengths, [0.99] * 13)
    snap = monitor.snapshot()
    assert snap["drifted"] and snap["drifted_features"] == ["label"]
    # Balanced traffic pushes the negatives out of the 30-post window.
    monitor.observe(labels * 13, lengths * 3, [0.99] * 39)
    snap = monitor.snapshot()
    assert snap["samples"] == 30
    assert snap["psi"]["label"] == pytest.approx(0.0, abs=0.05)
    assert not snap["drifted"]
    assert snap["mean_confidence"] == pytest.approx(0.99)
    assert snap["reference_mean_confidence"] == 0.97
    counts = monitor.counts["label"]
    assert counts.sum() == 30 and np.all(counts >= 0)
    monitor.observe(["unknown-label"], [10], [0.5])  # not a label of the task: ignored
    assert monitor.snapshot()["samples"] == 30


def test_reference_profile_of_a_tiny_model_and_the_manifest(tmp_path: Path) -> None:
    from sentistream.config import Settings
    from sentistream.runtime import load_onnx_classifier

    folder = tiny_model_folder(tmp_path, "tiny", "1", seed=4)
    classifier = load_onnx_classifier(folder, Settings(intra_op_threads=1))
    texts = ["i love this game", "worst day ever", "zzqx vvkp", "", "the team is new"] * 20
    profile = build_reference_profile(classifier, texts, data="inline")
    assert profile["n"] == 80  # the empty texts are refused by cleaning, as in the worker
    feats = profile["features"]
    assert set(feats) == {"label", "length", "confidence", "unk_rate"}
    for spec in feats.values():
        assert sum(spec["proportions"]) == pytest.approx(1, abs=1e-5)
    # "zzqx vvkp": letters are in the tiny vocabulary, so not [UNK]; Greek letters are.
    assert feats["unk_rate"]["proportions"][0] == pytest.approx(1.0)
    with_unk = build_reference_profile(classifier, ["love \u03c8\u03c8 game"] * 5)
    assert with_unk["features"]["unk_rate"]["proportions"][0] == 0.0
    assert with_unk["mean"]["unk_rate"] > 0.2
    # Round trip through the manifest, and the worker's monitor accepts what was stored.
    store_reference_profile(folder, profile)
    manifest = load_manifest(folder)
    assert manifest.reference_profile is not None
    stored = manifest.reference_profile.model_dump(exclude_none=True)
    assert stored["features"]["label"]["proportions"] == feats["label"]["proportions"]
    DriftMonitor(stored)
    # A profile whose labels do not match the task is refused, and nothing is written.
    before = (folder / "manifest.json").read_text()
    bad = json.loads(json.dumps(profile))
    bad["features"]["label"]["bins"] = ["a", "b", "c"]
    with pytest.raises(ModelLoadError, match="label bins"):
        store_reference_profile(folder, bad)
    bad = json.loads(json.dumps(profile))
    bad["features"]["length"]["proportions"] = [1.0]
    with pytest.raises(ModelLoadError, match="proportions"):
        store_reference_profile(folder, bad)
    assert (folder / "manifest.json").read_text() == before


def test_old_manifests_without_a_profile_still_load(tmp_path: Path) -> None:
    folder = tiny_model_folder(tmp_path, "tiny", "1")
    assert "reference_profile" not in json.loads((folder / "manifest.json").read_text())
    assert load_manifest(folder).reference_profile is None


def test_shipped_model_carries_its_validation_profile() -> None:
    manifest = load_manifest(SHIPPED, verify_hashes=False)
    profile = manifest.reference_profile
    assert profile is not None and profile.n == 2000 and profile.task == "sentiment"
    # The label mix is the model's predictions on the validation set: it matches the columns
    # of the confusion matrix recorded at export (within a few posts: int8 batching jitter).
    cm = np.array(
        manifest.metrics["validation"]["sentiment"]["int8"]["confusion_matrix"][
            "rows_true_cols_pred"
        ]
    )
    predicted = cm.sum(axis=0) / cm.sum()
    assert np.allclose(profile.features["label"].proportions, predicted, atol=0.01)
    assert 0.6 < profile.mean["confidence"] < 1.0


def test_read_texts(tmp_path: Path) -> None:
    (tmp_path / "val_text.txt").write_text("one\ntwo\nthree\n")
    assert read_texts(tmp_path) == ["one", "two", "three"]
    assert read_texts(tmp_path, limit=2) == ["one", "two"]
    posts = tmp_path / "p.jsonl"
    posts.write_text('{"id": 1, "text": "a"}\n\n{"data": {"text": "b"}}\n')
    assert read_texts(posts) == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        read_texts(tmp_path / "nope.txt")
