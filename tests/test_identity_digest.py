"""The events database's fingerprint is a digest of fixed size, whatever its rows hold (issue 24, item 13).

A huge field at rowid 1 (a malformed row, skipped) once became the fingerprint
itself: compared at every drain, written at every commit.  Here the stored
fingerprint stays small, a check fetches no huge field, a fingerprint of the
older form (the row's repr, as state.db holds it from before) still compares,
and no field that is odd (not UTF-8, NULs, a blob, just over the limits) makes
the same file look rewritten after a restart.
"""

import json
import sqlite3
import time
import tracemalloc

import pytest
from helpers import create_db

from omnimemory_learner.config import load_config
from omnimemory_learner.core import row_digest
from omnimemory_learner.core.fates import Replacement
from omnimemory_learner.pipeline import Pipeline
from omnimemory_learner.storage.state import Fingerprint, StateStore


def config_for(work, db):
    return load_config(
        env={
            "HOME": str(work),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_LOG_FILE": str(work / "learner.log"),
        }
    )


def write(db, rows):
    """rows: (timestamp, event_type, session_id) with any SQLite values, in one transaction."""
    connection = sqlite3.connect(str(db))
    connection.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows)
    connection.commit()
    connection.close()


def stamp(offset=0.0):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + offset))


def events(n, sid="s", offset=-60.0):
    return [(stamp(offset + k), "file_open", sid) for k in range(n)]


def stored_fingerprint(work):
    connection = sqlite3.connect(str(work / "state" / "state.db"))
    try:
        return connection.execute("SELECT value FROM meta WHERE key = 'db_fingerprint'").fetchone()[0]
    finally:
        connection.close()


def test_a_huge_first_row_leaves_a_small_fingerprint_and_a_check_fetches_none_of_it(tmp_path):
    db = create_db(tmp_path / "memory_data.db")
    write(db, [(stamp(-120), "file_open", "x" * 5_000_000)])
    write(db, events(3))
    pipeline = Pipeline(config_for(tmp_path, db))
    try:
        pipeline.drain()
        pipeline.commit()
        # Before: the repr of the 5 MB id, about 5,000,100 characters.
        assert len(stored_fingerprint(tmp_path)) < 300
        write(db, events(1, offset=-1))
        tracemalloc.start()
        try:
            for _ in range(3):
                assert pipeline.identity.check(pipeline.reader, pipeline.read_after).verdict == Replacement.SAME
                pipeline.drain()
                pipeline.commit()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000, peak  # 9 KB; before: 21 MB (the id fetched, its repr made)
    finally:
        pipeline.close()


ODD_FIELDS = {
    "ascii over SUMMARY_BYTES": "x" * (row_digest.SUMMARY_BYTES + 1),
    "just over LONG_FIELD": "y" * (row_digest.LONG_FIELD + 1),
    "exactly LONG_FIELD": "z" * row_digest.LONG_FIELD,
    "two-byte characters, long in characters, short in bytes": "é" * (row_digest.LONG_FIELD + 10),
    "NULs inside a long text": "a\0b" * 3000,
    "a long blob": b"\x00\xff" * 5000,
}


@pytest.mark.parametrize("field", list(ODD_FIELDS.values()), ids=list(ODD_FIELDS))
@pytest.mark.parametrize("column", ["timestamp", "event_type", "session_id"])
def test_an_odd_field_at_rowid_1_is_the_same_row_after_a_restart(tmp_path, field, column):
    db = create_db(tmp_path / "memory_data.db")
    row = {"timestamp": stamp(-120), "event_type": "file_open", "session_id": "odd"}
    row[column] = field
    write(db, [(row["timestamp"], row["event_type"], row["session_id"])])
    write(db, events(3))
    config = config_for(tmp_path, db)
    pipeline = Pipeline(config)
    pipeline.drain()
    pipeline.close()
    pipeline = Pipeline(config)
    try:
        assert pipeline.identity.check(pipeline.reader, pipeline.read_after).verdict == Replacement.SAME
    finally:
        pipeline.close()


