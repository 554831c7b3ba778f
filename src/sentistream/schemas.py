"""Wire records: the input post and the result record every sink writes.

Result record (schema version 1, see ``docs/reference/record.md``)::

    {"id", "source", "text", "created_at", "lang", "label", "score", "scores", "tasks",
     "model", "model_version", "processed_at", "latency_ms", "schema_version"}

``label``/``score``/``scores`` belong to the primary task, ``tasks`` holds the others; ``id`` is
unique per post (kept from the input, or derived from the input position when absent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sentistream.errors import InvalidInputError
from sentistream.runtime.base import Prediction

__all__ = ["SCHEMA_VERSION", "Post", "parse_post", "result_record", "utc_now"]

SCHEMA_VERSION = 1
MAX_ID_CHARS = 256


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


def parse_post(raw: bytes | str, *, default_id: str, source: str = "file") -> Post:
    """Parse one JSON line into a :class:`Post`; raises InvalidInputError with the reason.

    Accepts ``{"id", "text", "created_at", "lang", "source"}`` objects and the X API v2 shape
    ``{"data": {"id", "text", ...}}``. A missing id becomes ``default_id``.
    """
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
    post_id = str(post_id)
    if not post_id or len(post_id) > MAX_ID_CHARS:
        raise InvalidInputError(f"field 'id' must have 1 to {MAX_ID_CHARS} characters")
    return Post(
        id=post_id,
        text=text,
        source=_optional_str(obj, "source") or source,
        created_at=_optional_str(obj, "created_at"),
        lang=_optional_str(obj, "lang"),
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
