"""Where a catch-up's CPU time goes, stage by stage, best of N runs in one process.

    PYTHONPATH=$PWD python3 bench/catch_up_stages.py [--runs 8] [--events 200000] [--profile]

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
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        db = work / "catchup.db"
        run.generate(db, options.events, 1000)
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
        if options.profile:
            profile = cProfile.Profile()
            profile.enable()
            run.catch_up(db, work)
            profile.disable()
            total = sum(entry[2] for entry in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
            print(f"under cProfile: {total:.3f} s of own time in all functions")


if __name__ == "__main__":
    main()
