"""The pure core: mapping, outcome, sessions.  No I/O; time is passed in."""

import pytest
from hypothesis import given, settings
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
    rows = [(1, "1970-01-01T00:00:10+00:00", "file_open", "s"), (2, 11, "mouse_move", "s"),
            (3, 12, "git_commit", "s")]
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

@pytest.mark.parametrize("commands, expected", [
    (["open_file", "edit_code", "save_file"], "success"),
    (["open_file", "edit_code", "commit_changes"], "success"),
    (["delete_file", "edit_code", "run_tests"], "failure"),
    (["open_file", "delete_file", "save_file"], "success"),  # success wins within the window
    (["delete_file", "open_file", "edit_code", "run_tests"], "success"),  # outside the last three
    (["open_file", "edit_code", "run_tests"], "success"),  # default
    (["command_completed", "delete_file"], "success"),
    (["push_changes"], "success"),
    (["delete_file"], "failure"),
])
def test_outcome_as_the_original(commands, expected):
    assert infer_outcome(commands) == expected


# -- sessions (the original's "session management" test) ------------------------------

def test_events_group_by_session_id_and_close_after_idle_processing_time():
    tracker = SessionTracker(IDLE, min_commands=3)
    closed = tracker.feed([event(1, "a", "open_file", 100), event(2, "b", "open_file", 101),
                           event(3, "a", "edit_code", 110), event(4, "a", "save_file", 120)], now=0.0, backlog=False)
    assert closed == [] and tracker.open_count == 2
    assert tracker.next_deadline() == pytest.approx(300.0)
    assert tracker.close_idle(now=299.0) == []
    closed = tracker.close_idle(now=300.0)
    assert summary(closed) == [("a", ("open_file", "edit_code", "save_file"), 1, 4),
                               ("b", ("open_file",), 2, 2)]
    a = next(c for c in closed if c.session_id == "a")
    assert a.learnable and a.outcome == "success"
    assert a.commands[0] == ("open_file", 100.0, "open_file")
    assert not next(c for c in closed if c.session_id == "b").learnable
    assert tracker.too_short_count == 1 and tracker.closed_count == 2


def test_processing_time_deadline_moves_with_each_arrival():
    tracker = SessionTracker(IDLE)
    tracker.feed([event(1, "a", "open_file", 100)], now=0.0, backlog=False)
    tracker.feed([event(2, "a", "save_file", 100)], now=200.0, backlog=False)
    assert tracker.close_idle(now=400.0) == []
    assert len(tracker.close_idle(now=500.0)) == 1


def test_live_mode_ignores_a_jump_of_the_writers_clock():
    tracker = SessionTracker(IDLE)
    # The writer's clock jumps forward by two hours mid-session.
    closed = tracker.feed([event(1, "a", "open_file", 1000), event(2, "a", "edit_code", 1000 + 7200)],
                          now=0.0, backlog=False)
    assert closed == [] and tracker.open_count == 1


def test_backlog_closes_by_event_time_on_arrival():
    tracker = SessionTracker(IDLE)
    closed = tracker.feed([event(1, "a", "open_file", 0), event(2, "a", "edit_code", 10),
                           event(3, "b", "open_file", 400),  # a is now idle by event time
                           event(4, "a", "save_file", 410)], now=0.0, backlog=True)
    # a closed when b's event showed 300 s had passed; a's next event starts a new session.
    assert summary(closed) == [("a", ("open_file", "edit_code"), 1, 2)]
    assert tracker.open_count == 2
    assert tracker.low_water() == 3


def test_after_close_the_same_id_starts_a_new_session():
    tracker = SessionTracker(IDLE, min_commands=1)
    tracker.feed([event(1, "a", "open_file", 0)], now=0.0, backlog=False)
    assert len(tracker.close_idle(now=IDLE)) == 1
    tracker.feed([event(2, "a", "save_file", 1000)], now=IDLE + 1, backlog=False)
    closed = tracker.close_idle(now=2 * IDLE + 1)
    assert summary(closed) == [("a", ("save_file",), 2, 2)]


