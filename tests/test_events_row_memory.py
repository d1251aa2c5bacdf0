"""Memory per row is bounded whatever the rows hold (issue 24, item 14).

Reading is measured in a fresh process (its peak RSS, VmHWM), as the pipeline
reads: EventReader.read_batch in batches of 1,000, then validate_rows.  A field
too long to be an event's is never fetched whole (a batch of them cost the
batch times the field: 100 rows of 10 MB, 1 GB); its row is malformed, wherever
it falls in a batch.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from helpers import ROOT, create_db

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.events import MAX_FIELD_LENGTH, EventReader, validate_rows

MB = 1024 * 1024

READ = r"""
import sys
from pathlib import Path
from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.events import EventReader, validate_rows

def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))

before = peak_mb()
reader = EventReader(Path(sys.argv[1]))
pairs = command_pairs(DEFAULT_EVENT_MAP)
after, counts = 0, [0, 0, 0]
while True:
    rows = reader.read_batch(after, 1000)
    if not rows:
        break
    events, ignored, bad = validate_rows(rows, pairs)
    counts = [counts[0] + len(events), counts[1] + ignored, counts[2] + bad]
    after = rows[-1][0]
    del rows, events
print(peak_mb() - before, *counts)
"""


def huge(megabytes):
    """SQL for a text of `megabytes` MB, made by SQLite (the test process never holds it)."""
    return f"substr(hex(zeroblob({megabytes * MB // 2 + 1})), 1, {megabytes * MB})"


def insert(db, values, count=1):
    connection = sqlite3.connect(str(db))
    for _ in range(count):
        connection.execute(f"INSERT INTO events (timestamp, event_type, session_id) VALUES ({values})")
    connection.commit()
    connection.close()


ORDINARY = "'2025-11-08T05:00:01', 'file_open', 's'"


def read_in_a_new_process(db):
    out = subprocess.run(
        [sys.executable, "-c", READ, str(db)],
        capture_output=True,
        text=True,
        cwd=str(db.parent),
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout.split()
    return float(out[0]), tuple(int(x) for x in out[1:])


def test_a_batch_of_rows_with_a_10_mb_event_type_costs_a_row_not_the_batch(tmp_path):
    db = create_db(tmp_path / "m.db")
    insert(db, ORDINARY)
    insert(db, f"'2025-11-08T05:00:02', {huge(10)}, 's'", count=20)
    insert(db, ORDINARY, count=5)
    grown, counts = read_in_a_new_process(db)
    print(f"FIGURE 20 rows with a 10 MB event_type in one batch: peak RSS +{grown:.0f} MB")
    # Before: +212 MB (every row fetched whole), and the rows counted as another type.
    assert grown < 25, grown
    assert counts == (6, 0, 20)


@pytest.mark.parametrize("where", ["inside a batch", "last of a batch"])
def test_a_row_of_50_mb_costs_that_row_once(tmp_path, where):
    db = create_db(tmp_path / "m.db")
    insert(db, ORDINARY, count=10)
    insert(db, f"'2025-11-08T05:00:02', 'file_save', {huge(50)}")
    if where == "inside a batch":
        insert(db, ORDINARY, count=10)
    grown, counts = read_in_a_new_process(db)
    print(f"FIGURE a 50 MB session id {where}: peak RSS +{grown:.0f} MB")
    # Before: +102 MB either way.  The last row of a batch is fetched whole, as
    # fingerprint_rows reads it (the fingerprint of the last row read): SQLite's
    # copy and Python's.  Inside a batch only SQLite measures it.
    assert grown < (60 if where == "inside a batch" else 110), grown
    assert counts == (20 if where == "inside a batch" else 10, 0, 1)


@pytest.mark.parametrize("field", ["timestamp", "event_type", "session_id"])
@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_a_field_too_long_makes_its_row_malformed_wherever_it_falls(tmp_path, field, position):
    """Fetched whole (the ends of a batch) or not, the row is judged the same."""
    db = create_db(tmp_path / "m.db")
    long_text = "'" + "7" * (MAX_FIELD_LENGTH + 1) + "'"
    values = {"timestamp": "'2025-11-08T05:00:02'", "event_type": "'file_save'", "session_id": "'s'"}
    values[field] = long_text
    row = ", ".join(values[name] for name in ("timestamp", "event_type", "session_id"))
    if position != "first":
        insert(db, ORDINARY, count=3)
    insert(db, row)
    if position != "last":
        insert(db, ORDINARY, count=3)
    reader = EventReader(db)
    rows = reader.read_batch(0, 1000)
    reader.rest()
    events, ignored, bad = validate_rows(rows, command_pairs(DEFAULT_EVENT_MAP))
    assert (len(events), ignored, bad) == (len(rows) - 1, 0, 1)
    # Just under the limit, an unknown type is another type, not malformed.
    assert validate_rows([(1, "2025-11-08T05:00:02", "x" * MAX_FIELD_LENGTH, "s")], {})[1:] == (1, 0)
