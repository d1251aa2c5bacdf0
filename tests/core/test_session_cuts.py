"""Where sessions are cut, against an independent reference, over hostile streams.

The reference (tests/reference.py) is the rule in a few plain lines over the whole stream.  The
streams break every assumption about order: late sources of any lateness, times out of order
within an id, duplicated times, rows dated ten years ahead or behind, several sessions of one id
in one batch, arbitrary batch boundaries, and restarts at arbitrary rows through the real
pipeline (replay from the committed low-water position, closed sessions' rows dropped).
"""

import dataclasses
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference import reference_sessions

from omnimemory_learner.config import load_config
from omnimemory_learner.core.sessions import SessionTracker
from omnimemory_learner.pipeline import Pipeline
from omnimemory_learner.storage.outbox import decode_commands

IDLE = 300.0
BASE = 1_700_000_000.0
TEN_YEARS = 10 * 365 * 86400.0
IDS = ["a", "b", "c", "d"]
# Gaps of the writer's clock between rows, around the threshold on purpose.
GAPS = [0.0, 0.5, 1.0, 60.0, 299.5, 300.0, 300.5, 450.0, 600.0, 3600.0]


@st.composite
def hostile_streams(draw, max_events=60):
    """(rowid, session_id, time) in rowid order, out of event-time order in every way."""
    n = draw(st.integers(1, max_events))
    # Each source writes its events this late: on time, seconds, about the threshold, a day.
    lateness = {sid: draw(st.sampled_from([0.0, 0.0, 12.0, 299.5, 300.0, 900.0, 86400.0])) for sid in IDS}
    clock = BASE
    events = []
    for rowid in range(1, n + 1):
        sid = draw(st.sampled_from(IDS))
        clock += draw(st.sampled_from(GAPS))
        t = clock - lateness[sid]
        kind = draw(st.sampled_from(["on time"] * 4 + ["out of order", "duplicate", "future", "past"]))
        if kind == "out of order":
            t -= draw(st.sampled_from([0.5, 150.0, 299.5, 300.0, 900.0]))
        elif kind == "duplicate" and events:
            t = draw(st.sampled_from(events))[2]
        elif kind == "future":
            t += TEN_YEARS
        elif kind == "past":
            t -= TEN_YEARS
        events.append((rowid, sid, t))
    return events


def mapped(events):
    # The command names the row, so a session's commands say exactly which rows it holds.
    return [(rowid, sid, (f"c{rowid}", "x"), t) for rowid, sid, t in events]


def rows_of(closed):
    return sorted((c.session_id, tuple(int(command[1:]) for command, _ in c.pairs)) for c in closed)


def batches(items, cuts):
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(items)}) + [len(items)]:
        yield items[start:cut]
        start = cut


def in_exactly_one_session(events, sessions):
    return sorted(rowid for _, rows in sessions for rowid in rows) == [rowid for rowid, _, _ in events]


# -- the reference itself, on cases worked by hand ------------------------------------------------


def test_the_reference_on_cases_worked_by_hand():
    stream = [
        (1, "a", 1000.0),
        (2, "b", 5000.0),
        (3, "a", 1200.0),
        (4, "a", 900.0),
        (5, "a", 1450.0),
        (6, "a", 1750.0),
        (7, "b", 5100.0),
        (8, "a", 1750.0 + TEN_YEARS),
        (9, "a", 1600.0),
    ]
    # 900 is late but joins; 1450 is 250 s after the latest (1200); 1750 is 300 s after 1450: a cut;
    # ten years ahead is a cut; 1600 is far before that session's latest time: it joins it.
    assert reference_sessions(stream, IDLE) == [("a", (1, 3, 4, 5)), ("b", (2, 7)), ("a", (6,)), ("a", (8, 9))]
    # Chunks of two: row 4 starts a session whose latest is 900, so 1450 is a cut there.
    assert reference_sessions(stream, IDLE, max_commands=2) == [
        ("a", (1, 3)),
        ("b", (2, 7)),
        ("a", (4,)),
        ("a", (5,)),
        ("a", (6,)),
        ("a", (8, 9)),
    ]


# -- read as a backlog ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(hostile_streams(), st.lists(st.integers(0, 60), max_size=12), st.sampled_from([None, 2, 5]))
def test_a_backlog_in_any_batches_is_cut_as_the_reference_cuts(events, cuts, max_commands):
    tracker = SessionTracker(IDLE, min_commands=1, max_commands=max_commands or 10**6, max_open=1000)
    closed = []
    for batch in batches(mapped(events), cuts):
        closed += tracker.feed(batch, now=0.0)
    closed += tracker.close_all()
    expected = reference_sessions(events, IDLE, max_commands)
    assert rows_of(closed) == sorted(expected)
    assert in_exactly_one_session(events, expected)


