"""The deficit rule of core/reconcile.py against a plain reference, over restarts, other clients and partial repairs.

The world each property draws: sessions of ours delivered in some order (not
their time order), the API restarted after some of them (forgetting the ones
before), other clients adding to any pattern, ours or theirs. What the API
answers is built from that world, never from the module.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnimemory_learner.core.reconcile import Doubt, Taught, expected_pattern_id, landed, parse_patterns, reconcile

OURS = "abcd"
THEIRS = "xy"
OUTCOMES = ("success", "failure")


def reference(history, held):
    """(pattern, outcome) -> keys to teach again, most recent first: max(0, taught - held) of the latest."""
    wanted = {}
    for pattern, outcome in {(s.pattern_id, s.outcome) for s in history}:
        mine = sorted(
            (s for s in history if (s.pattern_id, s.outcome) == (pattern, outcome)), key=lambda s: (-s.last_time, s.key)
        )
        have = held.get(pattern, (0, 0))[0 if outcome == "success" else 1]
        wanted[(pattern, outcome)] = [s.key for s in mine[: max(0, len(mine) - have)]]
    return {group: keys for group, keys in wanted.items() if keys}


def add(held, pattern, outcome, n=1):
    success, failure = held.get(pattern, (0, 0))
    held[pattern] = (success + n, failure) if outcome == "success" else (success, failure + n)


def grouped(teach):
    groups = {}
    for s in teach:
        groups.setdefault((s.pattern_id, s.outcome), []).append(s.key)
    return groups


@st.composite
def worlds(draw, others=True):
    n = draw(st.integers(0, 30))
    history = [
        Taught(
            draw(st.sampled_from(OURS)), draw(st.sampled_from(OUTCOMES)), float(draw(st.integers(0, 8))), f"k{i:02d}"
        )
        for i in range(n)
    ]
    delivered = draw(st.permutations(history))
    restart = draw(st.integers(0, n))
    held = {}
    for s in delivered[restart:]:
        add(held, s.pattern_id, s.outcome)
    extra = draw(
        st.lists(
            st.tuples(st.sampled_from(OURS + THEIRS), st.sampled_from(OUTCOMES), st.integers(1, 3)),
            max_size=6 if others else 0,
        )
    )
    for pattern, outcome, count in extra:
        add(held, pattern, outcome, count)
    return history, held, Counter((s.pattern_id, s.outcome) for s in delivered[:restart])


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_the_deficit_is_the_reference_and_never_above_what_was_lost(world):
    history, held, lost = world
    result = reconcile(history, held)
    assert grouped(result.teach) == reference(history, held)
    assert [(s.last_time, s.key) for s in result.teach] == sorted(
        ((s.last_time, s.key) for s in result.teach), key=lambda p: (-p[0], p[1])
    )
    for deficit in result.deficits:
        assert deficit.forgotten <= lost[(deficit.pattern_id, deficit.outcome)]  # others only add: never teach twice
        assert deficit.forgotten == deficit.taught - deficit.held
    assert result.sessions_lost == len(result.teach) == sum(d.forgotten for d in result.deficits)
    assert result.patterns_lost == len({d.pattern_id for d in result.deficits})
    assert result.loss_seen == bool(result.teach)


@settings(max_examples=300, deadline=None)
@given(worlds(others=False))
def test_without_other_clients_the_deficit_is_exactly_the_loss(world):
    history, held, lost = world
    result = reconcile(history, held)
    assert {(d.pattern_id, d.outcome): d.forgotten for d in result.deficits} == {g: n for g, n in lost.items() if n}


@settings(max_examples=300, deadline=None)
@given(worlds(), st.data())
def test_a_partial_repair_leaves_only_the_rest_and_nothing_twice(world, data):
    history, held, _ = world
    first = reconcile(history, held)
    taught_again = [s for s in first.teach if data.draw(st.booleans())]
    for s in taught_again:
        add(held, s.pattern_id, s.outcome)
    second = reconcile(history, held)
    again = Counter((s.pattern_id, s.outcome) for s in taught_again)
    assert {(d.pattern_id, d.outcome): d.forgotten for d in second.deficits} == {
        (d.pattern_id, d.outcome): d.forgotten - again[(d.pattern_id, d.outcome)]
        for d in first.deficits
        if d.forgotten > again[(d.pattern_id, d.outcome)]
    }
    assert {s.key for s in second.teach} <= {s.key for s in first.teach}
    assert second.sessions_lost == first.sessions_lost - len(taught_again)


@settings(max_examples=200, deadline=None)
@given(worlds(), st.data())
def test_repairs_stopped_at_any_point_add_up_to_the_loss_once(world, data):
    history, held, _ = world
    lost = reconcile(history, held).sessions_lost
    posts = 0
    for _ in range(100):
        result = reconcile(history, held)
        if not result.teach:
            break
        # A stop after some prefix of the plan (at least one, so the loop ends).
        for s in result.teach[: data.draw(st.integers(1, len(result.teach)))]:
            add(held, s.pattern_id, s.outcome)
            posts += 1
    assert posts == lost
    for (pattern, outcome), n in Counter((s.pattern_id, s.outcome) for s in history).items():
        assert held.get(pattern, (0, 0))[0 if outcome == "success" else 1] >= n


@settings(max_examples=200, deadline=None)
@given(worlds(), st.data())
def test_a_restart_during_a_repair_is_seen_afresh(world, data):
    history, held, _ = world
    first = reconcile(history, held)
    held = {}  # the API restarted half way: what the repair had taught is gone too
    for pattern, outcome, count in data.draw(
        st.lists(st.tuples(st.sampled_from(OURS + THEIRS), st.sampled_from(OUTCOMES), st.integers(1, 3)), max_size=4)
    ):
        add(held, pattern, outcome, count)
    second = reconcile(history, held)
    assert grouped(second.teach) == reference(history, held)
    assert second.sessions_lost >= 0 and first.sessions_lost >= 0


def test_the_most_recent_sessions_are_taught_not_the_oldest():
    history = [Taught("p", "success", float(t), f"k{t}") for t in (3, 1, 5, 2, 4)]
    result = reconcile(history, {"p": (3, 0)})
    assert [s.key for s in result.teach] == ["k5", "k4"]  # oldest first would be k1, k2


def test_ties_of_time_go_by_key_and_the_plan_is_most_recent_first_across_patterns():
    history = [
        Taught("p", "success", 7.0, "b"),
        Taught("p", "success", 7.0, "a"),
        Taught("q", "failure", 9.0, "c"),
        Taught("q", "success", 1.0, "d"),
    ]
    result = reconcile(history, {"p": (1, 0)})
    assert [s.key for s in result.teach] == ["c", "a", "d"]
    assert result.patterns_lost == 2 and result.sessions_lost == 3


def test_outcomes_are_counted_apart():
    history = [Taught("p", "success", 1.0, "s1"), Taught("p", "failure", 2.0, "f1"), Taught("p", "failure", 3.0, "f2")]
    # Three in all on the API, but the failures are short by one and the successes over.
    result = reconcile(history, {"p": (2, 1)})
    assert [(d.outcome, d.taught, d.held, d.forgotten) for d in result.deficits] == [("failure", 2, 1, 1)]
    assert [s.key for s in result.teach] == ["f2"]


def test_foreign_patterns_and_counts_above_ours_ask_for_nothing():
    history = [Taught("p", "success", 1.0, "k1")]
    result = reconcile(history, {"p": (40, 2), "never-ours": (5, 5)})
    assert result.teach == () and result.deficits == () and not result.loss_seen


def test_sessions_that_were_never_counted_are_ignored():
    history = [
        Taught(None, "success", 1.0, "no-pattern"),
        Taught("", "success", 1.0, "empty-pattern"),
        Taught("p", "partial", 1.0, "other-outcome"),
        Taught("p", "success", 2.0, "k"),
        Taught("p", "success", 3.0, "k"),  # the same key again
    ]
    result = reconcile(history, {})
    assert [s.key for s in result.teach] == ["k"] and result.ignored == 4


def test_unknown_patterns_are_left_alone():
    history = [Taught("p", "success", 1.0, "k1"), Taught("q", "success", 1.0, "k2")]
    result = reconcile(history, {}, unknown=frozenset({"p"}))
    assert [s.key for s in result.teach] == ["k2"] and result.unknown_patterns == 1


# -- forgotten by the API, not in the history ------------------------------------------------


def test_beyond_the_history_counts_as_forgotten_when_a_loss_shows():
    history = [Taught("p", "success", float(t), f"k{t}") for t in range(6)]
    result = reconcile(history, {}, learned_ever=10)
    assert result.sessions_lost == 6 and result.forgotten_not_in_history == 4


def test_nothing_is_forgotten_when_no_loss_shows():
    history = [Taught("p", "success", float(t), f"k{t}") for t in range(6)]
    # The API holds all six of the history and ten counts in all: the four beyond may be among them.
    assert reconcile(history, {"p": (6, 0), "x": (3, 1)}, learned_ever=10).forgotten_not_in_history == 0
    # Six in all against ten given: nothing lowers a count, so some of the four beyond are gone.
    assert reconcile(history, {"p": (6, 0)}, learned_ever=10).forgotten_not_in_history == 4
    assert reconcile(history, {}, learned_ever=None).forgotten_not_in_history == 0


def test_a_lost_history_still_sees_an_api_that_holds_fewer_than_we_ever_gave():
    # history.db lost: no session to compare, but the API holds 3 counts in all and we gave it 5.
    result = reconcile([], {"x": (2, 1)}, learned_ever=5)
    assert result.loss_seen and result.forgotten_not_in_history == 5 and result.teach == ()
    # Other clients' counts can hide it: then nothing is claimed.
    assert not reconcile([], {"x": (9, 0)}, learned_ever=5).loss_seen
    # Unreadable counts could be anything: no claim from the total.
    assert not reconcile([], {"x": (0, 0)}, unknown=frozenset({"y"}), learned_ever=5).loss_seen


def test_a_history_larger_than_the_ledger_forgets_nothing_beyond_it():
    history = [Taught("p", "success", float(t), f"k{t}") for t in range(6)]
    assert reconcile(history, {}, learned_ever=2).forgotten_not_in_history == 0


# -- GET /patterns at the boundary -----------------------------------------------------------


def entry(pattern_id, success, failure):
    return {
        "pattern_id": pattern_id,
        "command_count": 3,
        "success_count": success,
        "failure_count": failure,
        "confidence": 0.5,
    }


def test_a_well_formed_answer_is_read_whole():
    parsed = parse_patterns({"patterns": [entry("p", 2, 1), entry("q", 0, 0)], "total": 2})
    assert parsed.usable and parsed.counts == {"p": (2, 1), "q": (0, 0)} and not parsed.unknown and not parsed.problems


@pytest.mark.parametrize("bad", [-1, 2.0, "3", True, None, [1]])
def test_counts_that_are_not_counts_leave_the_pattern_alone(bad):
    parsed = parse_patterns({"patterns": [entry("p", bad, 0), entry("q", 1, 0)], "total": 2})
    assert parsed.usable and parsed.counts == {"q": (1, 0)} and parsed.unknown == {"p"} and parsed.problems
    result = reconcile(
        [Taught("p", "success", 1.0, "k1"), Taught("p", "success", 2.0, "k2")], parsed.counts, parsed.unknown
    )
    assert result.teach == ()  # nothing taught for a pattern whose counts could not be read


def test_a_pattern_listed_twice_is_left_alone():
    parsed = parse_patterns({"patterns": [entry("p", 1, 0), entry("p", 5, 0), entry("p", 1, 0)], "total": 3})
    assert parsed.counts == {} and parsed.unknown == {"p"}


@pytest.mark.parametrize(
    "bad_entry", [entry(None, 1, 0), entry("", 1, 0), entry(7, 1, 0), "p", None, {"success_count": 1}]
)
def test_an_entry_without_a_pattern_id_makes_the_answer_unusable(bad_entry):
    # It may be one of ours in another shape: counted as absent, it would be taught again.
    parsed = parse_patterns({"patterns": [bad_entry, entry("q", 1, 0)], "total": 2})
    assert not parsed.usable and parsed.counts == {} and parsed.problems


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "patterns",
        {},
        {"patterns": None, "total": 0},
        {"patterns": {"p": 1}},
        {"patterns": [entry("p", 1, 0)], "total": 2},
        # A first page: no total, or the page's size as the total (a paginated API).
        {"patterns": [entry("p", 1, 0)]},
        {"patterns": [entry("p", 1, 0)], "total": None},
        {"patterns": [entry("p", 1, 0), entry("q", 1, 0)], "total": 1},
        {"patterns": [entry("p", 1, 0)], "total": 1.0},
    ],
)
def test_an_answer_that_is_not_whole_is_unusable(answer):
    parsed = parse_patterns(answer)
    assert not parsed.usable and parsed.counts == {} and parsed.problems


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=True)
    | st.sampled_from(["p", "", "success_count"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["pattern_id", "success_count", "failure_count", "patterns", "total"]), inner, max_size=5
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_any_answer_is_read_without_raising_and_only_counts_come_out(answer):
    parsed = parse_patterns(answer)
    for pattern_id, (success, failure) in parsed.counts.items():
        assert isinstance(pattern_id, str) and pattern_id not in parsed.unknown
        assert type(success) is int and type(failure) is int and success >= 0 and failure >= 0


# -- POSTs left unanswered: did they land? -------------------------------------------------


@st.composite
def doubtful_worlds(draw, others=True):
    """Ours delivered and answered (the history), then doubtful POSTs that did or did not land."""
    history, held, lost = draw(worlds(others=others))
    doubts, landed_really = [], Counter()
    for i in range(draw(st.integers(0, 8))):
        doubt = Doubt(f"d{i}", draw(st.sampled_from(OURS)), draw(st.sampled_from(OUTCOMES)))
        doubts.append(doubt)
        if draw(st.booleans()):
            add(held, doubt.pattern_id, doubt.outcome)
            landed_really[(doubt.pattern_id, doubt.outcome)] += 1
    return history, held, lost, doubts, landed_really


def landed_reference(doubts, history, held):
    """Per (pattern, outcome): the first max(0, held - ours) of its doubts, in the order given."""
    chosen = set()
    for group in {(d.pattern_id, d.outcome) for d in doubts}:
        mine = len({s.key for s in history if (s.pattern_id, s.outcome) == group})
        have = held.get(group[0], (0, 0))[0 if group[1] == "success" else 1]
        chosen |= {d.key for d in [d for d in doubts if (d.pattern_id, d.outcome) == group][: max(0, have - mine)]}
    return chosen


@settings(max_examples=400, deadline=None)
@given(doubtful_worlds())
def test_landed_is_the_reference_and_every_doubt_is_judged_once(world):
    history, held, _, doubts, _ = world
    yes, no, undecided = landed(doubts, history, held, frozenset())
    assert set(yes) == landed_reference(doubts, history, held)
    assert sorted(yes + no) == sorted(d.key for d in doubts) and undecided == []


@settings(max_examples=400, deadline=None)
@given(doubtful_worlds(others=False))
def test_without_other_clients_or_a_restart_landed_is_exactly_what_landed(world):
    history, held, lost, doubts, landed_really = world
    yes, _, _ = landed(doubts, history, held, frozenset())
    by_group = Counter((d.pattern_id, d.outcome) for d in doubts if d.key in yes)
    if not lost:
        assert by_group == landed_really
    else:
        # A restart lost some of ours: what landed may be taken for their replacement, never more.
        assert all(by_group[group] <= landed_really[group] for group in by_group)


def test_a_doubt_of_a_pattern_whose_counts_are_unknown_is_undecided():
    assert landed([Doubt("d", "a", "success")], [], {}, frozenset({"a"})) == ([], [], ["d"])


def test_the_pattern_id_is_the_servers():
    from original_api import pattern_id_of

    for names in (["open_file", "edit_code", "save_file"], ["run http://x.org/a 12", "a.py", " b "], []):
        assert expected_pattern_id(names) == pattern_id_of(names)
