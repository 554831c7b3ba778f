from __future__ import annotations

import json

import pytest

from sentistream.errors import InvalidInputError
from sentistream.runtime.base import Prediction, TaskPrediction
from sentistream.schemas import SCHEMA_VERSION, parse_post, result_record


def test_parse_plain_post() -> None:
    post = parse_post(
        b'{"id": "7", "text": "hi", "created_at": "2026-11-01T12:00:00Z", "lang": "en"}',
        default_id="line-1",
    )
    assert (post.id, post.text, post.lang, post.source) == ("7", "hi", "en", "file")


def test_parse_x_shape_and_int_id_and_default_id() -> None:
    assert parse_post('{"data": {"id": "9", "text": "yo"}}', default_id="d").id == "9"
    assert parse_post('{"id": 12, "text": "yo"}', default_id="d").id == "12"
    assert parse_post('{"text": "yo"}', default_id="line-3").id == "line-3"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"text": "unterminated', "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"id": "1"}', "missing field 'text'"),
        (b'{"text": 5}', "'text' must be a string"),
        (b'{"text": "a", "id": [1]}', "'id' must be"),
        (b'{"text": "a", "id": true}', "'id' must be"),
        (b'{"text": "a", "lang": 3}', "'lang' must be a string"),
        (b'{"text": "a", "id": ""}', "1 to 256"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ],
)
def test_bad_lines(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        parse_post(raw, default_id="x")


def test_result_record_matches_the_wire_contract() -> None:
    post = parse_post(
        '{"id": "1", "text": "great", "created_at": "2026-11-01T12:00:00Z"}', default_id="x"
    )
    pred = Prediction(
        primary="sentiment",
        tasks={
            "sentiment": TaskPrediction(
                "positive", 0.9, {"negative": 0.05, "neutral": 0.05, "positive": 0.9}
            ),
            "emotion": TaskPrediction("joy", 0.8, {"joy": 0.8, "anger": 0.2}),
        },
    )
    rec = result_record(post, pred, model="tweet-sentiment", model_version="1", latency_ms=1.23456)
    assert set(rec) == {
        "id",
        "source",
        "text",
        "created_at",
        "lang",
        "label",
        "score",
        "scores",
        "tasks",
        "model",
        "model_version",
        "processed_at",
        "latency_ms",
        "schema_version",
    }
    assert rec["label"] == "positive" and rec["scores"]["positive"] == 0.9
    assert rec["tasks"] == {"emotion": {"label": "joy", "score": 0.8}}
    assert rec["schema_version"] == SCHEMA_VERSION
    assert rec["processed_at"].endswith("Z")
    json.dumps(rec)


def test_lone_surrogates_and_oversized_fields_are_refused() -> None:
    import pytest

    from sentistream.errors import InvalidInputError
    from sentistream.schemas import Post, dumps_record, parse_post, validate_post

    with pytest.raises(InvalidInputError, match=r"lone surrogate U\+D800 at character 6"):
        parse_post('{"id": "h", "text": "hello \\ud800 world"}', default_id="x")
    # a proper surrogate pair is one character, not an error
    assert parse_post('{"text": "ok \\ud83d\\ude00"}', default_id="x").text == "ok 😀"
    with pytest.raises(InvalidInputError, match="field 'id' holds a lone surrogate"):
        validate_post(Post(id="\udc00", text="fine"))
    with pytest.raises(InvalidInputError, match="field 'lang' has 65 characters"):
        parse_post('{"text": "t", "lang": "' + "x" * 65 + '"}', default_id="x")
    with pytest.raises(InvalidInputError, match="record has 300012 bytes"):
        parse_post(b'{"text": "' + b"x" * 300_000 + b'"}', default_id="x")
    # a writer never fails on a record built without validation: the surrogate is escaped
    line = dumps_record({"id": "a", "text": "bad \udc00 text é"})
    assert line == '{"id": "a", "text": "bad \\udc00 text \\u00e9"}'
    line.encode("utf-8")
    assert dumps_record({"text": "é"}) == '{"text": "é"}'
