"""Bounded line splitting and safe copies of refused payloads."""

from __future__ import annotations

import json

import pytest

from sentistream.stream.base import RAW_COPY_CHARS, Envelope, raw_copy
from sentistream.stream.lines import Line, LineSplitter


def split(chunks: list[bytes], limit: int) -> list[Line]:
    splitter = LineSplitter(limit)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.end()


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 64])
def test_lines_are_the_same_whatever_the_chunking(cut: int) -> None:
    data = b"one\r\ntwo\n\n" + b"x" * 20 + b"\r\nthree\r\nlast-no-newline"
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    lines = split(chunks, limit=10)
    assert (
        [(ln.number, ln.data, ln.size, ln.too_long) for ln in lines]
        == [
            (1, b"one", 3, False),
            (2, b"two", 3, False),
            (3, b"", 0, False),
            (4, b"x" * 10, 20, True),  # only the head is kept; the rest skipped up to "\n"
            (5, b"three", 5, False),
            (6, b"last-no-newline"[:10], 15, True),
        ]
    )


def test_a_line_of_exactly_the_limit_is_kept_whole() -> None:
    assert split([b"x" * 8 + b"\r\n", b"y" * 8 + b"\n"], limit=8) == [
        Line(1, b"x" * 8, 8),
        Line(2, b"y" * 8, 8),
    ]
    assert split([b""], limit=8) == []


def test_raw_copy_escapes_bad_bytes_and_never_cuts_into_json() -> None:
    assert raw_copy(b'{"text": "caf\xe9"}') == '{"text": "caf\\xe9"}'  # not U+FFFD
    assert raw_copy(b'{"text": "caf\xc3\xa9"}') == '{"text": "café"}'
    valid_prefix = '{"id": "t1", "text": "cut"}' + " " * RAW_COPY_CHARS + "garbage"
    copy = raw_copy(valid_prefix)
    assert copy.startswith('{"id": "t1"') and copy.endswith("more characters]")
    assert len(copy) < RAW_COPY_CHARS + 60
    with pytest.raises(ValueError):
        json.loads(copy)
    inside_string = '{"id": "t2", "text": "' + "y" * RAW_COPY_CHARS + '"}'
    with pytest.raises(ValueError):
        json.loads(raw_copy(inside_string))
    assert Envelope.bad(b"\xff", "why").raw == "\\xff"
