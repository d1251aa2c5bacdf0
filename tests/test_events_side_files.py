"""Reading creates nothing beside the events database (issue 24, item 18).

A WAL database whose writer is not running has no -wal or -shm.  A read-only
connection creates both (owned by the reader) and leaves them; the learner reads
such a file with immutable=1, and a writer that starts meanwhile, or comes and
goes between two reads, is still seen, and nothing is read torn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from helpers import create_db, insert_events, learner_env, output_of, run_learner, start_learner, stop, wait_until

from omnimemory_learner.events import EventReader, Unavailable

EVENTS = [("2025-11-08T05:00:00", "file_open", "s"), ("2025-11-08T05:00:01", "file_save", "s")]


def files_beside(db):
    return sorted(path.name for path in db.parent.iterdir() if path.name.startswith(db.name))


def wal_database(tmp_path, rows=EVENTS):
    """A WAL database whose writer wrote and exited: no -wal, no -shm."""
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, rows)
    assert files_beside(db) == ["memory_data.db"]
    return db


def test_the_reader_creates_nothing_beside_a_wal_database_whose_writer_is_not_running(tmp_path):
    db = wal_database(tmp_path)
    reader = EventReader(db)
    assert len(reader.read_batch(0, 10)) == 2
    assert reader.head() == 2
    fingerprinted = reader.fingerprint_rows({2: None})
    assert fingerprinted.first[0] == 1 and 2 in fingerprinted.found
    reader.changed()
    reader.rest()
    assert reader.changed() is False
    reader.close()
    # Before: ['memory_data.db', 'memory_data.db-shm', 'memory_data.db-wal'], left there.
    assert files_beside(db) == ["memory_data.db"]


def test_status_doctor_and_the_service_create_nothing_beside_it(tmp_path, api):
    db = wal_database(tmp_path)
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=1)
    learner = start_learner(env)
    created = {}
    try:
        report = lambda: json.loads(run_learner(env, "status", "--json").stdout)
        assert wait_until(lambda: (report()["stats"] or {}).get("events_processed") == 2, 20), output_of(learner)
        time.sleep(1.5)  # a poll or two more
        created["service"] = files_beside(db)
        assert stop(learner)[0] == 0
    finally:
        if learner.poll() is None:
            learner.kill()
    created["after the service"] = files_beside(db)
    status = json.loads(run_learner(env, "status", "--json").stdout)
    assert status["database_problem"] is None and status["db_head"] == 2, status
    created["status"] = files_beside(db)
    doctor = run_learner(env, "doctor")
    assert "2 events, newest rowid 2" in doctor.stdout, doctor.stdout
    assert "journal mode wal" in doctor.stdout  # read from the header: through immutable=1 SQLite says "delete"
    created["doctor"] = files_beside(db)
    print(f"FIGURE files beside the database: {created}")
    assert all(names == ["memory_data.db"] for names in created.values()), created


# A writer that starts and stays, driven on stdin: "insert N" commits N rows.
WRITER = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
db.execute("PRAGMA journal_mode=WAL")
print("ready", flush=True)
for line in sys.stdin:
    count = int(line.split()[1])
    db.executemany(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES ('2025-11-08T06:00:00', 'code_edit', 'w')",
        [()] * count,
    )
    print("inserted", flush=True)
"""


def test_a_writer_that_starts_while_a_connection_without_locks_is_open_is_read(tmp_path):
    db = wal_database(tmp_path)
    reader = EventReader(db)
    assert len(reader.read_batch(0, 10)) == 2  # connection kept: no rest
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        writer.stdin.write("insert 5\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "inserted"
        # Its rows are in its WAL only (it holds the database open: no checkpoint yet).
        assert reader.changed() is True
        assert [row[0] for row in reader.read_batch(2, 10)] == [3, 4, 5, 6, 7]
        assert reader.head() == 7
        reader.rest()
    finally:
        writer.stdin.close()
        writer.wait(10)


def test_a_writer_that_came_and_went_between_two_reads_is_read(tmp_path):
    """It checkpointed into the main file and removed its -wal and -shm: the open connection's cache is stale."""
    db = wal_database(tmp_path)
    reader = EventReader(db)
    assert len(reader.read_batch(0, 10)) == 2
    assert reader.head() == 2
    insert_events(db, [("2025-11-08T05:00:02", "file_open", "t")] * 3)
    assert files_beside(db) == ["memory_data.db"]
    assert reader.head() == 5
    assert [row[0] for row in reader.read_batch(2, 10)] == [3, 4, 5]
    reader.rest()
    assert files_beside(db) == ["memory_data.db"]


# Comes and goes as fast as it can: each round opens, commits rows whose
# every field is a function of the row id, and closes (checkpoint, -wal and
# -shm removed), so the main file changes under readers without locks.
FLAPPING_WRITER = r"""
import sqlite3, sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    db = sqlite3.connect(sys.argv[1], timeout=5)
    next_id = db.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0]
    db.executemany(
        "INSERT INTO events (id, timestamp, event_type, session_id, payload) VALUES (?, ?, 'code_edit', ?, ?)",
        [(i, f"2025-11-08T05:{i % 60:02d}:00", f"id{i}", bytes(i % 2000)) for i in range(next_id, next_id + 40)],
    )
    db.commit()
    db.close()
"""


def test_rows_read_while_a_writer_comes_and_goes_are_never_torn(tmp_path):
    db = wal_database(tmp_path, [])
    writer = subprocess.Popen([sys.executable, "-c", FLAPPING_WRITER, str(db), "4"])
    reader = EventReader(db)
    reads = problems = 0
    try:
        while writer.poll() is None:
            try:
                rows = reader.read_batch(0, 100000)
            except Unavailable as problem:
                assert problem.kind == "locked", problem  # never "corrupt"
                problems += 1
                continue
            reads += 1
            # A whole prefix of what was committed, every row as written.
            assert [row[0] for row in rows] == list(range(1, len(rows) + 1))
            assert all(row[3] == f"id{row[0]}" and row[1] == f"2025-11-08T05:{row[0] % 60:02d}:00" for row in rows)
            if reads % 3 == 0:
                reader.rest()
    finally:
        writer.wait(30)
    final = reader.read_batch(0, 1000000)
    reader.rest()
    print(f"FIGURE {reads} reads while a writer came and went, {problems} said locked, {len(final)} rows")
    assert [row[0] for row in final] == list(range(1, len(final) + 1)) and reads > 10


def test_a_file_replaced_between_two_batches_of_a_read_is_not_taken_for_its_continuation(tmp_path):
    # A restore or a sync tool replaces the file mid-drain: the next batch must not read the new file on
    # from the old position (the drain's identity check, at its start, decides what the new file is).
    db = wal_database(tmp_path, rows=[("2026-01-01T00:00:00", "file_open", "history-a")] * 20)
    other = create_db(tmp_path / "other" / "memory_data.db")
    insert_events(other, [("2026-01-02T00:00:00", "file_open", "history-b")] * 40)
    reader = EventReader(db)
    assert {row[3] for row in reader.read_batch(0, 10)} == {"history-a"}
    os.replace(other, db)
    try:
        second = reader.read_batch(10, 10)
    except Unavailable as problem:
        assert "replaced while it was read" in str(problem)
    else:
        assert {row[3] for row in second} == {"history-a"}, second  # the old file, kept open, is fine too
    reader.close()
