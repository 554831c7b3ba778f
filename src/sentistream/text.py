"""Post cleaning, shared by training and serving.

The same function prepares training examples and live posts, and its version is written into
every model manifest (``CLEANING_VERSION``): a model is only ever fed text cleaned the way it
was trained. Cleaning is idempotent (``clean(clean(x)) == clean(x)``) and never crashes on any
string; it raises :class:`~sentistream.errors.InvalidInputError` for non-text input and for text
that is empty once cleaned.

What it does, in order, repeated until nothing changes:

1. decode HTML entities (``&amp;`` -> ``&``) and literal ``\\uXXXX`` escapes (both occur in the
   TweetEval files), including escaped surrogate pairs;
2. Unicode NFKC normalisation (fancy "math bold" letters and full-width forms become plain);
3. strip control, format, private-use, unassigned and surrogate code points (newlines and tabs
   become spaces), emoji variation selectors and skin-tone modifiers;
4. URLs -> ``http`` and @mentions -> ``@user``, the convention of the TweetEval data;
5. hashtags keep their words, CamelCase ones are split (``#HappyBirthday`` -> ``#Happy Birthday``);
6. emoji and other pictographs become their Unicode names (``😂`` -> ``face with tears of joy``)
   so they carry meaning instead of becoming ``[UNK]``; a run of the same emoji counts once and
   flag pairs become ``flag``;
7. whitespace collapsed, and the result capped at ``max_chars`` characters.
"""

from __future__ import annotations

import html
import re
import unicodedata

from sentistream.errors import InvalidInputError

__all__ = ["CLEANING_VERSION", "DEFAULT_MAX_CHARS", "clean", "clean_many", "clean_or_empty"]

CLEANING_VERSION = "1"
DEFAULT_MAX_CHARS = 1000
_MAX_PASSES = 8

_ESCAPED_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)
_ESCAPED_CHAR = re.compile(r"\\u([0-9a-f]{4})", re.IGNORECASE)
_URL = re.compile(r"(?:\bhttps?://|\bwww\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+")
_HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_WHITESPACE = re.compile(r"\s+")
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_VARIATION_SELECTORS = range(0xFE00, 0xFE10)
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_PICTOGRAPH_START = 0x2190


def _decode_escapes(text: str) -> str:
    def pair(match: re.Match[str]) -> str:
        high, low = int(match.group(1), 16), int(match.group(2), 16)
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))

    text = _ESCAPED_PAIR.sub(pair, text)
    return _ESCAPED_CHAR.sub(lambda m: chr(int(m.group(1), 16)), text)


# ASCII's only invisible characters are its controls (category Cc): the whitespace ones become
# spaces, the rest vanish - exactly what the general loop below does for them, at str.translate
# speed (most posts are pure ASCII).
_ASCII_CONTROLS = {cp: (" " if chr(cp).isspace() else None) for cp in [*range(0x20), 0x7F]}


# Distinct code points remembered by the per-code-point tables below: hostile input with very
# many distinct characters cannot grow them without bound (beyond it, they are worked out anew).
_TABLE_LIMIT = 20_000


class _InvisibleTable(dict[int, str | None]):
    """``str.translate`` table of :func:`_strip_invisible`: each code point's fate is worked
    out once, on first sight, then looked up in C (the per-character Python loop it replaces
    was most of the cleaning time of non-ASCII posts)."""

    def __missing__(self, cp: int) -> str | None:
        ch = chr(cp)
        value: str | None = ch
        if cp in _VARIATION_SELECTORS or cp in _SKIN_TONES:
            value = None
        elif unicodedata.category(ch) in _DROP_CATEGORIES:
            # Line breaks, tabs and other separators become spaces; the rest vanishes.
            value = " " if ch.isspace() or cp in (0x200B, 0x2028, 0x2029) else None
        if len(self) < _TABLE_LIMIT:
            self[cp] = value
        return value


_INVISIBLE = _InvisibleTable(_ASCII_CONTROLS)


def _strip_invisible(text: str) -> str:
    if text.isascii():
        return text.translate(_ASCII_CONTROLS)
    return text.translate(_INVISIBLE)


def _split_hashtag(match: re.Match[str]) -> str:
    return "#" + _CAMEL.sub(" ", match.group(1))


# Characters that can be pictographs (the range starts at U+2190; regional indicators are
# inside it): the text between them is copied as it is, in one slice.
_PICTOGRAPH_CANDIDATE = re.compile(f"[{chr(_PICTOGRAPH_START)}-\U0010ffff]")
_NOT_A_PICTOGRAPH = ""
_PICTOGRAPH_WORDS: dict[str, str | None] = {}


