"""Property: retention deletes and VACUUMs renumber the rows; every session is still committed once, whole (issue 24, item 3).

A table whose rowid is no INTEGER PRIMARY KEY is renumbered 1 to n by VACUUM.
A generated stream of interleaved ids is written to a real SQLite file in
steps, the real pipeline reading it; between steps the oldest rows are deleted
and the file vacuumed, with the learner running or stopped (its next start then
replays from the low-water mark in the old numbering), or the learner restarts.

A retention that deletes only rows the pipeline no longer needs (below the
oldest open session's first row) must leave the sessions exactly as if nothing
had been deleted: the reference cuts the whole stream in a few plain lines, and
the outbox must hold exactly its sessions, each once.  A retention that cuts
into the rows still needed cannot keep that promise (the deleted events are
gone); it must lose no event still in the table and commit no session twice.
"""

import sqlite3
import time

from helpers import SCHEMA_ID, SCHEMA_ROWID, create_db
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimemory_learner.config import load_config
from omnimemory_learner.pipeline import Pipeline
from omnimemory_learner.storage.outbox import decode_commands
from omnimemory_learner.storage.state import StateStore

IDLE = 300.0
IDS = ("a", "b", "c")
KINDS = ("file_open", "code_edit", "file_save", "test_run")

events = st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from([1.0, 2.0, IDLE + 5])), min_size=1, max_size=8)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), events),
        st.tuples(st.sampled_from(["retain", "retain_stopped"]), st.floats(0.0, 1.0)),
        st.tuples(st.just("restart"), st.just(None)),
    ),
    min_size=1,
    max_size=14,
)


def reference(written):
    """Each id's events in write order, cut where one comes IDLE or more after its session's latest."""
    sessions, current = [], {}
    for session_id, timestamp, kind in written:
        if session_id in current and timestamp - max(t for t, _ in current[session_id]) >= IDLE:
            sessions.append((session_id, tuple(current.pop(session_id))))
        current.setdefault(session_id, []).append((timestamp, kind))
    sessions += [(session_id, tuple(commands)) for session_id, commands in current.items()]
    return sorted(sessions)


def committed(state_dir):
    store = StateStore(state_dir)
    try:
        rows = store._db.execute("SELECT session_id, commands FROM sessions WHERE commands IS NOT NULL").fetchall()
        replaced = store.replaced()
    finally:
        store.close()
    found = [(sid, tuple((t, kind) for _, t, kind in decode_commands(blob))) for sid, blob in rows]
    return sorted(found), replaced


def configure(work, db):
    return load_config(
        env={
            "HOME": str(work),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_BATCH_SIZE": "3",
            "OMNIMEMORY_LEARNER_MIN_COMMANDS_FOR_LEARNING": "1",
            "OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": str(IDLE / 60),
        }
    )


def delete_oldest(db, count):
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY rowid LIMIT ?)", (count,))
        conn.execute("VACUUM")
    finally:
        conn.close()


class Run:
    """The stream written so far, the pipeline reading it, and how many rows retention may take."""

    def __init__(self, work, schema, clock=lambda: 0.0):  # by default no cut by processing time
        self.db = create_db(work / "memory_data.db", schema=schema)
        self.config = configure(work, self.db)
        self.processing_clock = clock
        self.pipeline = Pipeline(self.config, clock=clock)
        self.written = []
        self.clock = {session_id: time.time() - 3600 for session_id in IDS}
        self.kind = 0

    def add(self, events):
        rows = []
        for session_id, gap in events:
            self.clock[session_id] += gap
            kind = KINDS[self.kind % len(KINDS)]
            self.kind += 1
            rows.append((repr(self.clock[session_id]), kind, session_id))
            self.written.append((session_id, self.clock[session_id], kind))
        conn = sqlite3.connect(str(self.db))
        conn.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows)
        conn.commit()
        conn.close()

    def rows_not_needed(self):
        """Rows below the first one the pipeline still needs (all read, of closed sessions)."""
        conn = sqlite3.connect(str(self.db))
        try:
            low_water = self.pipeline.tracker.low_water()
            needed = self.pipeline.read_after + 1 if low_water is None else low_water
            return conn.execute("SELECT count(*) FROM events WHERE rowid < ?", (needed,)).fetchone()[0]
        finally:
            conn.close()

    def restart(self):
        self.pipeline.close()
        self.pipeline = Pipeline(self.config, clock=self.processing_clock)