# -- read live ------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(hostile_streams(), st.data())
def test_live_splits_only_a_session_with_a_row_read_the_threshold_after_the_one_before(events, data):
    """Live, processing time closes sessions: rows come in batches read at moments that advance
    with the rows, and after each batch the sessions idle for the threshold close (the loop reads
    before it closes).  Live may only split a session of the reference, and only one holding a
    row read the threshold or more after the row of the session before it; so with no such late
    row, live is the reference."""
    items = mapped(events)
    cuts = data.draw(st.lists(st.integers(0, len(items)), max_size=15))
    tracker = SessionTracker(IDLE, min_commands=1, max_open=1000)
    read_at = {}
    closed = []
    moment = 0.0
    for batch in batches(items, cuts):
        moment += data.draw(st.sampled_from([0.0, 1.0, 150.0, 299.0, 300.0, 301.0, 5000.0]))
        closed += tracker.feed(batch, now=moment)
        read_at.update((event[0], moment) for event in batch)
        moment += data.draw(st.sampled_from([0.0, 100.0, 299.0]))  # then the loop waits, and closes
        closed += tracker.close_idle(now=moment)
    closed += tracker.close_all()
    live = rows_of(closed)
    assert in_exactly_one_session(events, live)
    reference = reference_sessions(events, IDLE)
    session_of = {rowid: index for index, (_, rows) in enumerate(reference) for rowid in rows}
    late = set()
    for _, rows in reference:
        late.update(rows[k] for k in range(1, len(rows)) if read_at[rows[k]] - read_at[rows[k - 1]] >= IDLE)
    for _, rows in live:
        # Live only splits a reference session, never joins two ...
        assert len({session_of[rowid] for rowid in rows}) == 1
    starts = {rows[0] for _, rows in live} - {rows[0] for _, rows in reference}
    # ... and only a session holding a row read the threshold or more after the row before it, at
    # that row or after it (the piece split off is cut by its own latest time from then on).
    for start in starts:
        rows = reference[session_of[start]][1]
        assert any(rowid in late for rowid in rows if rowid <= start), (start, rows, late)
    if not late:
        assert live == sorted(reference)


# -- restarts at arbitrary rows, through the real pipeline ----------------------------------------


class Killed(Exception):
    """SIGKILL, as far as the pipeline can tell: nothing after it runs."""


def pipeline_config(work: Path, db: Path, batch_size: int, max_commands, max_open: int):
    return load_config(
        env={
            "HOME": str(work),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_LOG_FILE": str(work / "learner.log"),
            "OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": str(IDLE / 60),
            "OMNIMEMORY_LEARNER_MIN_COMMANDS_FOR_LEARNING": "1",
            "OMNIMEMORY_LEARNER_BATCH_SIZE": str(batch_size),
            "OMNIMEMORY_LEARNER_MAX_SESSION_COMMANDS": str(max_commands or 100000),
            "OMNIMEMORY_LEARNER_MAX_OPEN_SESSIONS": str(max_open),
        }
    )


def run_with_kills(events, batch_size, kills, commits, max_commands=None, max_open=1000, closing=frozenset()):
    """Read the stream with the real pipeline, killed after the given numbers of batches and
    started again each time; returns every session in the outbox and the evicted counter."""
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        db = work / "events.db"
        connection = sqlite3.connect(str(db))
        connection.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL,"
            " event_type TEXT, session_id TEXT)"
        )
        connection.executemany(
            "INSERT INTO events (id, timestamp, event_type, session_id) VALUES (?, ?, ?, ?)",
            [(rowid, t, "git_push" if rowid in closing else "code_edit", sid) for rowid, sid, t in events],
        )
        connection.commit()
        connection.close()
        config = pipeline_config(work, db, batch_size, max_commands, max_open)
        if closing:
            config = dataclasses.replace(config, close_on=("push_changes",))
        commit_after = iter(commits * 100)
        for kill_after in list(kills) + [None]:
            pipeline = Pipeline(config, clock=lambda: 0.0)
            batches_read = 0

            def between_batches():
                nonlocal batches_read
                batches_read += 1
                if next(commit_after, False):
                    pipeline.commit()
                if kill_after is not None and batches_read >= kill_after:
                    raise Killed()

            try:
                assert pipeline.drain(between_batches=between_batches)
            except Killed:
                event("killed and restarted")
                pipeline.reader.close()
                pipeline.state.close()  # nothing since the last commit reaches the state
                continue
            pipeline.close_all("end")
            pipeline.close()
        state = sqlite3.connect(str(work / "state" / "state.db"))
        stored = state.execute(
            "SELECT session_id, first_rowid, last_rowid, n_commands, commands FROM sessions ORDER BY first_rowid"
        ).fetchall()
        evicted = state.execute("SELECT value FROM counters WHERE name = 'sessions_evicted'").fetchone()[0]
        state.close()
    return [
        (sid, first, last, n, tuple(t for _, t, _ in decode_commands(blob))) for sid, first, last, n, blob in stored
    ], evicted


