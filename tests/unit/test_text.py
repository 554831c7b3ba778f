from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentistream.errors import InvalidInputError
from sentistream.text import clean


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I can\\u2019t wait", "I can’t wait"),
        ("red\\u002c white", "red, white"),
        ("Fish &amp; chips &lt;3", "Fish & chips <3"),
        ("double &amp;amp; encoded", "double & encoded"),
        ("\\ud83d\\ude02 lol", "face with tears of joy lol"),
        ("see https://t.co/abc123 now", "see http now"),
        ("www.example.com/page rocks", "http rocks"),
        ("@jack @user_2 hello", "@user @user hello"),
        ("mail me at a@b.com", "mail me at a@b.com"),
        ("#HappyBirthday to you", "#Happy Birthday to you"),
        ("#nhl tonight", "#nhl tonight"),
        ("great 😂😂😂", "great face with tears of joy"),
        ("love it ❤️👍🏽", "love it heavy black heart thumbs up sign"),
        ("go 🇺🇸!", "go flag !"),
        ("tabs\tand\nnew\r\nlines", "tabs and new lines"),
        ("zero\u200bwidth and bidi\u202eoverride", "zero width and bidioverride"),
        ("𝐁𝐨𝐥𝐝 text", "Bold text"),
        ("  lots   of    space  ", "lots of space"),
    ],
)
def test_examples(raw: str, expected: str) -> None:
    assert clean(raw) == expected


def test_caps_length() -> None:
    assert len(clean("word " * 1000, max_chars=50)) <= 50


@pytest.mark.parametrize("raw", ["", "   ", "\u200b\u200d", "\x00\x01\x02", "\ufe0f"])
def test_empty_after_cleaning_raises(raw: str) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        clean(raw)


@pytest.mark.parametrize("raw", [None, 3, b"bytes", ["list"]])
def test_non_text_raises(raw: object) -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        clean(raw)


def test_unknown_tokens_do_not_hide_emoji() -> None:
    # Emoji become words the tokenizer knows instead of [UNK].
    assert "[UNK]" not in clean("🔥🔥 so good 😍")
    assert "fire" in clean("🔥🔥 so good 😍")


_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_tweetish = st.text(
    alphabet=st.sampled_from(list("ab #@&;\\u0123456789dfx:/.wh\t\n😂🇺🇸❤️\ufe0f\u200d👍🏽𝐁")),
    max_size=80,
)


@_settings
@given(st.text(max_size=300))
def test_never_crashes_on_arbitrary_unicode(raw: str) -> None:
    try:
        out = clean(raw)
    except InvalidInputError:
        return
    assert out and out == out.strip()


@_settings
@given(st.one_of(st.text(max_size=300), _tweetish))
def test_idempotent(raw: str) -> None:
    try:
        once = clean(raw)
    except InvalidInputError:
        return
    assert clean(once) == once


@_settings
@given(st.one_of(st.text(max_size=300), _tweetish), st.integers(min_value=1, max_value=40))
def test_idempotent_with_cap(raw: str, cap: int) -> None:
    try:
        once = clean(raw, max_chars=cap)
    except InvalidInputError:
        return
    assert len(once) <= cap
    assert clean(once, max_chars=cap) == once


def _general_strip(text: str) -> str:
    """The general (per-character) path of ``_strip_invisible``, forced for ASCII input."""
    import sentistream.text as t

    return t._strip_invisible(text + "\u00e9")[:-1]


def _general_pictographs(text: str) -> str:
    import sentistream.text as t

    return t._name_pictographs(text + "\u00e9")[:-1]


def test_ascii_fast_paths_match_the_general_loop_on_every_ascii_character() -> None:
    import sentistream.text as t

    every = "".join(chr(i) for i in range(128))
    assert t._strip_invisible(every) == _general_strip(every)
    assert t._name_pictographs(every) == _general_pictographs(every)
    assert t._strip_invisible("a\tb\x00c\x1fd\x7f") == "a bc d"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_ascii_fast_paths_match_the_general_loop(raw: str) -> None:
    import sentistream.text as t

    assert t._strip_invisible(raw) == _general_strip(raw)
    assert t._name_pictographs(raw) == _general_pictographs(raw)


