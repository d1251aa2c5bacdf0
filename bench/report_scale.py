"""`report`, `report --svg`, `history` and a service start on a large history.db: wall time and peak RSS.

    PYTHONPATH=$PWD python3 bench/report_scale.py            # 100,000 sessions of 100 commands
    PYTHONPATH=$PWD python3 bench/report_scale.py --quick    # 10,000 sessions
    PYTHONPATH=$PWD python3 bench/report_scale.py --tree /tmp/old --tree $PWD   # two trees, same files

The history is written straight into history.db (the store's own schema,
then executemany in one transaction): sessions made of the user's usual
workflows, with runs of repeated edits, so that nearly every session's exact
sequence is its own while the folded workflows repeat, 1% flagged unusual,
learned sessions with a sent body of 3 KiB (the issue's 473 MB for 10^5).
Each command runs as a subprocess of its own; its peak RSS is its VmHWM.
The outputs of the trees are compared byte for byte.
The service start (issue 24, item 15) is the real service on an empty events
database with a history of 20,000 sessions of 1,000 commands (`--service`
sizes it), stopped once its CPU has been idle for 2 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from omnimemory_learner.core.fates import Fate
from omnimemory_learner.core.graph import workflow_of
from omnimemory_learner.storage.history import HistoryStore

WORKFLOWS = [  # (weight, command names): a run of edit_code is drawn longer
    (6, ["pull_changes", "open_file", "edit_code", "save_file", "run_tests", "commit_changes", "push_changes"]),
    (4, ["open_file", "edit_code", "run_tests", "edit_code", "run_tests", "save_file", "commit_changes"]),
    (2, ["open_file", "edit_code", "build_project", "execute_command", "command_completed"]),
    (2, ["create_file", "edit_code", "run_tests", "edit_code", "delete_file"]),
    (1, ["open_editor", "modify_file", "save_file", "close_editor"]),
]
SETTLED = [(90, Fate.LEARNED), (5, Fate.NOT_LEARNED), (3, Fate.TOO_SHORT), (2, Fate.LOW_QUALITY)]


def session_names(rng: random.Random, length: int) -> List[str]:
    names: List[str] = []
    weights = [w for w, _ in WORKFLOWS]
    flows = [f for _, f in WORKFLOWS]
    while len(names) < length:
        for name in rng.choices(flows, weights)[0]:
            names.extend([name] * (rng.randint(1, 12) if name == "edit_code" else 1))
    return names[:length]


def write_history(
    state_dir: Path, sessions: int, commands: int, seed: int = 5, workflows: bool = True
) -> Tuple[float, int]:
    """history.db with `sessions` rows; (seconds taken, bytes).

    `workflows`: each row with the folded workflow and exact digest the store
    computes when it records a session (core/graph.py workflow_of); without,
    rows as an older version wrote them (the report folds them itself).
    """
    started = time.perf_counter()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    HistoryStore(state_dir).close()  # the schema, as the service makes it
    rng = random.Random(seed)
    fates = rng.choices([f for _, f in SETTLED], [w for w, _ in SETTLED], k=sessions)
    now = time.time()
    start = now - 30 * 86400
    step = (now - start) / sessions
    rows = []
    name_ids: dict = {}  # the names table, as HistoryStore.record fills it

    def id_of(token: bytes) -> int:
        return name_ids.setdefault(token, len(name_ids) + 1)

    for number in range(sessions):
        names = session_names(rng, commands)
        last = start + number * step
        settled = str(fates[number])
        learned = settled == str(Fate.LEARNED)
        unusual = rng.random() < 0.01
        rows.append(
            (
                hashlib.blake2b(f"{seed}:{number}".encode(), digest_size=16).hexdigest(),
                f"session-{number}",
                last - len(names) * 5.0,
                last,
                json.dumps(names, separators=(",", ":")),
                "failure" if rng.random() < 0.2 else "success",
                f"pattern-{number % 5000}" if learned else None,
                "idle",
                settled,
                round(rng.uniform(0.3, 1.0), 3),
                round(rng.uniform(4.0, 7.0), 3) if unusual else None,
                int(unusual),
                "commit_changes -> delete_file" if unusual else None,
                last + 1.0,
                rng.randbytes(3072) if learned else None,  # a compressed body does not compress again
            )
        )
        if workflows:
            rows[-1] += workflow_of(rows[-1][4].encode(), id_of) or (None, None)
    db = sqlite3.connect(str(state_dir / "history.db"), isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    columns = (
        "key, session_id, first_time, last_time, commands, outcome, pattern_id, closed_reason, settled, "
        "quality, unusual_score, unusual, rarest, settled_at, sent" + (", workflow, exact" if workflows else "")
    )
    db.executemany(f"INSERT INTO history ({columns}) VALUES ({','.join('?' * len(rows[0]))})", rows)
    if workflows:
        db.executemany("INSERT INTO names (id, token) VALUES (?, ?)", [(i, token) for token, i in name_ids.items()])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - started, os.path.getsize(state_dir / "history.db")


# Each command's own peak, VmHWM of its address space, said at exit: a child's
# ru_maxrss counts the pages it shared with this process when forked (the
# rows written above).
PEAK = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "'\\nVmHWM ' + open('/proc/self/status').read().split('VmHWM:')[1].split()[0] + '\\n'))\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__')\n"
)


def measure(command: List[str], env: dict, output: Path, tree: Path) -> Tuple[float, float, int, str]:
    """(wall s, peak RSS MB, exit status, sha256 of stdout) of `python -m ...` (in the tree: -m finds it first)."""
    started = time.perf_counter()
    with open(output, "wb") as out:
        result = subprocess.run(
            [sys.executable, "-c", PEAK, *command[1:]], env=env, stdout=out, stderr=subprocess.PIPE, cwd=str(tree)
        )
    wall = time.perf_counter() - started
    digest = hashlib.sha256(output.read_bytes()).hexdigest()[:12]
    peak = int(result.stderr.rsplit(b"VmHWM ", 1)[1].split()[0]) / 1024.0
    return wall, peak, result.returncode, digest


def vm_hwm(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) / 1024.0


def cli_runs(tree: Path, state_dir: Path, work: Path) -> List[Tuple[str, float, float, int, str]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    base = [sys.executable, "-m", "omnimemory_learner", "--state-dir", str(state_dir)]
    runs = [
        ("report", [*base, "report"]),
        ("report --json", [*base, "report", "--json"]),
        ("report --svg", [*base, "report", "--svg", str(work / "graph.svg")]),
        ("history", [*base, "history"]),
        ("history --json --limit 1000", [*base, "history", "--json", "--limit", "1000"]),
    ]
    results = []
    for name, command in runs:
        wall, rss, code, digest = measure(command, env, work / "out.txt", tree)
        results.append((name, wall, rss, code, digest))
    return results


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_start(tree: Path, work: Path, sessions: int, commands: int) -> Tuple[float, float, int]:
    """(seconds until idle, peak RSS MB, sessions in the history) of the real service's start."""
    from helpers import RecordingAPI, create_db, learner_env

    state_dir = work / "state"
    write_history(state_dir, sessions, commands, seed=9)
    db = create_db(work / "events.db")
    api = RecordingAPI().start()
    try:
        env = learner_env(work, api.url, db, PYTHONPATH=str(tree))
        started = time.perf_counter()
        with open(work / "service.out", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "omnimemory_learner", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(tree),
            )
            last, still_since = -1.0, time.perf_counter()
            while time.perf_counter() - still_since < 2.0 and process.poll() is None:
                time.sleep(0.25)
                used = cpu_seconds(process.pid)
                if used - last > 0.02:
                    last, still_since = used, time.perf_counter()
            idle_after = still_since - started
            peak = vm_hwm(process.pid)
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    finally:
        api.stop()
    return idle_after, peak, sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 sessions; a service start of 2,000")
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--service", type=int, default=None, help="sessions of 1,000 commands for the service start")
    parser.add_argument("--tree", action="append", type=Path, help="a source tree to run (default: this one)")
    parser.add_argument("--no-service", action="store_true")
    args = parser.parse_args()
    sessions = args.sessions or (10_000 if args.quick else 100_000)
    service_sessions = args.service or (2_000 if args.quick else 20_000)
    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    with tempfile.TemporaryDirectory(prefix="report-scale-") as temporary:
        work = Path(temporary)
        took, size = write_history(work / "state", sessions, args.commands)
        print(f"history.db: {sessions:,} sessions of {args.commands} commands, {size / 1e6:.0f} MB, in {took:.1f} s")
        for tree in trees:
            print(f"\n{tree}")
            for name, wall, rss, code, digest in cli_runs(tree, work / "state", work):
                print(f"  {name:<28} {wall:6.2f} s  {rss:7.1f} MB  exit {code}  stdout {digest}")
        if not args.no_service:
            for tree in trees:
                service_dir = work / f"service-{trees.index(tree)}"
                service_dir.mkdir()
                idle, rss, count = service_start(tree, service_dir, service_sessions, 1000)
                print(f"\n{tree}: service start, {count:,} sessions of 1,000 commands in the history:")
                print(f"  idle after {idle:.1f} s, peak RSS {rss:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
