"""What ten exclusion patterns cost a catch-up (issue 26): CPU per event with and without them.

    PYTHONPATH=$PWD python3 bench/privacy_cost.py [--runs 5] [--events 200000]

bench/run.py's generator (bursts of 1-23 events over 1,000 ids) and its
catch-up (every row read, every session closed and in the outbox, delivery
excluded), run alternately without rules, with ten patterns that match no id,
and with ten of which one excludes 5% of the ids; best of N, CPU time
(time.process_time), which moves less than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py: the generator and the configuration

from omnimemory_learner.pipeline import Pipeline

NONE_MATCH = [f"scratch-{n}-*" for n in range(10)]
SOME_MATCH = [*NONE_MATCH[:9], "session-0000[0-4]?"]  # ids session-000000 .. -000049: 5% of 1,000
CASES = {
    "no rules": "",
    "10 patterns, none matching": ",".join(NONE_MATCH),
    "10 patterns, 5% of ids": ",".join(SOME_MATCH),
}


def catch_up(db: Path, work: Path, patterns: str) -> float:
    shutil.rmtree(work / "state", ignore_errors=True)
    config = run.config_for(work, db, exclude_session_ids=patterns)
    pipeline = Pipeline(config, on_unsent=lambda sessions: True)
    started = time.process_time()
    pipeline.drain()
    pipeline.close_all()
    pipeline.commit()
    elapsed = time.process_time() - started
    pipeline.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=200_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        db = work / "catchup.db"
        run.generate(db, options.events, 1000)
        best = dict.fromkeys(CASES, float("inf"))
        for _ in range(options.runs):
            for case, patterns in CASES.items():
                best[case] = min(best[case], catch_up(db, work, patterns))
        for case, seconds in best.items():
            print(f"{case:<28} {seconds / options.events * 1e9:7.0f} ns CPU per event (best of {options.runs})")


if __name__ == "__main__":
    main()