def play(run, plan):
    for action, argument in plan:
        if action == "add":
            run.add(argument)
        elif action == "restart":
            run.restart()
        elif action == "cut":
            delete_oldest(run.db, run.rows_not_needed() + argument)  # into rows still needed
        else:
            count = int(argument * run.rows_not_needed())
            if action == "retain_stopped":
                run.pipeline.close()
            delete_oldest(run.db, count)
            if action == "retain_stopped":
                run.pipeline = Pipeline(run.config, clock=run.processing_clock)
        assert run.pipeline.drain()
    run.pipeline.close_all()
    assert run.pipeline.commit()
    run.pipeline.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps, schema=st.sampled_from([SCHEMA_ROWID, SCHEMA_ID]))
def test_retention_of_rows_no_longer_needed_leaves_every_session_whole_and_once(tmp_path_factory, plan, schema):
    run = Run(tmp_path_factory.mktemp("renumbered"), schema)
    play(run, plan)
    found, replaced = committed(run.config.state_dir)
    assert found == reference(run.written), plan
    # Never taken for a rewritten history (which reads the table again from its start).
    assert replaced is None or replaced["verdict"] != "rewritten", (plan, replaced)


cuts = st.lists(
    st.one_of(
        st.tuples(st.just("add"), events),
        st.tuples(st.just("cut"), st.integers(1, 6)),
        st.tuples(st.just("restart"), st.just(None)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=cuts)
def test_retention_that_cuts_into_open_sessions_loses_no_event_left_and_commits_nothing_twice(tmp_path_factory, plan):
    run = Run(tmp_path_factory.mktemp("cut"), SCHEMA_ROWID)
    play(run, plan)
    conn = sqlite3.connect(str(run.db))
    left = conn.execute("SELECT session_id, CAST(timestamp AS REAL), event_type FROM events").fetchall()
    conn.close()
    found, _ = committed(run.config.state_dir)
    sent = {(sid, t, kind) for sid, commands in found for t, kind in commands}
    assert all(event in sent for event in left), plan
    assert len(set(found)) == len(found), plan


def test_a_retention_of_the_rows_of_sessions_closed_by_processing_time_keeps_the_open_one_whole(tmp_path):
    """close_idle raises the low-water mark: the row a renumbering is verified from moves with it.

    Before: the anchor stayed at the closed session's first row; the retention
    deleted it, the renumbering was taken for a rewrite, and b was sent cut and
    then whole (found by the hostile review).
    """
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])
    db, config, pipeline = run.db, run.config, run.pipeline
    run.add([("a", 1.0), ("a", 1.0)])
    assert pipeline.drain()
    now[0] = 100.0
    run.add([("b", 1.0), ("b", 1.0)])
    assert pipeline.drain()
    now[0] = IDLE + 50.0  # a idle by processing time, b not yet
    assert pipeline.close_idle() == 1 and pipeline.commit()
    delete_oldest(db, 2)  # a's rows, no longer needed; b's move from 3-4 to 1-2
    run.add([("b", 1.0)])
    assert pipeline.drain()
    pipeline.close_all()
    assert pipeline.commit()
    pipeline.close()
    found, replaced = committed(config.state_dir)
    assert [(sid, len(commands)) for sid, commands in found] == [("a", 2), ("b", 3)], found
    assert replaced["verdict"] == "renumbered", replaced