def test_text_that_is_not_utf8_at_rowid_1_is_the_same_row_after_a_restart(tmp_path):
    db = create_db(tmp_path / "memory_data.db")
    connection = sqlite3.connect(str(db))
    # 3,000 bytes that are not UTF-8, stored as text: 12,000 characters once decoded with escapes.
    connection.execute(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, 'file_open', CAST(? AS TEXT))",
        (stamp(-120), b"\xff" * 3000),
    )
    connection.commit()
    connection.close()
    write(db, events(3))
    config = config_for(tmp_path, db)
    pipeline = Pipeline(config)
    pipeline.drain()
    pipeline.close()
    pipeline = Pipeline(config)
    try:
        assert pipeline.identity.check(pipeline.reader, pipeline.read_after).verdict == Replacement.SAME
    finally:
        pipeline.close()


def test_a_rewrite_of_a_huge_rows_other_fields_is_still_seen(tmp_path):
    db = create_db(tmp_path / "memory_data.db")
    write(db, [(stamp(-120), "file_open", "x" * 100_000)])
    write(db, events(3))
    config = config_for(tmp_path, db)
    pipeline = Pipeline(config)
    pipeline.drain()
    pipeline.close()
    connection = sqlite3.connect(str(db))
    connection.execute("UPDATE events SET timestamp = ? WHERE rowid = 1", (stamp(-100),))
    connection.commit()
    connection.close()
    pipeline = Pipeline(config)
    try:
        finding = pipeline.identity.check(pipeline.reader, pipeline.read_after)
        assert finding.verdict == Replacement.REWRITTEN and "first row" in finding.why
    finally:
        pipeline.close()


def older_form(db, rowid):
    """The fingerprint text the code before digests stored: the repr of the row as the reader read it."""
    connection = sqlite3.connect(str(db))
    try:
        row = connection.execute(
            "SELECT rowid, timestamp, event_type, session_id FROM events WHERE rowid = ?", (rowid,)
        ).fetchone()
    finally:
        connection.close()
    return [rowid, repr(tuple(row))]


@pytest.mark.parametrize("rewritten", [False, True], ids=["same", "rewritten"])
def test_a_fingerprint_of_the_older_form_compares_and_is_kept_as_a_digest_from_then(tmp_path, rewritten):
    db = create_db(tmp_path / "memory_data.db")
    write(db, [(stamp(-120), "file_open", "x" * 20_000)])
    write(db, events(4))
    config = config_for(tmp_path, db)
    pipeline = Pipeline(config)
    pipeline.drain()
    pipeline.commit()
    position = pipeline.state.position()
    pipeline.close()
    # state.db as the version before left it: the same position, each row's repr.
    state = StateStore(config.state_dir)
    old = Fingerprint(older_form(db, 1), older_form(db, 5))
    state.commit(position._replace(fingerprint=old), [], {})
    state.close()
    assert json.loads(stored_fingerprint(tmp_path))["first"][1].startswith("(1, ")
    if rewritten:
        connection = sqlite3.connect(str(db))
        connection.execute("UPDATE events SET session_id = 'another' WHERE rowid = 5")
        connection.commit()
        connection.close()
    pipeline = Pipeline(config)
    try:
        if rewritten:
            finding = pipeline.identity.check(pipeline.reader, pipeline.read_after)
            assert finding.verdict == Replacement.REWRITTEN and "the last one read" in finding.why
            return
        pipeline.drain()
        pipeline.commit()
        assert pipeline.state.replaced() is None and pipeline.state.position().resume_after > 0
        kept = json.loads(stored_fingerprint(tmp_path))
        assert [entry[0] for entry in (kept["first"], kept["last"])] == [1, 5]
        assert all(row_digest.is_digest(entry[1]) and len(entry[1]) < 100 for entry in kept.values())
        assert pipeline.identity.check(pipeline.reader, pipeline.read_after) == (Replacement.SAME, "", False, (), None)
    finally:
        pipeline.close()
