"""The table changes under a drain, or in ways one fingerprint cannot tell apart (issue 24, item 3: the review's finds).

Each test writes a real SQLite file, changes it as a retention job, a forget
or a writer would, and runs the real pipeline; the committed sessions are
compared with what the stream holds.  Each failed before its fix:

- a retention with VACUUM between two batches of one drain, or between the
  drain's check and its first batch: the batches after it were read in the
  new numbering from the old position, rows skipped;
- a row like the last one read (same time, type and id) written after the
  renumbering: taken for the last row read, the rows before it skipped;
- the newest rows of an open session deleted and a row written after them
  before the next read: the delete went unseen, and a restart before the
  session ended lost it;
- a renumbering while a rewritten history is read again: the rewrite head
  stayed in the old numbering, and new rows under it were taken for rows
  that may have been sent before.
"""

import sqlite3
import time

from helpers import SCHEMA_ID, SCHEMA_ROWID
from test_renumbered_property import IDLE, Run, committed, delete_oldest

from omnimemory_learner.pipeline import Pipeline

LATER = IDLE * 10  # processing time past every session's idle threshold


def lengths(run):
    found, replaced = committed(run.config.state_dir)
    return sorted((session_id, len(commands)) for session_id, commands in found), replaced


def settled(run, now):
    """Every session closed by processing time and committed (nothing open)."""
    assert run.pipeline.drain()
    now[0] += LATER
    assert run.pipeline.close_idle() and not run.pipeline.tracker.open_count
    assert run.pipeline.commit()


def finish(run):
    assert run.pipeline.drain()
    run.pipeline.close_all()
    assert run.pipeline.commit()
    run.pipeline.close()


def raw_insert(db, rows):
    conn = sqlite3.connect(str(db))
    conn.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows)
    conn.commit()
    conn.close()


def last_row(db):
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(
            "SELECT timestamp, event_type, session_id FROM events ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()


def test_a_retention_between_two_batches_of_one_drain_skips_no_row(tmp_path):
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])  # three rows a batch
    run.add([("a", 1.0)] * 3)
    settled(run, now)
    run.add([("b", 1.0)] * 9)
    retained = []

    def retention_once():
        if not retained:
            retained.append(True)
            delete_oldest(run.db, 3)  # a's rows: b's move from 4-12 to 1-9 after its first batch was read

    assert run.pipeline.drain(between_batches=retention_once)
    assert retained
    finish(run)
    found, replaced = lengths(run)
    assert found == [("a", 3), ("b", 9)], found
    assert replaced["verdict"] == "renumbered", replaced


def test_a_retention_between_the_drains_check_and_its_first_batch_skips_no_row(tmp_path):
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])
    run.add([("a", 1.0)] * 3)
    settled(run, now)
    run.add([("b", 1.0)] * 2)
    assert run.pipeline.drain()  # b open, read to rowid 5
    run.add([("b", 1.0)] * 4)  # rowids 6-9, 3-6 once renumbered: past the position, read as if new
    identity = run.pipeline.identity
    check = identity.check

    def check_then_retain(reader, read_after):
        finding = check(reader, read_after)  # SAME: nothing had changed yet
        identity.check = check
        delete_oldest(run.db, 3)
        return finding

    identity.check = check_then_retain
    assert run.pipeline.drain()
    finish(run)
    found, replaced = lengths(run)
    assert found == [("a", 3), ("b", 6)], found
    assert replaced["verdict"] == "renumbered", replaced


def test_a_row_like_the_last_one_read_written_after_a_renumbering_is_not_taken_for_it(tmp_path):
    """Nothing open: the row before the last one read tells which of the two rows like it is the one read."""
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])
    run.add([("a", 1.0)] * 3)
    run.add([("b", 1.0)] * 3)
    settled(run, now)  # rows 1-6 read, both sessions committed
    twin = last_row(run.db)
    delete_oldest(run.db, 3)  # a's rows: b's now 1-3
    raw_insert(run.db, [(repr(time.time()), "test_run", "c"), twin])  # rowids 4 and 5: 5 is like the last row read
    finish(run)
    found, replaced = lengths(run)
    # b's twin is a new session of one event (b was closed); before, rowid 4 (c) was skipped as read.
    assert found == [("a", 3), ("b", 1), ("b", 3), ("c", 1)], found
    assert replaced["verdict"] == "renumbered", replaced


