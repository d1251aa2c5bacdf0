"""Where a catch-up's time goes, stage by stage (wall clock, no profiler).

    python3 bench/stages.py [EVENTS]

Generates a database of EVENTS (default 300,000) in a temporary directory,
times the bare sqlite3 loop, then a catch-up to the outbox with each stage
of the pipeline wrapped in a timer, and prints nanoseconds per event.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen import generate
from run import bare_loop, catch_up

import omnimemory_learner.pipeline as pipeline_module
from omnimemory_learner.core.sessions import SessionTracker
from omnimemory_learner.events import EventReader
from omnimemory_learner.storage.state import StateStore

spent = {}


def timed(name, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def main():
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        db = work / "events.db"
        generate(db, events, 1000)
        pipeline_module.validate_rows = timed("validate and map", pipeline_module.validate_rows)
        EventReader.read_batch = timed("read (fetchall)", EventReader.read_batch)
        SessionTracker.feed = timed("sessions (feed)", SessionTracker.feed)
        StateStore.commit = timed("outbox commit", StateStore.commit)
        bare = bare_loop(db)
        result = catch_up(db, work)
    rows = result["rows"]
    print(
        f"{rows:,} events; bare sqlite3 loop {1e9 / bare:,.0f} ns/event; "
        f"catch-up {1e9 * result['seconds'] / rows:,.0f} ns/event (ratio {result['rate'] / bare:.2f})"
    )
    for name, seconds in spent.items():
        print(f"  {name:18s} {1e9 * seconds / rows:6,.0f} ns/event")


if __name__ == "__main__":
    main()
