"""text.shown(): what a log line or a terminal gets of untrusted text.

The references here are independent of the code: the Unicode database's
categories say what a control character is, and Python's own
`unicode_escape` codec reads the shown form back.
"""

import codecs
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from omnimemory_learner.text import LIMIT, printable_lines, shown

# The characters the issue names, each of which must never be shown raw.
NAMED = (
    [chr(c) for c in range(0x00, 0x20)]
    + ["\x7f"]
    + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u2028", "\u2029"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u061c", "\u2060", "\ufeff", "\u00ad", "\U000e0041"]
)
INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def unsafe(char):
    """A character a terminal or a log reader would not show as itself."""
    category = unicodedata.category(char)
    return category in INVISIBLE_CATEGORIES or (category == "Zs" and char != " ")


def read_back(text):
    """The original from a shown form, by Python's own escape codec."""
    return codecs.decode(text.encode("ascii", "backslashreplace"), "unicode_escape")


# Hostile text: the escapes' own ingredients (backslash, x, u, U, hex digits)
# mixed with every named control, so that escaped and literal forms collide
# if the rule were ambiguous; plus arbitrary code points, surrogates included.
hostile_alphabet = st.sampled_from(
    NAMED
    + ["\\", "x", "u", "U", "n", "t", "r", "0", "1", "b", "2", "8", "[", "<", "3", ">", ".", "]", "é", "日", "😀", " "]
)
hostile = st.text(st.one_of(hostile_alphabet, st.characters(blacklist_categories=())), max_size=60)


def test_each_named_character_is_escaped_visibly():
    for char in NAMED:
        text = shown(f"a{char}b")
        assert char not in text and text.startswith("a\\") and text.endswith("b"), repr(char)
    assert (
        shown("evil\n2026-11-24 07:00:00 - ERROR - Fake\x1b[31m")
        == "evil\\n2026-11-24 07:00:00 - ERROR - Fake\\x1b[31m"
    )
    assert shown("a\tb\rc\x00d\x7f\x85") == "a\\tb\\rc\\x00d\\x7f\\x85"
    assert shown("\u202eabc\u2066\u2028") == "\\u202eabc\\u2066\\u2028"
    assert shown("\ud800") == "\\ud800"  # a lone surrogate: UTF-8 could not even write it


def test_ordinary_text_is_shown_as_it_is():
    for text in [
        "session-42",
        "Fix: les données été",
        "日本語 セッション",
        "emoji 😀 ok",
        "a b",
        "",
        "<3> not a prefix",
    ]:
        assert shown(text) == text


def test_the_backslash_is_escaped_so_literal_and_escaped_forms_differ():
    assert shown("\\n") == "\\\\n"
    assert shown("\n") == "\\n"
    assert shown("\\x1b") != shown("\x1b")
    assert shown("\\") == "\\\\"


def test_long_values_are_cut_with_the_count_left_out():
    text = "x" * 10_000
    assert shown(text) == "x" * LIMIT + f"...[{10_000 - LIMIT} more characters]"
    assert shown("abcdef", 4) == "abcd...[2 more characters]"
    assert shown("abcd", 4) == "abcd"
    assert shown("\n" * 5, 2) == "\\n\\n...[3 more characters]"


def test_anything_is_shown_through_its_str():
    assert shown(ValueError("bad\nline")) == "bad\\nline"
    assert shown(None) == "None" and shown(12) == "12"


@settings(max_examples=600, deadline=None)
@given(hostile)
@example("evil\n2026-11-24 07:00:00 - ERROR - Fake: credentials leaked\x1b[31m")
@example("\\x1b")
@example("\\\x1b")
def test_shown_holds_no_control_character_and_reads_back_to_the_original(text):
    result = shown(text)
    assert not any(unsafe(char) for char in result)
    assert not any(char in result for char in NAMED)
    assert "\n" not in result and "\r" not in result
    assert read_back(result) == text


@settings(max_examples=600, deadline=None)
@given(hostile, hostile)
@example("\\n", "\n")
@example("\\x1b", "\x1b")
@example("a...[1 more characters]", "a")
def test_two_different_values_below_the_cut_never_show_the_same(first, second):
    limit = 60
    if first != second:
        assert shown(first, limit) != shown(second, limit)


@settings(max_examples=300, deadline=None)
@given(hostile, st.integers(min_value=0, max_value=30))
def test_a_cut_value_shows_its_prefix_and_how_much_was_left_out(text, limit):
    result = shown(text, limit)
    if len(text) <= limit:
        assert read_back(result) == text
        return
    mark = f"...[{len(text) - limit} more characters]"
    assert result.endswith(mark)
    assert read_back(result[: -len(mark)]) == text[:limit]
    assert not any(unsafe(char) for char in result)


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile, max_size=5))
def test_printable_lines_keeps_only_line_breaks(lines):
    text = "\n".join(line.replace("\n", "") for line in lines)
    result = printable_lines(text)
    assert result.count("\n") == text.count("\n")
    assert not any(unsafe(char) for char in result.replace("\n", ""))
