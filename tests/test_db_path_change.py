"""db_path changed between two runs: what was open in the previous database is read to its end and sent.

A session that spans a stop is rebuilt at the next start by reading its rows
again; when the next start reads another database, those rows are not there.
Real learner processes, real databases written by another connection, a real
API on 127.0.0.1.
"""

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    RecordingAPI,
    create_db,
    insert_events,
    learner_env,
    received,
    run_learner,
    start_learner,
    stop,
    wait_until,
)

TYPES = ("file_open", "code_edit", "file_save", "test_run", "git_commit")


def _rows(session_id, count, start_minute=0):
    base = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=30)
    return [
        ((base + dt.timedelta(minutes=start_minute + i)).isoformat(), TYPES[i % len(TYPES)], session_id)
        for i in range(count)
    ]


def _processed(env):
    result = run_learner(env, "status", "--json")
    stats = json.loads(result.stdout).get("stats") if result.stdout else None
    return (stats or {}).get("events_processed", 0)


def _watching(env):
    log = Path(env["OMNIMEMORY_LEARNER_LOG_FILE"])
    return log.read_text().count("for changes (and polling") if log.exists() else 0


def _run_until_read(env, events):
    runs = _watching(env)
    learner = start_learner(env)
    try:
        # Ready (its signal handlers set), and the events read.
        assert wait_until(lambda: _watching(env) > runs and _processed(env) >= events, 30), _processed(env)
    finally:
        code, out = stop(learner)
    assert code == 0, out[-2000:]
    return out


def test_the_session_open_in_the_previous_database_is_read_to_its_end_and_sent_once(tmp_path):
    api = RecordingAPI().start()
    try:
        first = create_db(tmp_path / "first" / "memory_data.db")
        second = create_db(tmp_path / "second" / "memory_data.db")
        # Sessions stay open for an hour: only a close at the switch can send them.
        env = learner_env(tmp_path, api.url, first, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="60")
        insert_events(first, _rows("spans-the-switch", 3))
        _run_until_read(env, 3)
        assert received(api) == []  # still open at the stop
        # The daemon wrote two more before it moved to the new database.
        insert_events(first, _rows("spans-the-switch", 2, start_minute=3))
        insert_events(second, _rows("in-the-new-one", 3))

        env["OMNIMEMORY_LEARNER_DB_PATH"] = str(second)
        out = _run_until_read(env, 8)
        assert "read it to its end and closed the 1 sessions open there" in out, out[-3000:]
        assert wait_until(lambda: len(api.sessions()) >= 1, 20)

        # A third run on the same path finishes nothing again.
        out = _run_until_read(env, 8)
        assert "db_path changed" not in out
    finally:
        api.stop()
    assert received(api) == [
        ("spans-the-switch", ("open_file", "edit_code", "save_file", "open_file", "edit_code"), "success")
    ]
    assert len(api.sessions()) == 1  # sent once, though two runs followed the switch


def test_a_previous_database_that_is_gone_is_said_and_the_new_one_read(tmp_path):
    api = RecordingAPI().start()
    try:
        first = create_db(tmp_path / "first" / "memory_data.db")
        second = create_db(tmp_path / "second" / "memory_data.db")
        env = learner_env(tmp_path, api.url, first, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="60")
        insert_events(first, _rows("lost-with-its-file", 3))
        _run_until_read(env, 3)
        for path in first.parent.iterdir():
            path.unlink()
        insert_events(second, _rows("in-the-new-one", 3))

        env["OMNIMEMORY_LEARNER_DB_PATH"] = str(second)
        out = _run_until_read(env, 6)
    finally:
        api.stop()
    assert "cannot be read now" in out and "the sessions open there at the last stop are lost" in out, out[-3000:]
    assert received(api) == []  # the new database's session is still open; nothing of the old one is invented


def _recent(session_id, first, count):
    """Events a second apart, the first `first` seconds ago: one session for an idle threshold of 6 s."""
    start = time.time() - first
    return [
        (dt.datetime.fromtimestamp(start + i, dt.timezone.utc).isoformat(), TYPES[i % len(TYPES)], session_id)
        for i in range(count)
    ]


@pytest.mark.parametrize("how", ["symlinked directory", "copied directory"])
def test_another_name_or_a_copy_of_the_same_history_is_read_on_and_its_open_session_goes_on(tmp_path, how):
    api = RecordingAPI().start()
    try:
        first = create_db(tmp_path / "first" / "memory_data.db")
        env = learner_env(tmp_path, api.url, first, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.1")
        events = _recent("goes-on", 20, 5)
        insert_events(first, events[:3])
        _run_until_read(env, 3)
        if how == "symlinked directory":
            (tmp_path / "link").symlink_to(first.parent, target_is_directory=True)
            second = tmp_path / "link" / "memory_data.db"
        else:
            shutil.copytree(first.parent, tmp_path / "copy")
            second = tmp_path / "copy" / "memory_data.db"
        insert_events(second, events[3:])  # the daemon goes on writing where it now is
        env["OMNIMEMORY_LEARNER_DB_PATH"] = str(second)
        learner = start_learner(env)
        try:
            assert wait_until(lambda: len(api.sessions()) >= 1, 40)
            time.sleep(1.0)
        finally:
            code, out = stop(learner)
    finally:
        api.stop()
    assert code == 0, out[-3000:]
    assert "which holds the history read: read on" in out, out[-3000:]
    # One session of five: finishing the "previous" database would have sent 3, then 2.
    assert [(sid, len(commands)) for sid, commands, _ in received(api)] == [("goes-on", 5)]


HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_a_previous_database_locked_for_a_moment_is_finished_once_it_can_be_read(tmp_path):
    api = RecordingAPI().start()
    try:
        first = create_db(tmp_path / "first" / "memory_data.db", wal=False)  # rollback journal: a lock excludes readers
        second = create_db(tmp_path / "second" / "memory_data.db")
        env = learner_env(tmp_path, api.url, first, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="60")
        insert_events(first, _rows("held-a-moment", 3))
        _run_until_read(env, 3)
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(first), "3"], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        env["OMNIMEMORY_LEARNER_DB_PATH"] = str(second)
        out = _run_until_read(env, 3)
        holder.wait(10)
        assert wait_until(lambda: len(api.sessions()) >= 1, 20)
    finally:
        api.stop()
    assert "read it to its end and closed the 1 sessions open there" in out, out[-3000:]
    assert "are lost" not in out
    assert [(sid, len(commands)) for sid, commands, _ in received(api)] == [("held-a-moment", 3)]
