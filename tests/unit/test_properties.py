"""Property tests: record parsing never crashes; batching keeps order and count."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentistream.errors import InvalidInputError
from sentistream.runtime import Classifier
from sentistream.schemas import Post, parse_post

_settings = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@_settings
@given(st.binary(max_size=300))
def test_parse_post_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        post = parse_post(raw, default_id="d")
    except InvalidInputError as exc:
        assert exc.message
        return
    assert isinstance(post, Post) and isinstance(post.text, str) and post.id


@_settings
@given(_json)
def test_parse_post_on_arbitrary_json(value: object) -> None:
    with contextlib.suppress(InvalidInputError):
        parse_post(json.dumps(value), default_id="d")


@_settings
@given(
    st.lists(st.integers(min_value=1, max_value=200), max_size=200),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=64, max_value=4096),
)
def test_plan_batches_keeps_every_index_once(
    tiny_classifier: Classifier, lengths: list[int], batch_size: int, budget: int
) -> None:
    tiny_classifier.batch_size, tiny_classifier.max_batch_tokens = batch_size, budget
    batches = tiny_classifier.plan_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(0 < len(b) <= batch_size for b in batches)
    assert all(len(b) == 1 or max(lengths[i] for i in b) * len(b) <= budget for b in batches)


_words = st.lists(
    st.sampled_from(
        ["love", "hate", "game", "great", "sad", "day", "#fun", "@x", "😂", "http://a.b"]
    ),
    min_size=1,
    max_size=30,
)


@_settings
@given(
    st.lists(_words.map(" ".join), min_size=1, max_size=40), st.integers(min_value=1, max_value=8)
)
def test_batched_equals_unbatched(
    tiny_classifier: Classifier, texts: list[str], batch_size: int
) -> None:
    tiny_classifier.batch_size = batch_size
    together = tiny_classifier.classify(texts)
    assert len(together) == len(texts)
    for text, pred in zip(texts, together, strict=True):
        alone = tiny_classifier.classify([text])[0]
        assert alone.label == pred.label
        for label, p in alone.tasks["sentiment"].scores.items():
            assert p == pytest.approx(pred.tasks["sentiment"].scores[label], abs=1e-5)


def test_no_pickle_or_eval_on_any_input_path() -> None:
    """Only ONNX/safetensors load; nothing deserialises with pickle or evaluates input."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "sentistream"
    offenders = []
    for path in src.rglob("*.py"):
        if "protos" in path.parts:
            continue
        text = path.read_text()
        for pattern in (
            r"\bimport pickle\b",
            r"\bpickle\.loads?\(",
            r"(?<![\w.])eval\(",
            r"(?<![\w.])exec\(",
            r"torch\.load\(",
            r"yaml\.load\(",
        ):
            if re.search(pattern, text):
                offenders.append(f"{path.name}: {pattern}")
    assert offenders == []