def _pictograph_word(ch: str) -> str | None:
    """The word for a candidate character: its Unicode name, "flag" for a regional indicator,
    ``_NOT_A_PICTOGRAPH`` when it is no pictograph, None when this Python does not know its
    name (left as it is). Remembered per character."""
    if ch in _PICTOGRAPH_WORDS:
        return _PICTOGRAPH_WORDS[ch]
    cp = ord(ch)
    word: str | None
    if cp in _REGIONAL_INDICATORS:
        word = "flag"
    elif unicodedata.category(ch) == "So":
        word = unicodedata.name(ch, "").lower() or None
    else:
        word = _NOT_A_PICTOGRAPH
    if len(_PICTOGRAPH_WORDS) < _TABLE_LIMIT:
        _PICTOGRAPH_WORDS[ch] = word
    return word


def _name_pictographs(text: str) -> str:
    if text.isascii():  # pictographs and regional indicators are all far above ASCII
        return text
    out: list[str] = []
    previous = ""
    end = 0
    for match in _PICTOGRAPH_CANDIDATE.finditer(text):
        start = match.start()
        if start != end:  # other characters in between end a run
            out.append(text[end:start])
            previous = ""
        end = start + 1
        ch = match.group()
        word = _pictograph_word(ch)
        if not word:  # no pictograph, or one without a known name: kept as it is
            out.append(ch)
            previous = ""
            continue
        if word != previous:  # a run of the same pictograph counts once
            out.append(f" {word} ")
        previous = word
    out.append(text[end:])
    return "".join(out)


def _clean_once(text: str, max_chars: int) -> str:
    # Each step is skipped when the text lacks the one character it acts on (the steps that
    # remain give the same string; measured by classify's prepare: docs/performance.md).
    if "\\" in text:
        text = _decode_escapes(text)
    text = html.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    text = _strip_invisible(text)
    text = _URL.sub("http", text)
    if "@" in text:
        text = _MENTION.sub("@user", text)
    if "#" in text:
        text = _HASHTAG.sub(_split_hashtag, text)
    text = _name_pictographs(text)
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def _settled(text: str) -> bool:
    """Whether another pass is sure to leave ``text`` (the output of a pass) as it is, so the
    pass that would confirm it can be skipped. True for ASCII text without what a later pass
    could still act on: ``&`` (entities), a backslash (escapes), ``://`` or ``www.`` (a URL
    formed when a hashtag split put a space before it: ``#abcHttps://x``). Whitespace is
    collapsed, controls are gone, mentions are ``@user`` and hashtags are split already."""
    return (
        text.isascii()
        and "&" not in text
        and "\\" not in text
        and "://" not in text
        and "www." not in text.lower()
    )


def clean(text: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Clean one post for the model; see the module docstring for the steps.

    Raises:
        InvalidInputError: ``text`` is not a ``str`` or nothing is left after cleaning.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    current = text
    for _ in range(_MAX_PASSES):
        cleaned = _clean_once(current, max_chars)
        done = cleaned == current or _settled(cleaned)
        current = cleaned
        if done:
            break
    if not current:
        raise InvalidInputError("text is empty after cleaning")
    return current


def clean_many(texts: list[str], max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Clean a batch; raises on the first bad text (callers that must not fail use ``clean``)."""
    return [clean(t, max_chars) for t in texts]


def clean_or_empty(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Training-side cleaning: a text with nothing left is still a labelled example (TweetEval's
    empty lines), so it becomes ``""`` instead of an error."""
    try:
        return clean(text, max_chars)
    except InvalidInputError:
        return ""


def head_tail_ids(ids: list[int], max_length: int, head_share: float = 0.25) -> list[int]:
    """Truncate an encoded sequence ``[CLS] ... [SEP]`` to ``max_length`` by keeping its head
    and its tail (a long review states its verdict at the end); special tokens stay in place.

    The head gets ``head_share`` of the content budget, the tail the rest (Sun et al., 2019,
    "How to Fine-Tune BERT for Text Classification?": head 128 + tail 382 works best on IMDB).
    """
    if len(ids) <= max_length:
        return ids
    if max_length < 4:
        raise ValueError("max_length must leave room for content and special tokens")
    first, body, last = ids[:1], ids[1:-1], ids[-1:]
    budget = max_length - 2
    head = round(budget * head_share)
    tail = budget - head
    return first + body[:head] + (body[-tail:] if tail else []) + last
