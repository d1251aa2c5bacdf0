"""The per-event hot path of a catch-up alone: validate_rows + SessionTracker.feed, no SQLite.

    PYTHONPATH=$PWD python3 bench/hot_path.py [EVENTS] [REPEATS]

Rows are read once from a generated database (bench/gen.py, 1,000 ids), then validated and fed in
batches of 1,000 REPEATS times; the minimum is printed, as ns a row, which on a shared machine is
far steadier than the end-to-end catch-up ratio.  Works against older trees too (it adapts to the
signatures of validate_rows and feed), so a before/after compares like with like.
"""

import inspect
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen import generate

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.core.sessions import SessionTracker
from omnimemory_learner.events import validate_rows


def main():
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    with tempfile.TemporaryDirectory() as temporary:
        db = Path(temporary) / "hot.db"
        generate(db, events, 1000)
        connection = sqlite3.connect(str(db))
        rows = connection.execute(
            "SELECT rowid, timestamp, event_type, session_id FROM events ORDER BY rowid"
        ).fetchall()
        connection.close()
    pairs = command_pairs(DEFAULT_EVENT_MAP)
    with_context = "context" in inspect.signature(validate_rows).parameters
    with_backlog = "backlog" in inspect.signature(SessionTracker.feed).parameters
    best_validate = best_feed = float("inf")
    for _ in range(repeats):
        tracker = SessionTracker(300.0)
        extra = ()
        if with_context:
            from omnimemory_learner.events import LocalTimeContext

            extra = (LocalTimeContext(),)
        validating = feeding = 0.0
        for start in range(0, len(rows), 1000):
            batch = rows[start : start + 1000]
            began = time.perf_counter()
            mapped = validate_rows(batch, pairs, *extra)[0]
            validated = time.perf_counter()
            if with_backlog:
                tracker.feed(mapped, 0.0, True)
            else:
                tracker.feed(mapped, 0.0)
            validating += validated - began
            feeding += time.perf_counter() - validated
        best_validate = min(best_validate, validating)
        best_feed = min(best_feed, feeding)
    per_row = 1e9 / len(rows)
    print(
        f"{len(rows):,} rows, best of {repeats}: validate {best_validate * per_row:.0f} ns/row, "
        f"feed {best_feed * per_row:.0f} ns/row, together {(best_validate + best_feed) * per_row:.0f} ns/row"
    )


if __name__ == "__main__":
    main()
