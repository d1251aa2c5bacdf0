"""bench/catch_up_stages.py of several trees, paired: one run of each tree in turn, N rounds, medians and ranges.

    python3 bench/paired_stages.py TREE [TREE ...] [--rounds 5] [--shape S] [--events 200000]

Each run is that tree's own bench/catch_up_stages.py --runs 3 (--best-of: its
generator, the best of its catch-ups, in a process of its own), so a tree from before this script
(any with catch_up_stages.py --shape) compares as it is.  Alternating the
trees spreads a shared machine's noise over both; per tree the total CPU,
CPU per session and each stage's CPU, as median (min-max).
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import subprocess
import sys
from pathlib import Path


def one_run(tree: Path, shape: str, events: int, best_of: int) -> dict:
    command = ["bench/catch_up_stages.py", "--runs", str(best_of), "--shape", shape, "--events", str(events)]
    output = subprocess.run(
        [sys.executable, *command],
        cwd=str(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures = ast.literal_eval(re.search(r"CPU seconds, best of \d+ (\{.*\})", output).group(1))  # type: ignore[union-attr]
    sessions = int(re.search(r"events, (\d+) sessions", output).group(1))  # type: ignore[union-attr]
    figures["us_per_session"] = figures["total"] / sessions * 1e6
    figures["us_per_event"] = figures["total"] / events * 1e6
    figures["sessions"] = sessions
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", default="default")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--best-of", type=int, default=3, help="catch_up_stages.py --runs: its best of these")
    options = parser.parse_args()
    runs: dict = {tree: [] for tree in options.trees}
    for _ in range(options.rounds):
        for tree in options.trees:
            runs[tree].append(one_run(tree.resolve(), options.shape, options.events, options.best_of))
    for tree, figures in runs.items():
        shown = []
        for label in ("total", "us_per_event", "us_per_session", "read", "validate", "feed", "commit", "state.commit"):
            values = [run[label] for run in figures]
            shown.append(f"{label} {statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})")
        print(f"{options.shape} {tree} ({figures[0]['sessions']} sessions): " + "; ".join(shown))


if __name__ == "__main__":
    main()
