"""A memory-daemon stand-in: writes activity events to a real SQLite file over time.

usage: writer.py DB SEED SESSIONS [--idle SECONDS]
Bursts of events per session id, with gaps far below the idle threshold inside
a burst and far above it between two bursts of the same id, so that the true
sessions are unambiguous.
"""

import datetime as dt
import random
import sqlite3
import sys
import time

TYPES = ["file_open", "code_edit", "file_save", "test_run", "git_commit", "file_delete", "mouse_move"]


def main():
    path, seed, sessions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    idle = float(sys.argv[sys.argv.index("--idle") + 1]) if "--idle" in sys.argv else 1.2
    synchronous = sys.argv[sys.argv.index("--sync") + 1] if "--sync" in sys.argv else "NORMAL"
    rng = random.Random(seed)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT,"
        " event_type TEXT, session_id TEXT, payload BLOB)"
    )
    # Each id gets bursts; bursts of one id are 2.5 idle thresholds apart.
    ids = [f"w{seed}-{k}" for k in range(max(1, sessions // 2))]
    next_allowed = dict.fromkeys(ids, 0.0)
    written = 0
    for _ in range(sessions):
        now = time.monotonic()
        ready = [sid for sid in ids if next_allowed[sid] <= now]
        if not ready:
            time.sleep(max(0.0, min(next_allowed.values()) - now))
            continue
        sid = rng.choice(ready)
        for _ in range(rng.randint(1, 7)):
            db.execute(
                "INSERT INTO events (timestamp, event_type, session_id, payload) VALUES (?, ?, ?, ?)",
                (dt.datetime.now().isoformat(), rng.choice(TYPES), sid, b"secret-payload"),
            )
            written += 1
            time.sleep(rng.uniform(0.0, 0.03))
        next_allowed[sid] = time.monotonic() + 2.5 * idle
    db.close()
    print(written, flush=True)


if __name__ == "__main__":
    main()