_settle_alphabet = st.sampled_from(list("aAbBwWhHtTpPsS #@&;\\u0123:/.x\t😂\u200d\u0301é"))


@_settings
@given(st.text(alphabet=_settle_alphabet, max_size=60), st.integers(min_value=1, max_value=60))
def test_a_settled_pass_is_a_fixed_point(raw: str, cap: int) -> None:
    """``clean`` stops after a pass whose output ``_settled`` calls final, without the pass
    that would confirm it: that pass must indeed change nothing (hashtag splits that form a
    URL, ``#abcWww.x`` / ``#fooHttps://x``, are what it must not call final)."""
    from sentistream.text import _clean_once, _settled

    once = _clean_once(raw, cap)
    if _settled(once):
        assert _clean_once(once, cap) == once


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("#abcWww.example.com", "#abc http"),
        ("#fooHttps://x.y z", "#foo http z"),
        ("&amp;lt;3 it", "<3 it"),
        ("\\u0026amp; co", "& co"),
        ("#aB#cD @Foo", "#a B#cD @user"),
    ],
)
def test_text_a_second_pass_changes_still_gets_it(raw: str, expected: str) -> None:
    assert clean(raw) == expected


def _reference_strip(text: str) -> str:
    """``_strip_invisible`` as a plain loop over characters: the definition its translate
    table must match."""
    import unicodedata

    out = []
    for ch in text:
        cp = ord(ch)
        if 0xFE00 <= cp < 0xFE10 or 0x1F3FB <= cp < 0x1F400:
            continue
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            if ch.isspace() or cp in (0x200B, 0x2028, 0x2029):
                out.append(" ")
            continue
        out.append(ch)
    return "".join(out)


def _reference_pictographs(text: str) -> str:
    """``_name_pictographs`` as a plain loop over characters."""
    import unicodedata

    out, previous = [], ""
    for ch in text:
        cp = ord(ch)
        if 0x1F1E6 <= cp < 0x1F200:
            word = "flag"
        elif cp >= 0x2190 and unicodedata.category(ch) == "So":
            word = unicodedata.name(ch, "").lower()
            if not word:
                out.append(ch)
                previous = ""
                continue
        else:
            out.append(ch)
            previous = ""
            continue
        if word != previous:
            out.append(f" {word} ")
        previous = word
    return "".join(out)


_pictographic = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("a é\u200b\u2028\ufe0f\U0001f3fd😂😂🇺🇸←☃\u4e00\U000e0001\U0010fffd")),
        st.characters(),
    ),
    max_size=60,
)


@_settings
@given(_pictographic)
def test_table_driven_steps_match_their_per_character_definition(raw: str) -> None:
    from sentistream.text import _name_pictographs, _strip_invisible

    assert _strip_invisible(raw) == _reference_strip(raw)
    assert _name_pictographs(raw) == _reference_pictographs(raw)
    assert _strip_invisible(raw) == _reference_strip(raw)  # again, from the remembered table


def test_remembered_code_points_are_bounded() -> None:
    """Hostile input with tens of thousands of distinct characters is cleaned like any other
    and leaves the per-code-point tables at their cap."""
    import sentistream.text as t

    flood = "".join(chr(cp) for cp in range(0x2190, 0x2190 + 3 * t._TABLE_LIMIT // 2))
    assert clean(flood, max_chars=10**6)
    assert len(t._INVISIBLE) <= t._TABLE_LIMIT
    assert len(t._PICTOGRAPH_WORDS) <= t._TABLE_LIMIT
    assert t._strip_invisible(flood) == _reference_strip(flood)
