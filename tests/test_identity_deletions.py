"""The memory daemon deletes its newest event: the same history, not a rewritten one (issue 24, item 3).

AUTOINCREMENT never gives a rowid again, so the rows below are the ones read and
the next rows come above the position: the session open at that moment loses
nothing and is sent once.  A real writer process deletes; the service runs
against a RecordingAPI.
"""

import subprocess
import sys
import time

import pytest
from helpers import SCHEMA_ID, SCHEMA_ROWID, create_db, learner_env, start_learner, stop

IDLE_MINUTES = 0.25  # 15 s: the writer's steps (about 6 s) fit well inside one session on a loaded machine

WRITE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
for kind in sys.argv[3:]:
    db.execute("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)",
               (time.strftime("%Y-%m-%dT%H:%M:%S"), kind, sys.argv[2]))
    time.sleep(0.05)
"""
DELETE_NEWEST = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("DELETE FROM events WHERE rowid = (SELECT max(rowid) FROM events)")
"""


def writer(script, *args):
    subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True, timeout=60)


def commands_by_session(api):
    found = {}
    for _, body in api.sessions():
        found.setdefault(body["session_id"], []).append([c["command"] for c in body["session_commands"]])
    return found


def service(tmp_path, api, db):
    settings = {"OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": IDLE_MINUTES, "OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS": 1}
    return start_learner(learner_env(tmp_path, api.url, db, **settings))


def test_the_newest_event_deleted_while_a_session_is_open_sends_it_once_whole(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db", schema=SCHEMA_ID)
    learner = service(tmp_path, api, db)
    try:
        writer(WRITE, db, "a", "file_open", "code_edit", "file_save")
        time.sleep(2.5)  # read: the open session holds three commands
        writer(DELETE_NEWEST, db)  # the user asked the daemon to forget the file_save
        time.sleep(2.5)  # a drain or two see the table one row shorter
        writer(WRITE, db, "a", "test_run", "git_commit", "file_open")
        assert api.wait_for(1, timeout=60)
        writer(WRITE, db, "b", "file_open", "code_edit", "file_save")
        assert api.wait_for(2, timeout=60)
        time.sleep(3)  # nothing more comes
    finally:
        code, out = stop(learner)
    assert code == 0, out
    assert "different history" not in out
    sessions = commands_by_session(api)
    # Before: a sent twice, cut at 3 commands and then read again with 5.
    assert sorted(sessions) == ["a", "b"] and all(len(sent) == 1 for sent in sessions.values()), sessions
    assert len(sessions["a"][0]) == 6 and len(sessions["b"][0]) == 3


@pytest.mark.parametrize("schema", [SCHEMA_ROWID], ids=["plain rowid"])
def test_without_autoincrement_a_deleted_newest_row_is_still_a_rewrite(tmp_path, api, schema):
    # The next insert takes the deleted rowid again: reading on from the position would miss it.
    db = create_db(tmp_path / "db" / "memory_data.db", schema=schema)
    learner = service(tmp_path, api, db)
    try:
        writer(WRITE, db, "a", "file_open", "code_edit", "file_save")
        time.sleep(2.5)
        writer(DELETE_NEWEST, db)
        time.sleep(2.5)
    finally:
        code, out = stop(learner)
    assert code == 0 and "different history" in out


def test_every_row_of_an_open_session_deleted_then_a_restart_still_commits_it_once(tmp_path):
    """Kept open, its replay after the restart would find no row of it: it is committed when the delete is seen."""
    import sqlite3

    from omnimemory_learner.config import load_config
    from omnimemory_learner.pipeline import Pipeline

    db = create_db(tmp_path / "memory_data.db", schema=SCHEMA_ID)
    env = {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_DB_PATH": str(db)}
    config = load_config(env={**env, "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path / "state")})
    start = time.time() - 3600
    conn = sqlite3.connect(str(db), isolation_level=None)
    rows = [(repr(start + i), kind, "s0") for i, kind in enumerate(("file_open", "code_edit", "file_save"))]
    conn.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows)
    pipeline = Pipeline(config)
    assert pipeline.drain() and pipeline.tracker.open_count == 1
    conn.execute("DELETE FROM events")  # the newest rows, every one of s0's (AUTOINCREMENT: never given again)
    conn.execute("VACUUM")
    assert pipeline.drain() and pipeline.tracker.open_count == 0
    pipeline.close()
    pipeline = Pipeline(config)  # before: the replay found none of s0's rows and it was never sent
    assert pipeline.drain()
    pipeline.close_all()
    assert pipeline.commit()
    found = pipeline.state._db.execute("SELECT session_id, n_commands, reason FROM sessions").fetchall()
    pipeline.close()
    conn.close()
    assert found == [("s0", 3, "rows_deleted")]