def test_a_session_reaching_the_command_cap_is_delivered_as_a_chunk():
    tracker = SessionTracker(IDLE, max_commands=4)
    closed = tracker.feed([event(i, "a", "edit_code", i) for i in range(1, 11)], now=0.0, backlog=False)
    assert [(c.first_rowid, c.last_rowid, c.reason) for c in closed] == [(1, 4, "chunk"), (5, 8, "chunk")]
    assert tracker.open_count == 1 and tracker.low_water() == 9


def test_open_session_cap_closes_the_longest_idle_first():
    tracker = SessionTracker(IDLE, max_open=3)
    tracker.feed([event(1, "a", "open_file", 0)], now=0.0, backlog=False)
    tracker.feed([event(2, "b", "open_file", 1)], now=1.0, backlog=False)
    tracker.feed([event(3, "c", "open_file", 2)], now=2.0, backlog=False)
    tracker.feed([event(4, "a", "edit_code", 3)], now=3.0, backlog=False)  # a is fresh again
    closed = tracker.feed([event(5, "d", "open_file", 4)], now=4.0, backlog=False)
    assert [(c.session_id, c.reason) for c in closed] == [("b", "evicted")]
    assert tracker.open_count == 3


def test_close_all_and_low_water():
    tracker = SessionTracker(IDLE)
    assert tracker.low_water() is None and tracker.next_deadline() is None
    tracker.feed([event(7, "a", "open_file", 0), event(9, "b", "open_file", 0)], now=0.0, backlog=False)
    assert tracker.low_water() == 7
    assert summary(tracker.close_all()) == [("a", ("open_file",), 7, 7), ("b", ("open_file",), 9, 9)]
    assert tracker.open_count == 0


def test_drop_replayed_skips_events_of_closed_sessions_only():
    events = [event(1, "a", "open_file", 0), event(2, "b", "open_file", 0),
              event(3, "a", "save_file", 0), event(5, "a", "edit_code", 0)]
    kept = drop_replayed(events, {"a": [(1, 3)]})
    assert [e[0] for e in kept] == [2, 5]


def test_invalid_tracker_settings_are_refused():
    with pytest.raises(ValueError):
        SessionTracker(0)


# -- backlog equals live: the property -----------------------------------------------

@st.composite
def event_streams(draw):
    """Events in rowid order with non-decreasing times; gaps well below or above idle."""
    n = draw(st.integers(1, 120))
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "default", "x" * 40]), min_size=n, max_size=n))
    gaps = draw(st.lists(st.one_of(st.floats(0, 60), st.floats(400, 5000)), min_size=n, max_size=n))
    commands = draw(st.lists(st.sampled_from(sorted(set(DEFAULT_EVENT_MAP.values()))), min_size=n, max_size=n))
    t = 1_700_000_000.0
    events = []
    for i in range(n):
        t += gaps[i]
        events.append((i + 1, ids[i], (commands[i], "x"), t))
    return events


def run_backlog(events, cuts):
    tracker = SessionTracker(IDLE, min_commands=2, max_commands=25, max_open=1000)
    closed = []
    start = 0
    for cut in sorted(set(cuts)) + [len(events)]:
        closed += tracker.feed(events[start:cut], now=0.0, backlog=True)
        start = cut
    closed += tracker.close_all()
    return closed


def run_live(events):
    # Written over time and read as it comes: processing time is event time.
    tracker = SessionTracker(IDLE, min_commands=2, max_commands=25, max_open=1000)
    closed = []
    for e in events:
        closed += tracker.close_idle(now=e[3])
        closed += tracker.feed([e], now=e[3], backlog=False)
    closed += tracker.close_all()
    return closed


@settings(max_examples=300, deadline=None)
@given(event_streams(), st.lists(st.integers(0, 120), max_size=10))
def test_backlog_in_any_batches_gives_the_sessions_reading_live_gives(events, cuts):
    cuts = [c for c in cuts if c <= len(events)]
    live = run_live(events)
    assert summary(run_backlog(events, cuts)) == summary(live)
    assert summary(run_backlog(events, [])) == summary(live)
    # Every event is in exactly one session.
    assert sorted(r for c in live for r in range(c.first_rowid, c.last_rowid + 1)
                  if any(e[0] == r and e[1] == c.session_id for e in events)) == [e[0] for e in events]
