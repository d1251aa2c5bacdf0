"""Benchmarks of issue 11 and 12's features, each figure beside its target.

    python3 bench/learning.py            # all of them (about 2 minutes)
    python3 bench/learning.py --only close_on recurrence report idle

* close_on: the real service (a separate process, watch mode, close_on =
  ["push_changes"]); another process commits sessions ending in git_push one
  at a time; from its commit() returning to the POST arriving at a local
  /learn server (CLOCK_MONOTONIC is shared between processes).  Target p99
  <= 20 ms.
* recurrence: a generated stream with realistic runs of repeated edits, cut
  by the real core; the share of sessions whose pattern (the exact command
  sequence the API keys patterns by) an earlier session already had, with
  and without fold_repeats.
* report: `omnimemory-learner report --json` over a history of 100,000
  sessions (wall and CPU seconds; target: a few seconds).
* idle: the service's CPU seconds per minute with 100,000 pending sessions
  (the API down) and 100,000 in the history; target <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import cpu_seconds
from run import MinimalAPI

from omnimemory_learner.core.graph import recurrence, summarize
from omnimemory_learner.core.identity import session_key
from omnimemory_learner.core.sessions import SessionTracker
from omnimemory_learner.storage.history import Entry, HistoryStore


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def service_env(work: Path, db: Path, api_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMEMORY_LEARNER_")}
    env.update(
        {
            "HOME": str(work),
            "PYTHONPATH": str(ROOT),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_API_URL": api_url,
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_LOG_FILE": str(work / "learner.log"),
        }
    )
    env.update({f"OMNIMEMORY_LEARNER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def make_db(path: Path) -> None:
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT, event_type TEXT, session_id TEXT)"
    )
    db.commit()
    db.close()


WRITER = r"""
import sqlite3, sys, time, datetime
db = sqlite3.connect(sys.argv[1]); db.execute("PRAGMA synchronous=NORMAL")
for n in range(int(sys.argv[2])):
    now = datetime.datetime.now()
    rows = [(now.isoformat(), t, f"s{n}") for t in ("file_open", "code_edit", "git_commit")]
    db.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows); db.commit()
    time.sleep(0.05)
    db.execute("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)",
               (datetime.datetime.now().isoformat(), "git_push", f"s{n}"))
    db.commit()
    print(f"s{n} {time.monotonic()!r}", flush=True)
    time.sleep(0.1)
