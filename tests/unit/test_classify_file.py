from __future__ import annotations

import json
from pathlib import Path

from sentistream.classify_file import classify_file
from sentistream.runtime import Classifier


def test_jsonl_with_good_and_bad_lines(tiny_classifier: Classifier, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "i love this game", "lang": "en"}).encode(),
        b"not json at all",
        json.dumps({"id": "b", "text": "worst day"}).encode(),
        b"",
        json.dumps({"id": "c"}).encode(),
        json.dumps({"id": "d", "text": "   "}).encode(),
        b'{"id": "e", "text": "caf\xe9 latin-1 bytes"}',
        json.dumps({"id": "f", "text": "x" * 25_000}).encode(),
        json.dumps({"text": "no id here"}).encode(),
        json.dumps({"id": 7, "text": "numeric id"}).encode(),
    ]
    src = tmp_path / "posts.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    summary = classify_file(
        tiny_classifier, src, out, progress=False, errors_path=errors, chunk_lines=3
    )
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "line-9", "7"]
    assert records[0]["lang"] == "en" and records[0]["model"] == "tiny"
    assert summary["records"] == 4 and summary["rejected"] == 5 and summary["blank"] == 1
    assert summary["lines"] == 10
    rejected = [json.loads(x) for x in errors.read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 5, 6, 7, 8]
    reasons = " | ".join(r["reason"] for r in rejected)
    for expected in ("invalid JSON", "missing field 'text'", "empty", "UTF-8", "limit"):
        assert expected in reasons


def test_text_file_one_post_per_line(tiny_classifier: Classifier, tmp_path: Path) -> None:
    src = tmp_path / "posts.txt"
    src.write_text("i love it\n\nso bad\n")
    out = tmp_path / "out.jsonl"
    summary = classify_file(tiny_classifier, src, out, progress=False)
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert ids == ["line-1", "line-3"]
    assert summary["records"] == 2
