"""One 50 MB session id at rowid 1 (a malformed row, skipped): what N live commits cost after it.

    python3 bench/huge_first_row.py                    # this tree
    python3 bench/huge_first_row.py --before c24737c   # and the same run on another commit, beside it

The database's fingerprint (database_identity.py) is compared at every drain and
written at every commit; it must cost the same whatever the first row holds.
A child process runs the pipeline (read, then N times: one event committed by
a writer connection, a drain, a commit) and reports its own CPU seconds, peak
RSS (VmHWM), bytes it wrote (wchar), and the state directory's size.  The first
drain, which reads the huge row once, is reported apart from the N commits.
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _proc(name: str, key: str) -> int:
    with open(f"/proc/self/{name}") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _figures() -> dict:
    times = os.times()
    return {
        "cpu": times.user + times.system,
        "hwm_mb": _proc("status", "VmHWM") / 1024,
        "written_mb": _proc("io", "wchar") / 1e6,
    }


def child(db: Path, work: Path, commits: int) -> None:
    sys.path.insert(0, os.environ["BENCH_TREE"])
    from omnimemory_learner.config import load_config
    from omnimemory_learner.pipeline import Pipeline

    env = {
        "HOME": str(work),
        "OMNIMEMORY_LEARNER_DB_PATH": str(db),
        "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
        "OMNIMEMORY_LEARNER_LOG_FILE": str(work / "learner.log"),
    }
    start = _figures()
    pipeline = Pipeline(load_config(env=env))
    pipeline.drain()
    pipeline.commit()
    after_first = _figures()
    writer = sqlite3.connect(str(db), isolation_level=None)
    for n in range(commits):
        writer.execute(
            "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)",
            (time.strftime("%Y-%m-%dT%H:%M:%S"), "file_open", f"s{n % 3}"),
        )
        pipeline.drain()
        pipeline.commit()
    end = _figures()
    pipeline.close()
    writer.close()
    state = sum(path.stat().st_size for path in (work / "state").iterdir() if path.is_file())
    print(
        json.dumps(
            {
                "first_drain_cpu": after_first["cpu"] - start["cpu"],
                "commits_cpu": end["cpu"] - after_first["cpu"],
                "hwm_after_first_mb": after_first["hwm_mb"],
                "hwm_end_mb": end["hwm_mb"],
                "commits_written_mb": end["written_mb"] - after_first["written_mb"],
                "state_dir_mb": state / 1e6,
            }
        )
    )


def make_db(path: Path, huge_mb: int) -> None:
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT, event_type TEXT,"
        " session_id TEXT, payload BLOB)"
    )
    db.execute(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, 'file_open', ?)",
        (time.strftime("%Y-%m-%dT%H:%M:%S"), "x" * (huge_mb * 1_000_000)),
    )
    db.commit()
    db.close()


def run(tree: Path, commits: int, huge_mb: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-huge-") as scratch:
        work = Path(scratch)
        db = work / "memory_data.db"
        make_db(db, huge_mb)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(db), str(work), str(commits)],
            env={**os.environ, "BENCH_TREE": str(tree)},
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


def checkout(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--huge-mb", type=int, default=50)
    parser.add_argument("--before", help="a commit to measure beside this tree")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as old:
        if args.before:
            trees = {args.before: checkout(args.before, Path(old)), **trees}
        print(f"{args.huge_mb} MB session id at rowid 1, then {args.commits} live commits (one event each)")
        print(
            f"{'code':>12} {'1st drain cpu s':>16} {'commits cpu s':>14} {'peak RSS MB':>12} "
            f"{'RSS after 1st':>14} {'written MB':>11} {'state dir MB':>13}"
        )
        for name, tree in trees.items():
            figures = run(tree, args.commits, args.huge_mb)
            print(
                f"{name:>12} {figures['first_drain_cpu']:16.2f} {figures['commits_cpu']:14.2f} "
                f"{figures['hwm_end_mb']:12.0f} {figures['hwm_after_first_mb']:14.0f} "
                f"{figures['commits_written_mb']:11.1f} {figures['state_dir_mb']:13.2f}"
            )


if __name__ == "__main__":
    main()