"""


def bench_close_on(work: Path, sessions: int) -> dict:
    db = work / "events.db"
    make_db(db)
    api = MinimalAPI(record_arrivals=True)
    env = service_env(work, db, api.url, close_on="push_changes", session_idle_minutes=60)
    service = subprocess.Popen(
        [sys.executable, "-m", "omnimemory_learner", "run"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (work / "state" / "status.json").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(db), str(sessions)], capture_output=True, text=True, timeout=300
        )
        committed = {
            name: float(at) for name, at in (line.split() for line in writer.stdout.split("\n") if line.strip())
        }
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(api.arrivals) < len(committed):
            time.sleep(0.05)
    finally:
        service.terminate()
        service.wait(20)
        api.stop()
    latencies = sorted((arrived - committed[name]) * 1000 for name, arrived in api.arrivals if name in committed)
    return {
        "sessions": len(committed),
        "received": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
        "target_p99_ms": 20,
    }


def generated_stream(sessions: int, seed: int = 7):
    """Realistic activity: a few workflows, with runs of 1 to 40 edits and of 1 to 4 test runs."""
    rng = random.Random(seed)
    shapes = [
        ["open_file", "EDIT", "save_file", "TEST", "commit_changes"],
        ["pull_changes", "open_file", "EDIT", "save_file", "push_changes"],
        ["open_file", "EDIT", "TEST", "EDIT", "save_file", "commit_changes"],
    ]
    events, rowid, clock = [], 0, 1_700_000_000.0
    for number in range(sessions):
        for step in rng.choice(shapes):
            repeat = rng.randint(1, 40) if step == "EDIT" else rng.randint(1, 4) if step == "TEST" else 1
            command = {"EDIT": "edit_code", "TEST": "run_tests"}.get(step, step)
            for _ in range(repeat):
                rowid += 1
                clock += rng.uniform(1, 20)
                events.append((rowid, f"s{number}", (command, command), clock))
        clock += 3600
    return events


def bench_recurrence(sessions: int) -> dict:
    tracker = SessionTracker(300.0, min_commands=3)
    closed = tracker.feed(generated_stream(sessions), 0.0) + tracker.close_all()
    summaries = [summarize(session.names, session.outcome) for session in closed if session.learnable]
    exact, folded = recurrence(summaries)
    return {
        "sessions": len(summaries),
        "seen_before_exact": exact,
        "seen_before_folded": folded,
        "share_exact": round(exact / len(summaries), 3),
        "share_folded": round(folded / len(summaries), 3),
    }


def fill_history(state_dir: Path, count: int) -> None:
    store = HistoryStore(state_dir)
    rng = random.Random(1)
    names = ["open_file", "edit_code", "save_file", "run_tests", "commit_changes", "push_changes", "pull_changes"]
    now = time.time()
    batch = []
    for number in range(count):
        commands = [rng.choice(names) for _ in range(rng.randrange(3, 30))]
        last = now - rng.random() * 25 * 86400
        batch.append(
            Entry(
                session_key(f"s{number}", commands, [last] * len(commands)),
                f"s{number}",
                last - 60,
                last,
                commands,
                "success",
                "p",
                "idle",
                "learned",
            )
        )
        if len(batch) == 5000:
            store.record(batch)
            batch = []
    store.record(batch)
    store.close()


def bench_report(work: Path, count: int) -> dict:
    fill_history(work / "state", count)
    env = service_env(work, work / "none.db", "http://127.0.0.1:9")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "report", "--json"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    return {
        "sessions": json.loads(result.stdout)["sessions"],
        "wall_s": round(wall, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
    }


def bench_idle(work: Path, pending: int, history: int, seconds: float) -> dict:
    """CPU of a service holding a large outbox (the API refuses) and a large history."""
    fill_history(work / "state", history)
    db = work / "events.db"
    make_db(db)
    rows = []
    start = time.time() - 86400
    for number in range(pending):
        rows += [
            (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start + number * 0.5)), t, f"p{number}")
            for t in ("file_open", "code_edit", "file_save")
        ]
    connection = sqlite3.connect(str(db))
    connection.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows)
    connection.commit()
    connection.close()
    with socket.socket() as probe:  # a port nobody listens on: the API is down
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    env = service_env(work, db, down, retry_max_seconds=300)
    service = subprocess.Popen(
        [sys.executable, "-m", "omnimemory_learner", "run"],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        state = work / "state" / "state.db"
        deadline = time.monotonic() + 600

        def pending_now():
            try:
                connection = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
                try:
                    return connection.execute("SELECT count(*) FROM sessions WHERE status='pending'").fetchone()[0]
                finally:
                    connection.close()
            except sqlite3.Error:
                return 0

        while time.monotonic() < deadline and pending_now() < pending:
            time.sleep(1)
        time.sleep(10)  # the catch-up's last commits and the first backoff
        first = cpu_seconds(service.pid)
        time.sleep(seconds)
        used = cpu_seconds(service.pid) - first
    finally:
        service.terminate()
        service.wait(30)
    return {
        "pending": pending_now(),
        "history": history,
        "seconds": seconds,
        "cpu_s_per_min": round(used * 60 / seconds, 4),
        "target": 0.05,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["close_on", "recurrence", "report", "idle"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        for name in args.only:
            part = work / name
            part.mkdir()
            if name == "close_on":
                results[name] = bench_close_on(part, 30 if args.quick else 100)
            elif name == "recurrence":
                results[name] = bench_recurrence(500 if args.quick else 5000)
            elif name == "report":
                results[name] = bench_report(part, 20_000 if args.quick else 100_000)
            elif name == "idle":
                size = 10_000 if args.quick else 100_000
                results[name] = bench_idle(part, size, size, 30 if args.quick else 60)
            print(name, json.dumps(results[name]), flush=True)
            shutil.rmtree(part, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
