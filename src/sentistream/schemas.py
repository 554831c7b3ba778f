"""Wire records: the input post and the result record every sink writes.

Result record (schema version 1, see ``docs/reference/record.md``)::

    {"id", "source", "text", "created_at", "lang", "label", "score", "scores", "tasks",
     "model", "model_version", "processed_at", "latency_ms", "schema_version"}

``label``/``score``/``scores`` belong to the primary task, ``tasks`` holds the others; ``id`` is
unique per post (kept from the input, or derived from the input position when absent).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sentistream.errors import InvalidInputError
from sentistream.runtime.base import Prediction

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_RECORD_BYTES",
    "SCHEMA_VERSION",
    "Post",
    "dumps_record",
    "parse_post",
    "result_record",
    "utc_now",
    "validate_post",
]

SCHEMA_VERSION = 1
MAX_ID_CHARS = 256
#: Caps of the side fields copied into every result, pub/sub message and dashboard history:
#: a post whose field is longer is refused (dead-lettered), never truncated or copied.
MAX_FIELD_CHARS = {"source": 64, "lang": 64, "created_at": 64}
#: Cap of one input record (its JSON bytes): the text limit (20,000 characters, up to 12 bytes
#: each when JSON-escaped as surrogate pairs) fits, a record padded with megabytes does not.
MAX_RECORD_BYTES = 256 * 1024
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    source: str = "file"
    created_at: str | None = None
    lang: str | None = None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _check_unicode(value: str, key: str) -> None:
    """A JSON ``\\ud800`` escape decodes to a lone surrogate: not a character, and not
    encodable as UTF-8 (it would fail every sink that writes the record)."""
    bad = _LONE_SURROGATE.search(value)
    if bad is not None:
        raise InvalidInputError(
            f"field {key!r} holds a lone surrogate U+{ord(bad.group()):04X} at character "
            f"{bad.start()}: not valid Unicode"
        )


def validate_post(post: Post) -> Post:
    """Refuse a post no sink could write faithfully: lone surrogates in any field, an id or a
    side field over its cap (:data:`MAX_ID_CHARS`, :data:`MAX_FIELD_CHARS`). Every source's
    posts pass here (``parse_post`` and the worker)."""
    if not post.id or len(post.id) > MAX_ID_CHARS:
        raise InvalidInputError(f"field 'id' must have 1 to {MAX_ID_CHARS} characters")
    _check_unicode(post.id, "id")
    _check_unicode(post.text, "text")
    for key, cap in MAX_FIELD_CHARS.items():
        value = getattr(post, key)
        if value is None:
            continue
        if len(value) > cap:
            raise InvalidInputError(f"field {key!r} has {len(value)} characters (at most {cap})")
        _check_unicode(value, key)
    return post


def dumps_record(record: dict[str, Any]) -> str:
    """The record as compact JSON with its text as UTF-8 characters; a string that still holds a
    lone surrogate (a record built without :func:`validate_post`) is written as a JSON escape
    instead of failing the whole batch's encoding."""
    data = json.dumps(record, ensure_ascii=False)
    if _LONE_SURROGATE.search(data) is not None:
        return json.dumps(record)
    return data


def _record_bytes(raw: bytes | str) -> int:
    if isinstance(raw, bytes):
        return len(raw)
    if len(raw) * 4 <= MAX_RECORD_BYTES:  # even 4 bytes per character fits
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def parse_post(
    raw: bytes | str,
    *,
    default_id: str,
    source: str = "file",
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Post:
    """Parse one JSON line into a :class:`Post`; raises InvalidInputError with the reason.

    Accepts ``{"id", "text", "created_at", "lang", "source"}`` objects and the X API v2 shape
    ``{"data": {"id", "text", ...}}``. A missing id becomes ``default_id``. A record over
    ``max_record_bytes`` is refused before it is parsed.
    """
    size = _record_bytes(raw)
    if size > max_record_bytes:
        raise InvalidInputError(f"record has {size} bytes (at most {max_record_bytes})")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"line is not valid UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidInputError("invalid JSON: nested too deeply") from exc
    if not isinstance(obj, dict):
        raise InvalidInputError(f"a post must be a JSON object, got {type(obj).__name__}")
    if "text" not in obj and isinstance(obj.get("data"), dict):
        obj = obj["data"]
    if "text" not in obj:
        raise InvalidInputError("missing field 'text'")
    text = obj["text"]
    if not isinstance(text, str):
        raise InvalidInputError(f"field 'text' must be a string, got {type(text).__name__}")
    post_id = obj.get("id", default_id)
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        raise InvalidInputError(
            f"field 'id' must be a string or integer, got {type(post_id).__name__}"
        )
    return validate_post(
        Post(
            id=str(post_id),
            text=text,
            source=_optional_str(obj, "source") or source,
            created_at=_optional_str(obj, "created_at"),
            lang=_optional_str(obj, "lang"),
        )
    )


def result_record(
    post: Post,
    prediction: Prediction,
    *,
    model: str,
    model_version: str,
    latency_ms: float,
    processed_at: str | None = None,
) -> dict[str, Any]:
    """The result record of DESIGN.md for one post."""
    scored = prediction.to_dict()
    return {
        "id": post.id,
        "source": post.source,
        "text": post.text,
        "created_at": post.created_at,
        "lang": post.lang,
        "label": scored.get("label"),
        "score": scored.get("score"),
        "scores": scored.get("scores"),
        "tasks": {
            k: {"label": v["label"], "score": v["score"]} for k, v in scored["tasks"].items()
        },
        "model": model,
        "model_version": model_version,
        "processed_at": processed_at or utc_now(),
        "latency_ms": round(latency_ms, 3),
        "schema_version": SCHEMA_VERSION,
    }
