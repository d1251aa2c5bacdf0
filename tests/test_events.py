"""Reading the memory daemon's database: real SQLite files, real writers."""

import datetime as dt
import hashlib
import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import SCHEMA_ROWID, create_db, insert_events

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.events import EventReader, Unavailable, parse_timestamp, validate_rows

PAIRS = command_pairs(DEFAULT_EVENT_MAP)


def test_timestamp_forms():
    naive = dt.datetime(2025, 11, 8, 5, 0, 0)
    assert parse_timestamp(naive.isoformat()) == pytest.approx(naive.timestamp())  # local time
    assert parse_timestamp("2025-11-08T05:00:00+00:00") == 1762578000.0
    assert parse_timestamp("2025-11-08T05:00:00Z") == 1762578000.0
    assert parse_timestamp("2025-11-08T06:00:00.250000+01:00") == 1762578000.25
    assert parse_timestamp(1762578000) == 1762578000.0
    assert parse_timestamp(1762578000.5) == 1762578000.5
    assert parse_timestamp(1762578000123) == pytest.approx(1762578000.123)  # milliseconds
    assert parse_timestamp("1762578000") == 1762578000.0
    for bad in (
        None,
        "",
        "  ",
        "yesterday",
        "2025-13-40T99:00:00",
        float("nan"),
        float("inf"),
        -5,
        0,
        True,
        b"2025-11-08",
        1e20,
        "9999999999999999999999",
        [1],
    ):
        assert parse_timestamp(bad) is None, bad


def test_validate_rows_counts_every_kind_of_bad_row():
    rows = [
        (1, "2025-11-08T05:00:00", "file_open", "s1"),
        (2, None, "file_open", "s1"),
        (3, "2025-11-08T05:00:00", None, "s1"),
        (4, "2025-11-08T05:00:00", "", "s1"),
        (5, "2025-11-08T05:00:00", 42, "s1"),
        (6, "garbage", "file_open", "s1"),
        (7, "2025-11-08T05:00:00", "file_open", None),
        (8, "2025-11-08T05:00:00", "file_open", ""),
        (9, "2025-11-08T05:00:00", "file_open", "x" * 10000),
        (10, "2025-11-08T05:00:00", "file_open", 12345),
        (11, "2025-11-08T05:00:00", "file_open", b"\xff\xfe"),
        (12, 1762578000, "file_save", "s2"),
        (13, "garbage", "window_focus", None),  # another type: ignored, not parsed
    ]
    events, ignored, bad = validate_rows(rows, PAIRS)
    assert bad == 6 and ignored == 1
    assert [(e[0], e[1]) for e in events] == [
        (1, "s1"),
        (7, "default"),
        (8, "default"),
        (10, "12345"),
        (11, "\ufffd\ufffd"),
        (12, "s2"),
    ]


@pytest.mark.parametrize("wal", [True, False])
@pytest.mark.parametrize("schema", [None, SCHEMA_ROWID])
def test_reads_in_batches_from_both_schemas_and_journal_modes(tmp_path, wal, schema):
    db = create_db(tmp_path / "m.db", wal=wal, **({"schema": schema} if schema else {}))
    insert_events(db, [(f"2025-11-08T05:{i // 60:02d}:{i % 60:02d}", "file_open", "s") for i in range(2500)])
    reader = EventReader(db)
    rowids, after = [], 0
    while True:
        rows = reader.read_batch(after, 1000)
        if not rows:
            break
        assert len(rows) <= 1000
        rowids += [r[0] for r in rows]
        after = rows[-1][0]
    assert rowids == list(range(1, 2501))
    assert reader.head() == 2500
    reader.close()


def test_reader_never_writes_or_creates_the_database(tmp_path):
    missing = tmp_path / "not-yet.db"
    reader = EventReader(missing)
    with pytest.raises(Unavailable) as raised:
        reader.read_batch(0, 10)
    assert raised.value.kind == "missing" and not missing.exists()
    db = create_db(tmp_path / "m.db", wal=False)
    insert_events(db, [("2025-11-08T05:00:00", "file_open", "s")] * 10)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    reader = EventReader(db)
    assert len(reader.read_batch(0, 100)) == 10
    reader.changed()
    reader.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.db"]


