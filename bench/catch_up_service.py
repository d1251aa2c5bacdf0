"""The catch-up as the service runs it, trees paired: from its start to every row counted in state.db.

    python3 bench/catch_up_service.py TREE [TREE ...] [--mode down|up] [--rounds 5] [--db PATH] [--delivered]

Each round starts `omnimemory-learner run` of each tree in turn (alternating,
so a noisy machine weighs on both alike) on the same events database, the API
down (port 9) or up (bench/run.py's MinimalAPI, in a process of its own),
and polls state.db until events_processed + events_ignored + events_skipped
reach the table's rows.  Per tree: the rate and its ratio to a bare sqlite3
loop (bench/run.py's, measured before every round and after the last), the
process's CPU and its reading (main) thread's, and its peak RSS (VmHWM) once
caught up; with the API up and --delivered also the time (and CPU, peak
RSS) until the outbox holds no pending session; medians and ranges.  Without --db it makes issue 25's database:
2,000,000 events, sessions of 1-20 events over 5,000 ids, 15% unmapped
(about 190,000 sessions), in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gen import generate
from run import bare_loop

CLK_TCK = os.sysconf("SC_CLK_TCK")
COUNTED = "SELECT sum(value) FROM counters WHERE name IN ('events_processed', 'events_ignored', 'events_skipped')"
PENDING = "SELECT coalesce(sum(n), 0) FROM status_counts WHERE status = 'pending'"
API = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from run import MinimalAPI
api = MinimalAPI()
print(api.url, flush=True)
while True:
    time.sleep(3600)
"""


def cpu_seconds(stat_path: str) -> float:
    with open(stat_path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def ask(state_db: Path, query: str, otherwise: int) -> int:
    try:
        db = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=0.05)
        try:
            return db.execute(query).fetchone()[0] or 0
        finally:
            db.close()
    except sqlite3.Error:
        return otherwise


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM")) / 1024


def one_run(tree: Path, db: Path, rows: int, api_url: str, delivered: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="catch-up-service."))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMEMORY_LEARNER_")}
    env.update(
        {
            "HOME": str(work),
            "PYTHONPATH": str(tree),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_API_URL": api_url,
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_LOG_FILE": str(work / "learner.log"),
        }
    )
    started = time.perf_counter()
    service = subprocess.Popen(
        [sys.executable, "-m", "omnimemory_learner", "run"],
        env=env,
        cwd=str(tree),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        state_db = work / "state" / "state.db"
        while True:
            time.sleep(0.02)
            if state_db.exists() and ask(state_db, COUNTED, 0) >= rows:
                seconds = time.perf_counter() - started
                break
            if time.perf_counter() - started > 600 or service.poll() is not None:
                raise RuntimeError(f"{tree}: the catch-up did not end")
        cpu = cpu_seconds(f"/proc/{service.pid}/stat")
        reading = cpu_seconds(f"/proc/{service.pid}/task/{service.pid}/stat")
        figures = {"seconds": seconds, "cpu": cpu, "reading_cpu": reading, "peak_mb": peak_mb(service.pid)}
        # The API up: on to the outbox's last pending session (committed by then) answered.
        while delivered:
            time.sleep(0.05)
            if ask(state_db, PENDING, 1) == 0:
                figures["delivered"] = time.perf_counter() - started
                figures["delivered_cpu"] = cpu_seconds(f"/proc/{service.pid}/stat")
                figures["delivered_peak_mb"] = peak_mb(service.pid)
                break
            if time.perf_counter() - started > 900 or service.poll() is not None:
                raise RuntimeError(f"{tree}: the outbox was not delivered")
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    return figures


def spread(values) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--mode", choices=("down", "up"), default="down")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--delivered", action="store_true", help="the API up: go on until no session is pending")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        db = options.db
        if db is None:
            db = Path(directory) / "events.db"
            generate(db, 2_000_000, 5000, longest=20)
        source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = source.execute("SELECT count(*) FROM events").fetchone()[0]
        source.close()
        api_url, api = "http://127.0.0.1:9", None
        if options.mode == "up":
            api = subprocess.Popen([sys.executable, "-c", API, str(HERE)], stdout=subprocess.PIPE, text=True)
            assert api.stdout is not None
            api_url = api.stdout.readline().strip()
        try:
            bare = []
            runs: dict = {tree: [] for tree in options.trees}
            for _ in range(options.rounds):
                bare.append(bare_loop(db))
                for tree in options.trees:
                    runs[tree].append(one_run(tree.resolve(), db, rows, api_url, api is not None and options.delivered))
            bare.append(bare_loop(db))
        finally:
            if api is not None:
                api.kill()
    loop = statistics.median(bare)
    print(f"{rows} rows, API {options.mode}, {options.rounds} rounds; bare loop {spread(bare)} rows/s")
    for tree, figures in runs.items():
        rates = [rows / run["seconds"] for run in figures]
        print(
            f"{tree}: {spread(rates)} rows/s, ratio {spread([rate / loop for rate in rates])}; "
            f"CPU {spread([run['cpu'] for run in figures])} s, reading thread "
            f"{spread([run['reading_cpu'] for run in figures])} s; "
            f"peak RSS {spread([run['peak_mb'] for run in figures])} MB"
        )
        if "delivered" in figures[0]:
            print(
                f"    every session delivered: {spread([run['delivered'] for run in figures])} s, "
                f"CPU {spread([run['delivered_cpu'] for run in figures])} s, "
                f"peak RSS {spread([run['delivered_peak_mb'] for run in figures])} MB"
            )


if __name__ == "__main__":
    main()
