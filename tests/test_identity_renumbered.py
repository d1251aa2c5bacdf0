"""Retention deletes the oldest rows of a table without INTEGER PRIMARY KEY and VACUUMs: rowids renumbered (issue 24, item 3).

The history is the same, its rows moved down: the session open at that moment
must not be cut and sent, then read again whole and sent again.  A real writer
process deletes and vacuums; the service runs against a RecordingAPI.
"""

import time

from helpers import SCHEMA_ROWID, create_db, learner_env, run_learner, start_learner, stop
from test_identity_deletions import WRITE, commands_by_session, writer

IDLE_MINUTES = 0.25  # 15 s: the writer's steps fit inside one session on a loaded machine

RETENTION = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("DELETE FROM events WHERE session_id = ?", (sys.argv[2],))
db.execute("VACUUM")
"""
EVERYTHING_GONE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("DELETE FROM events")
db.execute("VACUUM")
"""


def service(tmp_path, api, db):
    settings = {"OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": IDLE_MINUTES, "OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS": 1}
    return start_learner(learner_env(tmp_path, api.url, db, **settings))


def test_oldest_rows_deleted_and_vacuumed_while_a_session_is_open_send_it_once_whole(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db", schema=SCHEMA_ROWID)
    writer(WRITE, db, "old", "file_open", "code_edit", "file_save", "test_run")
    learner = service(tmp_path, api, db)
    try:
        assert api.wait_for(1, timeout=60)  # "old" closed and sent: its rows are what retention deletes
        writer(WRITE, db, "a", "file_open", "code_edit", "file_save")
        time.sleep(2.5)  # read: the open session holds three commands
        writer(RETENTION, db, "old")  # rowids 5-7 become 1-3
        time.sleep(2.5)
        writer(WRITE, db, "a", "test_run", "git_commit", "file_open")
        assert api.wait_for(2, timeout=60)
        time.sleep(3)  # nothing more comes
    finally:
        code, out = stop(learner)
    assert code == 0, out
    assert "was renumbered" in out and "different history" not in out, out[-3000:]
    sessions = commands_by_session(api)
    # Before: a sent cut at 3 commands, then read again with 6 and sent again; old not sent again (the ledger).
    assert sorted(sessions) == ["a", "old"] and all(len(sent) == 1 for sent in sessions.values()), sessions
    assert len(sessions["a"][0]) == 6


def test_a_history_really_rewritten_still_sends_the_open_session_as_it_was(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db", schema=SCHEMA_ROWID)
    learner = service(tmp_path, api, db)
    try:
        writer(WRITE, db, "a", "file_open", "code_edit", "file_save")
        time.sleep(2.5)
        writer(EVERYTHING_GONE, db)  # every row gone, others written: nothing of "a" is there to read again
        writer(WRITE, db, "z", "git_commit", "file_delete", "build_start", "test_run")
        assert api.wait_for(2, timeout=60)
        time.sleep(2)
    finally:
        code, out = stop(learner)
    assert code == 0, out
    assert "renumbered" not in out
    sessions = commands_by_session(api)
    assert sessions["a"] == [["open_file", "edit_code", "save_file"]] and len(sessions["z"]) == 1, sessions


def test_retention_while_the_learner_is_stopped_with_a_session_open_sends_it_once_whole(tmp_path, api):
    """The next start replays from the low-water mark: it finds the rows renumbered before reading one."""
    db = create_db(tmp_path / "db" / "memory_data.db", schema=SCHEMA_ROWID)
    writer(WRITE, db, "old", "file_open", "code_edit", "file_save", "test_run")
    learner = service(tmp_path, api, db)
    try:
        assert api.wait_for(1, timeout=60)
        writer(WRITE, db, "a", "file_open", "code_edit", "file_save")
        time.sleep(2.5)  # read: "a" open with three commands when the learner stops
    finally:
        code, out = stop(learner)
    assert code == 0, out
    writer(RETENTION, db, "old")
    writer(WRITE, db, "a", "test_run", "git_commit", "file_open")
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    status = run_learner(env, "status")
    learner = service(tmp_path, api, db)
    try:
        assert api.wait_for(2, timeout=60)
        time.sleep(3)
    finally:
        code, out = stop(learner)
    assert code == 0, out
    assert "was renumbered" in out and "different history" not in out, out[-3000:]
    sessions = commands_by_session(api)
    assert sorted(sessions) == ["a", "old"] and all(len(sent) == 1 for sent in sessions.values()), sessions
    assert len(sessions["a"][0]) == 6
    assert "renumbered" not in status.stdout  # nothing was found before this start
    status = run_learner(env, "status")
    assert "Replaced: renumbered" in status.stdout, status.stdout
