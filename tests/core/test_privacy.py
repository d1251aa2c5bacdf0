"""The exclusion rules (core/privacy.py) against fnmatch, the plain reference, and their cost per id."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnimemory_learner.core import privacy as privacy_module
from omnimemory_learner.core.privacy import PatternError, Privacy, check_pattern, compile_patterns

ALPHABET = "ab-*?[]!."


@given(st.lists(st.text(ALPHABET, min_size=1, max_size=6), max_size=4), st.text("ab-.[]", max_size=8))
def test_an_id_is_excluded_exactly_when_a_pattern_matches_it_whole(patterns, session_id):
    patterns = [pattern for pattern in patterns if check_pattern(pattern) is None]
    rules = Privacy(patterns)
    expected = any(fnmatch.fnmatchcase(session_id, pattern) for pattern in patterns)
    assert rules.excludes_id(session_id) is expected
    assert rules.excludes_id(session_id) is expected  # decided once, the same answer


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("", "empty"), ("scratch-[ab", "never closed"), ("a\0b", "NUL"), ("[!", "never closed"), ("x[]", "never closed")],
)
def test_an_invalid_pattern_is_named_with_why(pattern, why):
    with pytest.raises(PatternError, match=re.escape(repr(pattern)) + ".*" + why):
        compile_patterns(["fine-*", pattern])


def test_a_bracket_set_may_hold_a_closing_bracket_first_and_be_negated():
    rules = Privacy(["[]x]1", "[!a]2"])
    assert rules.excludes_id("]1") and rules.excludes_id("x1") and not rules.excludes_id("a1")
    assert rules.excludes_id("b2") and not rules.excludes_id("a2")
    assert not rules.excludes_id("x1 ")  # the whole id, not a prefix


def test_keep_drops_excluded_ids_and_types_and_counts_them():
    rules = Privacy(["secret-*"], ["git_push"])
    pair, push = ("open_file", "file_open"), ("push_changes", "git_push")
    events = [(1, "work", pair, 1.0), (2, "secret-1", pair, 2.0), (3, "work", push, 3.0), (4, "work", pair, 4.0)]
    kept, excluded = rules.keep(events)
    assert kept == [events[0], events[3]] and excluded == 2
    assert rules.excludes_session("secret-2") and rules.excludes_session("work", ["file_open", "git_push"])
    assert not rules.excludes_session("work", ["file_open"])


def test_without_rules_the_events_are_handed_back_untouched():
    events = [(1, "work", ("open_file", "file_open"), 1.0)]
    assert Privacy().keep(events)[0] is events and not Privacy().active
    only_ids = Privacy(["secret-*"])
    assert only_ids.keep(events)[0] is events  # no id of the batch excluded: no copy


def test_each_id_is_matched_once_however_many_rows_it_has(monkeypatch):
    rules = Privacy([f"p{n}-*" for n in range(10)])
    calls = []
    match = rules._match
    assert match is not None

    def counted(text):
        calls.append(text)
        return match(text)

    monkeypatch.setattr(rules, "_match", counted)
    pair = ("open_file", "file_open")
    for batch in range(5):
        rules.keep([(row, f"id{row % 3}", pair, float(row)) for row in range(batch * 100, batch * 100 + 100)])
    assert sorted(calls) == ["id0", "id1", "id2"]


def test_the_cache_of_decided_ids_is_bounded(monkeypatch):
    monkeypatch.setattr(privacy_module, "DECIDED_HELD", 10)
    rules = Privacy(["x*"])
    for number in range(25):
        assert rules.excludes_id(f"x{number}") and not rules.excludes_id(f"y{number}")
    assert len(rules._seen) <= 10 and rules._excluded <= rules._seen