def test_rows_like_the_last_one_read_that_nothing_tells_apart_make_a_rewrite_that_loses_nothing(tmp_path):
    """The row before the last one read is gone too: two candidates, no anchor to choose; the ledger decides."""
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])
    run.add([("a", 1.0)] * 3)
    run.add([("b", 1.0)])
    settled(run, now)  # rows 1-4 read
    twin = last_row(run.db)
    delete_oldest(run.db, 3)  # a's rows and the row before b's: b's now rowid 1
    raw_insert(run.db, [(repr(time.time()), "test_run", "c"), twin])
    finish(run)
    found, replaced = lengths(run)
    assert replaced["verdict"] == "rewritten", replaced
    # Nothing lost, a not sent again (the ledger).  The twin joins b by time: b read again with two
    # events is not what was sent, and is sent: the rewrite's limit, which the anchor avoids when it can.
    assert found == [("a", 3), ("b", 1), ("b", 2), ("c", 1)], found


def test_an_open_sessions_newest_rows_deleted_then_a_row_written_is_seen_as_a_delete(tmp_path):
    """AUTOINCREMENT; the learner restarts before the session ends: it is committed once, as read."""
    run = Run(tmp_path, SCHEMA_ID)
    run.add([("a", 1.0)] * 3)
    assert run.pipeline.drain()  # a open with rows 1-3
    conn = sqlite3.connect(str(run.db))
    conn.execute("DELETE FROM events WHERE session_id = 'a'")  # a forget
    conn.commit()
    conn.close()
    run.add([("b", 1.0)])  # rowid 4: the head is above the last row read
    assert run.pipeline.drain()
    assert run.pipeline.commit()
    run.restart()
    finish(run)
    found, _ = lengths(run)
    # Before: the delete unseen, a stayed open; the restart replayed rows 1-3, gone, and lost it.
    assert found == [("a", 3), ("b", 1)], found


def test_a_renumbering_while_a_rewritten_history_is_read_again_moves_the_rewrite_head_with_it(tmp_path):
    """New rows whose events are older than the history's horizon (an import) are not taken for rows read before."""
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])
    run.add([("a", 1.0)] * 3)
    settled(run, now)
    conn = sqlite3.connect(str(run.db))
    conn.execute("DELETE FROM events")  # a new history: rows 1-10 of other sessions
    conn.commit()
    conn.close()
    run.add([("b", 1.0)] * 3 + [("c", 1.0)] * 6 + [("b", IDLE + 5)])
    assert run.pipeline.drain()  # rewritten: read again from its start; b's first closed, c and b's second open
    assert run.pipeline.commit() and run.pipeline.identity.rewrite_head == 10
    delete_oldest(run.db, 3)  # b's first session's rows: the others move 3 down, the rewrite's rows end at 7
    run.clock["d"] = time.time() - 400 * 86400.0  # past any history_days
    run.add([("d", 1.0)] * 3)  # rowids 8-10: new rows, above the rewrite's
    assert run.pipeline.drain()
    assert run.pipeline.identity.rewrite_head == 7
    finish(run)
    found, replaced = lengths(run)
    # Before: the head stayed at 10, d's session was taken for one read before, past the horizon: not sent.
    assert found == [("a", 3), ("b", 1), ("b", 3), ("c", 6), ("d", 3)], found
    assert replaced["verdict"] == "renumbered", replaced


def test_a_restart_after_a_renumbering_of_nothing_open_reads_on(tmp_path):
    """The anchor below the last row read survives a restart (it is in the fingerprint)."""
    now = [0.0]
    run = Run(tmp_path, SCHEMA_ROWID, clock=lambda: now[0])
    run.add([("a", 1.0)] * 3 + [("b", 1.0)] * 2)
    settled(run, now)
    run.pipeline.close()
    delete_oldest(run.db, 3)
    raw_insert(run.db, [(repr(time.time()), "test_run", "c")])
    run.pipeline = Pipeline(run.config, clock=run.processing_clock)
    finish(run)
    found, replaced = lengths(run)
    assert found == [("a", 3), ("b", 2), ("c", 1)], found
    assert replaced["verdict"] == "renumbered", replaced
