"""The pure core: mapping, outcome, sessions.  No I/O; time is passed in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, build_event_map, command_pairs
from omnimemory_learner.core.outcome import infer_outcome
from omnimemory_learner.core.sessions import SessionTracker, drop_replayed
from omnimemory_learner.events import validate_rows

IDLE = 300.0


def event(rowid, sid, command, ts, etype=None):
    return (rowid, sid, (command, etype or command), float(ts))


def summary(closed):
    return sorted((c.session_id, tuple(cmd for cmd, _, _ in c.commands), c.first_rowid, c.last_rowid) for c in closed)


# -- mapping (the original's "event type mapping" test) ------------------------------


def test_the_fifteen_original_mappings():
    assert len(DEFAULT_EVENT_MAP) == 15
    assert DEFAULT_EVENT_MAP["file_open"] == "open_file"
    assert DEFAULT_EVENT_MAP["process_end"] == "command_completed"
    assert DEFAULT_EVENT_MAP["git_pull"] == "pull_changes"


def test_event_map_overrides_and_additions():
    event_map = build_event_map({"file_open": "view_file", "lint_run": "run_linter"})
    assert event_map["file_open"] == "view_file"
    assert event_map["lint_run"] == "run_linter"
    assert event_map["git_push"] == "push_changes"
    assert DEFAULT_EVENT_MAP["file_open"] == "open_file"  # defaults untouched


def test_mapping_leaves_out_other_types_and_shares_pairs():
    rows = [(1, "1970-01-01T00:00:10+00:00", "file_open", "s"), (2, 11, "mouse_move", "s"), (3, 12, "git_commit", "s")]
    pairs = command_pairs(DEFAULT_EVENT_MAP)
    mapped, ignored, bad = validate_rows(rows, pairs)
    assert mapped == [(1, "s", ("open_file", "file_open"), 10.0), (3, "s", ("commit_changes", "git_commit"), 12.0)]
    assert (ignored, bad) == (1, 0)
    # One shared pair per type, whatever the number of events.
    again, _, _ = validate_rows([(4, 13, "file_open", "t")], pairs)
    assert again[0][2] is mapped[0][2]
    # A type the user mapped is kept; an unmapped row is not parsed further.
    custom = command_pairs(build_event_map({"lint_run": "run_linter"}))
    kept, ignored, bad = validate_rows([(5, 14, "lint_run", "t"), (6, "garbage", "window_focus", "t")], custom)
    assert kept == [(5, "t", ("run_linter", "lint_run"), 14.0)] and (ignored, bad) == (1, 0)


# -- outcome ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "commands, expected",
    [
        (["open_file", "edit_code", "save_file"], "success"),
        (["open_file", "edit_code", "commit_changes"], "success"),
        (["delete_file", "edit_code", "run_tests"], "failure"),
        (["open_file", "delete_file", "save_file"], "success"),  # success wins within the window
        (["delete_file", "open_file", "edit_code", "run_tests"], "success"),  # outside the last three
        (["open_file", "edit_code", "run_tests"], "success"),  # default
        (["command_completed", "delete_file"], "success"),
        (["push_changes"], "success"),
        (["delete_file"], "failure"),
    ],
)
def test_outcome_as_the_original(commands, expected):
    assert infer_outcome(commands) == expected


# -- sessions (the original's "session management" test) ------------------------------


def test_events_group_by_session_id_and_close_after_idle_processing_time():
    tracker = SessionTracker(IDLE, min_commands=3)
    closed = tracker.feed(
        [
            event(1, "a", "open_file", 100),
            event(2, "b", "open_file", 101),
            event(3, "a", "edit_code", 110),
            event(4, "a", "save_file", 120),
        ],
        now=0.0,
    )
    assert closed == [] and tracker.open_count == 2
    assert tracker.next_deadline() == pytest.approx(300.0)
    assert tracker.close_idle(now=299.0) == []
    closed = tracker.close_idle(now=300.0)
    assert summary(closed) == [("a", ("open_file", "edit_code", "save_file"), 1, 4), ("b", ("open_file",), 2, 2)]
    a = next(c for c in closed if c.session_id == "a")
    assert a.learnable and infer_outcome(a.names) == "success"
    assert a.commands[0] == ("open_file", 100.0, "open_file")
    assert not next(c for c in closed if c.session_id == "b").learnable
    assert tracker.too_short_count == 1 and tracker.closed_count == 2


def test_processing_time_deadline_moves_with_each_arrival():
    tracker = SessionTracker(IDLE)
    tracker.feed([event(1, "a", "open_file", 100)], now=0.0)
    tracker.feed([event(2, "a", "save_file", 100)], now=200.0)
    assert tracker.close_idle(now=400.0) == []
    assert len(tracker.close_idle(now=500.0)) == 1


def test_a_step_of_the_writers_clock_back_never_cuts_and_forward_cuts_once():
    tracker = SessionTracker(IDLE, min_commands=1)
    # Back by five hours, then on from there: one session.
    closed = tracker.feed(
        [
            event(1, "a", "open_file", 20000),
            event(2, "a", "edit_code", 2000),
            event(3, "a", "save_file", 2010),
            event(4, "a", "run_tests", 20100),
        ],
        now=0.0,
    )
    assert closed == [] and tracker.open_count == 1
    # Forward by two hours: one cut, and the session after it goes on.
    closed = tracker.feed(
        [event(5, "a", "commit_changes", 20100 + 7200), event(6, "a", "push_changes", 27310)], now=1.0
    )
    assert summary(closed) == [("a", ("open_file", "edit_code", "save_file", "run_tests"), 1, 4)]
    assert tracker.open_count == 1 and tracker.low_water() == 5


def test_a_cut_is_judged_from_the_latest_time_in_the_session_not_the_last_row():
    tracker = SessionTracker(IDLE, min_commands=1)
    closed = tracker.feed(
        [
            event(1, "a", "open_file", 1000),
            event(2, "a", "edit_code", 1200),
            event(3, "a", "save_file", 900),  # a row written late: still this session
            event(4, "a", "run_tests", 1450),  # 550 s after the last row, 250 after the latest
            event(5, "a", "commit_changes", 1750),
        ],
        now=0.0,
    )  # exactly the threshold: a cut
    assert summary(closed) == [("a", ("open_file", "edit_code", "save_file", "run_tests"), 1, 4)]


def test_no_row_of_another_id_closes_a_session_in_a_backlog():
    tracker = SessionTracker(IDLE, min_commands=1)
    closed = tracker.feed(
        [
            event(1, "a", "open_file", 0),
            event(2, "a", "edit_code", 10),
            event(3, "b", "open_file", 400),  # another id, far later by event time
            event(4, "z", "open_file", 10 * 365 * 86400),  # a row dated ten years ahead
            event(5, "a", "save_file", 250),
        ],
        now=0.0,
    )  # still a's session
    assert closed == [] and tracker.open_count == 3
    assert tracker.low_water() == 1
    assert summary(tracker.close_all()) == [
        ("a", ("open_file", "edit_code", "save_file"), 1, 5),
        ("b", ("open_file",), 3, 3),
        ("z", ("open_file",), 4, 4),
    ]


def test_a_bulk_commit_holding_several_sessions_of_one_id_is_cut_live():
    tracker = SessionTracker(IDLE, min_commands=1)
    times = [start + i for start in (0, 1000, 5000) for i in range(3)]
    bulk = [event(rowid, "a", "edit_code", t) for rowid, t in enumerate(times, 1)]
    closed = tracker.feed(bulk, now=0.0)
    assert [(c.first_rowid, c.last_rowid) for c in closed] == [(1, 3), (4, 6)]
    assert tracker.open_count == 1 and tracker.low_water() == 7


def test_after_close_the_same_id_starts_a_new_session():
    tracker = SessionTracker(IDLE, min_commands=1)
    tracker.feed([event(1, "a", "open_file", 0)], now=0.0)
    assert len(tracker.close_idle(now=IDLE)) == 1
    tracker.feed([event(2, "a", "save_file", 1000)], now=IDLE + 1)
    closed = tracker.close_idle(now=2 * IDLE + 1)
    assert summary(closed) == [("a", ("save_file",), 2, 2)]


def test_a_session_reaching_the_command_cap_is_delivered_as_a_chunk():
    tracker = SessionTracker(IDLE, max_commands=4)
    closed = tracker.feed([event(i, "a", "edit_code", i) for i in range(1, 11)], now=0.0)
    assert [(c.first_rowid, c.last_rowid, c.reason) for c in closed] == [(1, 4, "chunk"), (5, 8, "chunk")]
    assert tracker.open_count == 1 and tracker.low_water() == 9


def test_open_session_cap_closes_the_longest_idle_first():
    tracker = SessionTracker(IDLE, max_open=3)
    tracker.feed([event(1, "a", "open_file", 0)], now=0.0)
    tracker.feed([event(2, "b", "open_file", 1)], now=1.0)
    tracker.feed([event(3, "c", "open_file", 2)], now=2.0)
    tracker.feed([event(4, "a", "edit_code", 3)], now=3.0)  # a is fresh again
    closed = tracker.feed([event(5, "d", "open_file", 4)], now=4.0)
    assert [(c.session_id, c.reason) for c in closed] == [("b", "evicted")]
    assert tracker.open_count == 3 and tracker.evicted_count == 1


def test_close_all_and_low_water():
    tracker = SessionTracker(IDLE)
    assert tracker.low_water() is None and tracker.next_deadline() is None
    tracker.feed([event(7, "a", "open_file", 0), event(9, "b", "open_file", 0)], now=0.0)
    assert tracker.low_water() == 7
    assert summary(tracker.close_all()) == [("a", ("open_file",), 7, 7), ("b", ("open_file",), 9, 9)]
    assert tracker.open_count == 0


def test_drop_replayed_skips_events_of_closed_sessions_only():
    events = [
        event(1, "a", "open_file", 0),
        event(2, "b", "open_file", 0),
        event(3, "a", "save_file", 0),
        event(5, "a", "edit_code", 0),
    ]
    kept = drop_replayed(events, {"a": [(1, 3)]})
    assert [e[0] for e in kept] == [2, 5]


def test_invalid_tracker_settings_are_refused():
    with pytest.raises(ValueError):
        SessionTracker(0)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 6)), max_size=40), st.data())
def test_drop_replayed_equals_a_plain_scan_of_the_ranges(plan, data):
    """Each id's sessions follow each other: disjoint ranges, sorted by first rowid (as the store gives)."""
    ranges, rowid = {}, 0
    for session_id, length in plan:
        ranges.setdefault(session_id, []).append((rowid + 1, rowid + length))
        rowid += length + data.draw(st.integers(0, 3))
    events = [(r, data.draw(st.sampled_from("abcd")), ("edit_code", "code_edit"), 1.0) for r in range(1, rowid + 3)]
    plain = [e for e in events if not any(first <= e[0] <= last for first, last in ranges.get(e[1], []))]
    assert list(drop_replayed(events, ranges)) == plain
