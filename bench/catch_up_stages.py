"""Where a catch-up's CPU time goes, stage by stage, best of N runs in one process.

    PYTHONPATH=$PWD python3 bench/catch_up_stages.py [--runs 8] [--events 200000] [--shape S] [--profile]

--shape: `default` (bench/run.py's: bursts of 1-23 events over 1,000 ids),
`short` (1-40 events over 5,000 ids, as desktops make them), `one-per-id`
(every session an id of its own) or `long` (bursts of up to 1,000 events):
per-session costs show in CPU per session, which long sessions hide.

CPU time (time.process_time), not wall time: on a shared machine the wall-clock
ratio to the bare loop (bench/run.py) swings by a third between runs, while
the CPU a stage takes moves little.  Run it on two commits (a worktree each)
to compare them.  --profile adds the catch-up's total under cProfile, which
counts calls and so does not depend on the machine's load at all.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py: the generator, and the catch-up as the benchmark runs it

from omnimemory_learner import pipeline as pipeline_module
from omnimemory_learner.storage.state import StateStore

# shape: (ids, longest burst); one-per-id has as many ids as sessions can be (a session each).
SHAPES = {"default": (1000, 23), "short": (5000, 40), "one-per-id": (None, 40), "long": (100, 1000)}

STAGES = {  # label: (owner, attribute)
    "read": (pipeline_module.EventReader, "read_batch"),
    "validate": (pipeline_module, "validate_rows"),
    "feed": (pipeline_module.SessionTracker, "feed"),
    "commit": (pipeline_module.Pipeline, "commit"),
    "state.commit": (pipeline_module.StateStore, "commit"),
}


def timed(totals, label, function):
    def wrapper(*args, **kwargs):
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label] += time.process_time() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    ids, longest = SHAPES[options.shape]
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        db = work / "catchup.db"
        run.generate(db, options.events, ids or options.events, longest=longest)
        totals: collections.Counter = collections.Counter()
        for label, (owner, name) in STAGES.items():
            setattr(owner, name, timed(totals, label, getattr(owner, name)))
        best = None
        for _ in range(options.runs):
            totals.clear()
            started = time.process_time()
            run.catch_up(db, work)
            figures = dict(totals, total=time.process_time() - started)
            if best is None or figures["total"] < best["total"]:
                best = figures
        print("CPU seconds, best of", options.runs, {label: round(value, 3) for label, value in sorted(best.items())})
        store = StateStore(work / "state")
        sessions = store.counters().get("sessions_created", 0)
        store.close()
        assert best is not None
        per = {label: round(value / options.events * 1e6, 2) for label, value in sorted(best.items())}
        print(f"{options.shape}: {options.events} events, {sessions} sessions; CPU per event (us): {per}")
        if sessions:
            print(f"CPU per session (us): {round(best['total'] / sessions * 1e6, 1)}")
        if options.profile:
            profile = cProfile.Profile()
            profile.enable()
            run.catch_up(db, work)
            profile.disable()
            total = sum(entry[2] for entry in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
            print(f"under cProfile: {total:.3f} s of own time in all functions")


if __name__ == "__main__":
    main()
