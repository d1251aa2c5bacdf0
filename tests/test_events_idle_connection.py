"""No connection to the events database stays open between reads (issue 24, item 10).

An open read-only connection to a WAL database, even idle, holds a shared lock:
the memory daemon's `PRAGMA journal_mode=DELETE` then fails "database is locked"
(SQLite does not wait for it: the busy timeout does not apply).  The writer
here is another process that keeps its own connection open, as the daemon does.
"""

from __future__ import annotations

import subprocess
import sys
import time

from helpers import IDLE_MINUTES, cpu_seconds, create_db, learner_env, output_of, start_learner, stop, wait_until

from omnimemory_learner.events import EventReader

# A daemon stand-in on one connection, driven line by line on stdin:
#   insert LABEL  three mapped events of session LABEL, one transaction
#   mode M        PRAGMA journal_mode=M; prints the mode it is in, or the error
WRITER = r"""
import datetime, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
db.execute("PRAGMA journal_mode=WAL")
print("ready", flush=True)
for line in sys.stdin:
    verb, _, argument = line.strip().partition(" ")
    try:
        if verb == "insert":
            db.execute("BEGIN")
            for kind in ("file_open", "code_edit", "file_save"):
                db.execute(
                    "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)",
                    (datetime.datetime.now().isoformat(), kind, argument),
                )
            db.execute("COMMIT")
            print("inserted", flush=True)
        elif verb == "mode":
            print(db.execute(f"PRAGMA journal_mode={argument}").fetchone()[0], flush=True)
    except sqlite3.Error as error:
        print(f"error: {error}", flush=True)
"""


def start_writer(db):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "ready"
    return writer


def tell(writer, line):
    writer.stdin.write(line + "\n")
    writer.stdin.flush()
    return writer.stdout.readline().strip()


def test_the_writer_leaves_wal_mode_while_the_service_runs_and_is_still_read(tmp_path, api):
    db = create_db(tmp_path / "memory_data.db")
    writer = start_writer(db)
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=2,
    )
    learner = start_learner(env)
    try:
        assert tell(writer, "insert in-wal") == "inserted"
        assert api.wait_for(1, timeout=30), output_of(learner)
        time.sleep(1.0)  # the service idle: the session sent, nothing more to read
        # Before: "error: database is locked", for as long as the service ran.
        switched = tell(writer, "mode delete")
        print(f"FIGURE journal_mode=DELETE while the service runs idle: {switched}")
        assert switched == "delete", output_of(learner)
        assert tell(writer, "insert in-rollback-journal") == "inserted"
        assert api.wait_for(2, timeout=30), output_of(learner)
        assert [body["session_id"] for _, body in api.sessions()] == ["in-wal", "in-rollback-journal"]
        # And back: the reader follows both ways.
        assert tell(writer, "mode wal") == "wal"
        assert tell(writer, "insert in-wal-again") == "inserted"
        assert api.wait_for(3, timeout=30), output_of(learner)
        code, out = stop(learner)
        assert code == 0, out
    finally:
        if learner.poll() is None:
            learner.kill()
        writer.stdin.close()
        writer.wait(10)


def test_a_commit_between_the_last_read_and_the_rest_is_news(tmp_path):
    """changed() after rest() compares with the files before the open, not after the close."""
    db = create_db(tmp_path / "m.db")
    writer = start_writer(db)
    try:
        assert tell(writer, "insert a") == "inserted"
        reader = EventReader(db)
        assert len(reader.read_batch(0, 100)) == 3
        assert tell(writer, "insert b") == "inserted"  # after the read, before the close
        reader.rest()
        assert reader._connection is None
        assert reader.changed() is True
        assert len(reader.read_batch(3, 100)) == 3
        reader.rest()
        # Our own opening and closing is no news: a watcher woken by it must not read again, and again.
        assert reader.changed() is False
        assert reader.read_batch(6, 100) == []
        reader.rest()
        assert reader.changed() is False
        assert tell(writer, "mode delete") == "delete"
        assert reader.changed() is True
        assert tell(writer, "insert c") == "inserted"  # a rollback-journal commit
        assert reader.changed() is True and reader.changed() is False
        assert [row[3] for row in reader.read_batch(6, 100)] == ["c"] * 3
        reader.rest()
    finally:
        writer.stdin.close()
        writer.wait(10)


def test_a_caught_up_service_holds_no_descriptor_of_the_database(tmp_path, api):
    db = create_db(tmp_path / "memory_data.db")
    writer = start_writer(db)
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env)
    try:
        assert tell(writer, "insert s") == "inserted"
        assert api.wait_for(1, timeout=30), output_of(learner)

        def open_database_files():
            import os

            fds = f"/proc/{learner.pid}/fd"
            targets = []
            for fd in os.listdir(fds):
                try:
                    targets.append(os.readlink(f"{fds}/{fd}"))
                except OSError:
                    pass
            return [target for target in targets if target.startswith(str(db))]

        assert wait_until(lambda: not open_database_files(), 10), open_database_files()
        # Reading on a new connection each time makes inotify events (the -wal opened for
        # writing and closed): they must not wake the service to read again, and again.
        before = cpu_seconds(learner.pid)
        time.sleep(4.0)
        used = cpu_seconds(learner.pid) - before
        print(f"FIGURE idle CPU with the writer holding its WAL: {used:.2f} s in 4 s")
        assert used < 0.4, f"{used:.2f} CPU s in 4 s"
        assert stop(learner)[0] == 0
    finally:
        if learner.poll() is None:
            learner.kill()
        writer.stdin.close()
        writer.wait(10)
