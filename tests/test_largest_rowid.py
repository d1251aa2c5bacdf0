"""A row at SQLite's largest rowid (2^63-1, allowed in a table without AUTOINCREMENT): said, and a way out.

SQLite then gives each new row a random unused rowid, below the position:
reading by position cannot find them. The learner says so once, at WARNING,
with what to do; deleting that row makes the table read again from its start,
and the ledger keeps what was sent from being sent again. A real service, a
real API on 127.0.0.1, the rows written by another connection.
"""

import sqlite3
import time

from helpers import SCHEMA_ROWID, RecordingAPI, create_db, learner_env, run_learner, start_learner, stop, wait_until

LARGEST = 2**63 - 1
TYPES = ("file_open", "code_edit", "file_save")


def write(db, sql, rows):
    connection = sqlite3.connect(str(db), timeout=30)
    with connection:
        connection.executemany(sql, rows)
    connection.close()


def session_rows(session_id, start):
    return [(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(start + k))}Z", TYPES[k], session_id) for k in range(3)]


def test_a_row_at_the_largest_rowid_is_said_once_and_deleting_it_reads_the_rest(tmp_path):
    api = RecordingAPI().start()
    db = create_db(tmp_path / "db" / "memory_data.db", schema=SCHEMA_ROWID)
    insert = "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)"
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.1",  # 6 s: a session's events, 1 s apart, come in any order
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="0.5",
    )
    learner = start_learner(env)
    try:
        write(db, insert, session_rows("before", time.time() - 600))
        assert api.wait_for(1, timeout=30)
        write(
            db,
            "INSERT INTO events (rowid, timestamp, event_type, session_id) VALUES (?, ?, ?, ?)",
            [(LARGEST, "2026-12-01T10:00:00Z", "file_open", "at-the-end")],
        )
        time.sleep(2.0)
        for n in range(3):  # random rowids now, below the position
            write(db, insert, session_rows(f"after{n}", time.time() - 300 + n * 60))
        time.sleep(4.0)
        assert {body["session_id"] for _, body in api.sessions()} == {"before"}  # not found by position
        doctor = run_learner(env, "doctor")
        assert "a row at the largest rowid" in doctor.stdout and "DELETE FROM events WHERE rowid" in doctor.stdout
        write(db, "DELETE FROM events WHERE rowid = ?", [(LARGEST,)])  # what the warning says to do
        assert wait_until(lambda: len(api.sessions()) >= 4, 40), api.sessions()
        time.sleep(2.0)
    finally:
        code, out = stop(learner)
        api.stop()
    assert code == 0, out[-3000:]
    assert out.count("holds a row at the largest rowid") == 1, out[-3000:]
    sent = sorted(body["session_id"] for _, body in api.sessions())
    assert sent == ["after0", "after1", "after2", "before"]  # each once: the ledger held "before"