def test_missing_table_then_created(tmp_path):
    path = tmp_path / "m.db"
    sqlite3.connect(str(path)).close()
    reader = EventReader(path)
    with pytest.raises(Unavailable) as raised:
        reader.read_batch(0, 10)
    assert raised.value.kind == "no-table"
    create_db(path)
    insert_events(path, [("2025-11-08T05:00:00", "file_open", "s")])
    assert len(reader.read_batch(0, 10)) == 1


def test_non_utf8_text_is_read_not_fatal(tmp_path):
    db = create_db(tmp_path / "m.db")
    conn = sqlite3.connect(str(db))
    conn.execute(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, CAST(? AS TEXT))",
        ("2025-11-08T05:00:00", "file_open", b"\xff\xfebad"),
    )
    conn.execute(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)",
        ("2025-11-08T05:00:01", "file_save", "good"),
    )
    conn.execute(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, CAST(? AS TEXT))",
        ("2025-11-08T05:00:02", "file_open", b"\xff\xfdbad"),
    )
    conn.commit()
    conn.close()
    reader = EventReader(db)
    rows = reader.read_batch(0, 10)
    events, _, bad = validate_rows(rows, PAIRS)
    assert len(rows) == 3 and bad == 0
    # Ids that differ only in bytes that are not UTF-8 stay two ids, as valid text.
    assert [event[1] for event in events] == ["\\xff\\xfebad", "good", "\\xff\\xfdbad"]
    assert all(event[1].encode("utf-8") for event in events)
    # The fast decoder is back for the next batch.
    assert reader._connection.text_factory is str


def test_data_version_and_replacement_are_noticed(tmp_path):
    db = create_db(tmp_path / "m.db")
    reader = EventReader(db)
    reader.read_batch(0, 10)
    assert reader.changed() is False  # nothing committed since the read
    assert reader.changed() is False
    insert_events(db, [("2025-11-08T05:00:00", "file_open", "s")])
    assert reader.changed() is True
    assert reader.changed() is False
    replacement = create_db(tmp_path / "new.db")
    os.replace(replacement, db)
    assert reader.replaced() is True and reader.changed() is True


def test_no_read_transaction_is_held_between_batches(tmp_path):
    db = create_db(tmp_path / "m.db")
    insert_events(db, [("2025-11-08T05:00:00", "file_open", "s")] * 3000)
    reader = EventReader(db)
    reader.read_batch(0, 1000)
    reader.changed()
    # A full TRUNCATE checkpoint needs every reader out of its transaction.
    writer = sqlite3.connect(str(db))
    busy, log_frames, checkpointed = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0 and log_frames == checkpointed
    assert os.path.getsize(str(db) + "-wal") == 0
    writer.close()


LOCK_HOLDER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT INTO events (timestamp, event_type, session_id) VALUES ('2025-11-08T05:00:00', 'file_open', 's')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_a_writer_holding_the_lock_is_retried_not_fatal(tmp_path):
    db = create_db(tmp_path / "m.db", wal=False)  # rollback journal: readers see the lock
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    reader = EventReader(db, busy_timeout=0.05)
    with pytest.raises(Unavailable) as raised:
        reader.read_batch(0, 10)
    assert raised.value.kind == "locked"
    holder.wait(10)
    assert len(reader.read_batch(0, 10)) == 1


def test_corrupt_database_is_a_clear_error(tmp_path):
    path = tmp_path / "m.db"
    path.write_bytes(b"this is not a database" * 200)
    reader = EventReader(path)
    with pytest.raises(Unavailable) as raised:
        reader.read_batch(0, 10)
    assert raised.value.kind == "corrupt" and str(path) in str(raised.value)
