"""Generate a realistic memory-daemon database for benchmarks.

N events over M session ids, written in WAL mode like the daemon: bursts of
activity per session with short gaps inside a burst and long idle gaps
between bursts, 10-20% of event types the learner does not map, and a
configurable share of malformed rows.
"""

import argparse
import datetime as dt
import random
import sqlite3
from pathlib import Path

MAPPED = [
    "file_open",
    "file_save",
    "file_create",
    "file_delete",
    "file_modify",
    "process_start",
    "process_end",
    "editor_open",
    "editor_close",
    "code_edit",
    "test_run",
    "build_start",
    "git_commit",
    "git_push",
    "git_pull",
]
UNMAPPED = ["window_focus", "clipboard_copy", "mouse_idle", "terminal_resize"]
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT,"
    " event_type TEXT, session_id TEXT, payload BLOB)"
)


def generate(
    path,
    events,
    sessions,
    bad_share=0.01,
    unmapped_share=0.15,
    seed=1,
    start=None,
    open_at_end=False,
    idle_seconds=300.0,
    longest=23,
):
    """Write the database; returns the number of rows.

    open_at_end: every session's last burst ends within the idle threshold of
    the newest event, so all of them are still open after reading.
    """
    rng = random.Random(seed)
    path = Path(path)
    if path.exists():
        path.unlink()
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(SCHEMA)
    t = start if start is not None else 1_760_000_000.0
    ids = [f"session-{k:06d}" for k in range(sessions)]
    payload = b"\x00" * 64  # stands for the encrypted payload the learner never reads
    batch = []
    written = 0
    # A few sessions are active at once; each is a burst of ~12 events a few
    # seconds apart; ids are taken round-robin, so an id comes back after the
    # others had their turn.
    concurrency = min(sessions, 4)
    active = {}
    next_id = 0
    while written < events:
        if open_at_end:
            sid = ids[written % sessions]  # every id touched within a short span
            t += rng.uniform(0.0005, 0.002)
        else:
            while len(active) < concurrency:
                active[ids[next_id % sessions]] = rng.randint(1, longest)
                next_id += 1
            sid = rng.choice(list(active))
            active[sid] -= 1
            if active[sid] <= 0:
                del active[sid]
            t += rng.uniform(0.5, 10.0)
        if rng.random() < bad_share:
            row = (rng.choice([None, "", "not a time", "2025-13-45T99:99:99"]), rng.choice(MAPPED), sid)
        else:
            kind = rng.choice(UNMAPPED) if rng.random() < unmapped_share else rng.choice(MAPPED)
            row = (dt.datetime.fromtimestamp(t).isoformat(), kind, sid)
        batch.append((*row, payload))
        written += 1
        if len(batch) >= 50_000:
            db.executemany("INSERT INTO events (timestamp, event_type, session_id, payload) VALUES (?,?,?,?)", batch)
            batch.clear()
    if batch:
        db.executemany("INSERT INTO events (timestamp, event_type, session_id, payload) VALUES (?,?,?,?)", batch)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--bad-share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(generate(args.path, args.events, args.sessions, args.bad_share, seed=args.seed))


if __name__ == "__main__":
    main()
