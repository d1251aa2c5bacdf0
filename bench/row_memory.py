"""Memory and time of reading rows with huge fields (issue 24, item 14).

    PYTHONPATH=$PWD python3 bench/row_memory.py [ROWS] [MEGABYTES] [FIELD]

ROWS rows (100) whose FIELD (event_type, session_id or timestamp) is MEGABYTES (10) of text,
then 1,000 ordinary rows, read as the pipeline reads them (EventReader.read_batch in batches
of 1,000, then validate_rows) in a fresh process; prints that process's peak RSS (VmHWM)
before and after reading, and the time of reading 200,000 ordinary rows (what bounding the
fields in SQL costs a catch-up).  Works against older trees too: run it with PYTHONPATH set to
one, then to the other.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

READ = r"""
import sys, time
from pathlib import Path
from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.events import EventReader, validate_rows

def peak_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

before = peak_mb()
reader = EventReader(Path(sys.argv[1]))
pairs = command_pairs(DEFAULT_EVENT_MAP)
after, totals = 0, [0, 0, 0]
began = time.perf_counter()
while True:
    rows = reader.read_batch(after, 1000)
    if not rows:
        break
    events, ignored, bad = validate_rows(rows, pairs)
    totals[0] += len(events); totals[1] += ignored; totals[2] += bad
    after = rows[-1][0]
    del rows, events
seconds = time.perf_counter() - began
getattr(reader, "rest", reader.close)()
print(f"{before:.1f} {peak_mb():.1f} {seconds:.3f} {totals[0]} {totals[1]} {totals[2]}")
"""


def build(path, rows, megabytes, field):
    import sqlite3

    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT, event_type TEXT,"
        " session_id TEXT, payload BLOB)"
    )
    size = megabytes * 1024 * 1024
    values = {"timestamp": "'2025-11-08T05:00:00'", "event_type": "'window_focus'", "session_id": "'s'"}
    # The huge text is made by SQLite, not held by this process.
    values[field] = f"substr(hex(zeroblob({size // 2 + 1})), 1, {size})"
    for _ in range(rows):
        db.execute(
            "INSERT INTO events (timestamp, event_type, session_id)"
            f" VALUES ({values['timestamp']}, {values['event_type']}, {values['session_id']})"
        )
        db.commit()
    db.executemany(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES ('2025-11-08T05:00:01', 'file_open', 's')",
        [()] * 1000,
    )
    db.commit()
    db.close()


def read(path):
    out = subprocess.run(
        [sys.executable, "-c", READ, str(path)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=str(path.parent),  # not the tree this file is in: PYTHONPATH says which
        check=True,
    ).stdout.split()
    before, peak, seconds = float(out[0]), float(out[1]), float(out[2])
    return before, peak, seconds, tuple(int(x) for x in out[3:])


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    megabytes = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    field = sys.argv[3] if len(sys.argv) > 3 else "event_type"
    with tempfile.TemporaryDirectory() as temporary:
        huge = Path(temporary) / "huge.db"
        build(huge, rows, megabytes, field)
        before, peak, _, counts = read(huge)
        print(
            f"{rows} rows with a {megabytes} MB {field}, then 1,000 ordinary rows: peak RSS {before:.0f} MB before"
            f" reading, {peak:.0f} MB after (+{peak - before:.0f} MB); events, ignored, malformed: {counts}"
        )
        huge.unlink()
        from gen import generate

        plain = Path(temporary) / "plain.db"
        generate(plain, 200_000, 1000)
        best = min(read(plain)[2] for _ in range(5))
        print(f"200,000 ordinary rows read and validated in batches of 1,000: {best:.3f} s (best of 5)")


if __name__ == "__main__":
    main()
