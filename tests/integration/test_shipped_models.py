"""The models shipped inside the package: the multi-task tweet model (every task in one pass,
task subsets), the reviews model, calibration and drift profiles, and several models served by
one server process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from sentistream.config import BUNDLED_MODELS, Settings
from sentistream.manifest import load_manifest
from sentistream.repository import ModelRepository
from sentistream.runtime import load_classifier
from sentistream.testing import ServerProcess

pytestmark = pytest.mark.integration

TWEET_TASKS = {"sentiment", "emotion", "hate", "irony", "offensive"}
REPO = ModelRepository(BUNDLED_MODELS)


def _newest(name: str) -> Path:
    return REPO.resolve(name)


def _clf(model: str):  # type: ignore[no-untyped-def]
    return load_classifier(Settings(model=model, intra_op_threads=1))


@pytest.mark.parametrize("name", ["tweet-multitask", "tweet-multitask-fast", "reviews"])
def test_shipped_manifest_is_complete(name: str) -> None:
    folder = _newest(name)
    manifest = load_manifest(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    # calibrated: a fitted temperature per task, ECE figures in the metrics and the card
    for task in manifest.tasks:
        cal = raw["metrics"]["calibration"][task]
        assert manifest.tasks[task].temperature == pytest.approx(cal["temperature"])
        assert cal["ece_after"] <= cal["ece_before"] + 0.005
    assert manifest.reference_profile is not None  # drift monitoring has its reference
    card = (folder / "README.md").read_text()
    assert "## Calibration" in card and raw["training_command"] in card
    assert (folder / "model.onnx").stat().st_size < 40e6


def test_distilled_student_is_smaller_and_follows_its_teacher() -> None:
    """tweet-multitask-fast: 3 of the teacher's 6 layers, the same tasks and labels, and on the
    bundled sample posts the same answers as the teacher for most posts on every task."""
    teacher, student = _clf("tweet-multitask:1"), _clf("tweet-multitask-fast")
    raw = json.loads((_newest("tweet-multitask-fast") / "manifest.json").read_text())
    assert raw["backbone"]["num_hidden_layers"] == 3
    assert raw["training"]["distilled_from"][0].endswith("tweet-multitask/1")
    assert student.tasks == teacher.tasks and student.primary_task == "sentiment"
    assert (_newest("tweet-multitask-fast") / "model.onnx").stat().st_size < 0.7 * (
        REPO.root / "tweet-multitask" / "1" / "model.onnx"
    ).stat().st_size
    samples = BUNDLED_MODELS.parent / "samples" / "posts.jsonl"
    texts = [json.loads(line)["text"] for line in samples.read_text().splitlines() if line]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    assert len(texts) >= 30
    a, b = teacher.classify(texts), student.classify(texts)
    for task in TWEET_TASKS:
        agree = sum(x.tasks[task].label == y.tasks[task].label for x, y in zip(a, b, strict=True))
        assert agree / len(texts) >= 0.75, task


def test_multitask_model_answers_every_task_in_one_pass() -> None:
    clf = _clf("tweet-multitask")
    assert set(clf.tasks) == TWEET_TASKS and clf.primary_task == "sentiment"
    calls: list[int] = []
    forward = clf.backend.forward

    def counting(*args: object) -> object:
        calls.append(1)
        return forward(*args)  # type: ignore[arg-type]

    clf.backend.forward = counting  # type: ignore[method-assign]
    text = "I hate you, you are a disgusting idiot and should be ashamed"
    (pred,) = clf.classify([text])
    assert len(calls) == 1
    out = pred.to_dict()
    assert out["label"] == "negative" and set(out["tasks"]) == TWEET_TASKS - {"sentiment"}
    assert out["tasks"]["offensive"]["label"] == "offensive"
    assert out["tasks"]["emotion"]["label"] == "anger"
    (joy,) = clf.classify(["Best day ever, I am so happy and grateful!"], tasks=["emotion"])
    assert set(joy.tasks) == {"emotion"} and joy.tasks["emotion"].label == "joy"


def test_reviews_model_on_short_and_long_reviews() -> None:
    clf = _clf("reviews")
    assert clf.tasks == {"reviews": ["negative", "positive"]} and clf.truncation == "head_tail"
    # Cleaning caps a text at the manifest's max_chars (1,000) before tokenizing, so of a long
    # review the model reads its opening (known limitation, docs/training.md).
    filler = " The film follows a family over three summers at the lake house." * 60
    pos = "A wonderful, moving film and I loved every minute of it." + filler
    neg = "A boring, badly acted mess and a complete waste of time." + filler
    assert len(clf.encode([clf.prepare(pos)])[0]) <= clf.max_length
    labels = [
        p.label for p in clf.classify([pos, neg, "a gorgeous, witty gem", "dull and lifeless"])
    ]
    assert labels == ["positive", "negative", "positive", "negative"]


def test_one_server_serves_every_shipped_model() -> None:
    with ServerProcess(BUNDLED_MODELS) as server:
        index = httpx.post(f"{server.url}/v2/repository/index", timeout=10)
        body = {"text": "an absolute triumph, I loved it"}
        reviews = httpx.post(
            f"{server.url}/v1/classify", json={**body, "model": "reviews"}, timeout=30
        )
        tweets = httpx.post(
            f"{server.url}/v1/classify", json={**body, "model": "tweet-multitask"}, timeout=30
        )
    assert reviews.status_code == 200 and tweets.status_code == 200, (reviews.text, tweets.text)
    assert (
        reviews.json()["model"] == "reviews" and reviews.json()["results"][0]["label"] == "positive"
    )
    assert set(tweets.json()["results"][0]["tasks"]) == TWEET_TASKS - {"sentiment"}
    names = {row["name"] for row in index.json()}
    assert {"tweet-sentiment", "tweet-multitask", "tweet-multitask-fast", "reviews"} <= names