def as_stored(events, sessions):
    time_of = {rowid: t for rowid, _, t in events}
    return [(sid, rows[0], rows[-1], len(rows), tuple(time_of[r] for r in rows)) for sid, rows in sessions]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hostile_streams(),
    st.integers(1, 7),
    st.lists(st.integers(1, 5), max_size=6),
    st.lists(st.booleans(), min_size=1, max_size=8),
    st.sampled_from([None, 3]),
)
def test_restarts_at_arbitrary_rows_give_the_reference_sessions_exactly_once(
    events, batch_size, kills, commits, max_commands
):
    stored, evicted = run_with_kills(events, batch_size, kills, commits, max_commands)
    expected = as_stored(events, reference_sessions(events, IDLE, max_commands))
    assert sorted(stored) == sorted(expected)
    assert evicted == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hostile_streams(),
    st.integers(1, 7),
    st.lists(st.integers(1, 12), min_size=1, max_size=6),
    st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_with_the_open_session_cap_a_restart_still_gives_the_same_sessions(events, batch_size, kills, commits):
    """Evictions depart from the reference (counted); a restart must not change them."""
    uninterrupted, evicted = run_with_kills(events, batch_size, [], [False], max_open=2)
    stored, evicted_with_kills = run_with_kills(events, batch_size, kills, commits, max_open=2)
    assert sorted(stored) == sorted(uninterrupted)
    assert sum(n for _, _, _, n, _ in stored) == len(events)
    assert evicted_with_kills == evicted
    if len({sid for _, sid, _ in events}) <= 2:
        assert evicted == 0 and sorted(stored) == sorted(as_stored(events, reference_sessions(events, IDLE)))


def test_an_eviction_by_the_cap_is_counted_and_logged(caplog):
    events = [(1, "a", BASE), (2, "b", BASE + 1), (3, "c", BASE + 2), (4, "a", BASE + 3)]
    with caplog.at_level("WARNING", logger="omnimemory_learner.pipeline"):
        stored, evicted = run_with_kills(events, 10, [], [False], max_open=2)
    # a went first (least recently active) when c came, so its next event starts a session of its
    # own, and b goes then.
    assert evicted == 2 and sorted((sid, first, last) for sid, first, last, _, _ in stored) == [
        ("a", 1, 1),
        ("a", 4, 4),
        ("b", 2, 2),
        ("c", 3, 3),
    ]
    assert "2 session(s) closed early by the open-session cap" in caplog.text


# -- close_on (issue 11): the same cuts on any read, batch boundaries and restarts -----------------


@settings(max_examples=300, deadline=None)
@given(hostile_streams(), st.lists(st.integers(0, 60), max_size=12), st.sets(st.integers(1, 60), max_size=15))
def test_close_on_in_any_batches_is_cut_as_the_reference_cuts(events, cuts, closing):
    closers = {f"c{rowid}" for rowid in closing}
    tracker = SessionTracker(IDLE, min_commands=1, max_open=1000, close_on=closers)
    closed = []
    for batch in batches(mapped(events), cuts):
        closed += tracker.feed(batch, now=0.0)
    closed += tracker.close_all()
    expected = reference_sessions(events, IDLE, closing=frozenset(closing))
    assert rows_of(closed) == sorted(expected)
    assert in_exactly_one_session(events, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hostile_streams(),
    st.integers(1, 7),
    st.lists(st.integers(1, 5), max_size=6),
    st.lists(st.booleans(), min_size=1, max_size=8),
    st.sets(st.integers(1, 60), max_size=15),
)
def test_close_on_with_restarts_gives_the_reference_sessions_exactly_once(events, batch_size, kills, commits, closing):
    stored, _ = run_with_kills(events, batch_size, kills, commits, closing=frozenset(closing))
    assert sorted(stored) == sorted(as_stored(events, reference_sessions(events, IDLE, closing=frozenset(closing))))
