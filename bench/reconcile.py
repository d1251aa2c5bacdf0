"""CPU seconds of one reconcile: 10^5 history sessions against GET /patterns of 10^4 patterns.

    PYTHONPATH=$PWD python3 bench/reconcile.py [--sessions 100000] [--patterns 10000] [--rounds 5]

The answer is built as a restart would leave it (the sessions delivered after
it, plus other clients' additions), so about half the groups have a deficit
and the selection and sorting run in earnest. Prints the best and median of
`rounds` runs (time.process_time) of the three steps of one reconcile: the
history read from a real history.db (HistoryStore.taught), the answer's JSON
decoded and read (parse_patterns), and the rule (reconcile); then together.
Target: well under 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omnimemory_learner.core.reconcile import Taught, parse_patterns, reconcile
from omnimemory_learner.storage.history import Entry, HistoryStore


def workload(sessions: int, patterns: int, seed: int = 7):
    rng = random.Random(seed)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(patterns)]
    taught = [
        Taught(rng.choice(ids), "success" if rng.random() < 0.8 else "failure", 1.7e9 + rng.random() * 3e6, f"k{n:07d}")
        for n in range(sessions)
    ]
    # The API restarted after the first half was delivered (delivery order = list order here).
    held = {}
    for session in taught[sessions // 2 :]:
        success, failure = held.get(session.pattern_id, (0, 0))
        held[session.pattern_id] = (success + 1, failure) if session.outcome == "success" else (success, failure + 1)
    for _ in range(patterns // 10):  # other clients add to some patterns and bring their own
        pattern_id = rng.choice(ids) if rng.random() < 0.5 else f"{rng.getrandbits(64):016x}"
        success, failure = held.get(pattern_id, (0, 0))
        held[pattern_id] = (success + rng.randint(0, 3), failure + rng.randint(0, 1))
    answer = {
        "patterns": [
            {"pattern_id": p, "command_count": 5, "success_count": s, "failure_count": f, "confidence": 0.5}
            for p, (s, f) in held.items()
        ],
        "total": len(held),
    }
    return taught, answer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--patterns", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    taught, answer = workload(args.sessions, args.patterns)
    read_times, parse_times, reconcile_times = [], [], []
    with tempfile.TemporaryDirectory() as directory:
        history = HistoryStore(Path(directory))
        history.record(
            Entry(
                s.key, "s", s.last_time - 60, s.last_time, ["a", "b", "c"], s.outcome, s.pattern_id, "idle", "learned"
            )
            for s in taught
        )
        for _ in range(args.rounds):
            start = time.process_time()
            read = history.taught(0.0)
            read_times.append(time.process_time() - start)
        history.close()
    assert sorted(read) == sorted(taught)
    answer_bytes = json.dumps(answer).encode()
    for _ in range(args.rounds):
        start = time.process_time()
        counts = parse_patterns(json.loads(answer_bytes))
        middle = time.process_time()
        result = reconcile(taught, counts.counts, counts.unknown, learned_ever=len(taught) + 1000)
        end = time.process_time()
        parse_times.append(middle - start)
        reconcile_times.append(end - middle)
    totals = [a + b + c for a, b, c in zip(read_times, parse_times, reconcile_times)]
    print(f"{len(taught)} sessions, {len(answer['patterns'])} patterns answered, {args.rounds} rounds")
    print(f"lost: {result.sessions_lost} sessions of {result.patterns_lost} patterns;", end=" ")
    print(f"forgotten, not in the history: {result.forgotten_not_in_history}")
    for name, times in (
        ("history.taught", read_times),
        ("json + parse", parse_times),
        ("reconcile", reconcile_times),
        ("all three", totals),
    ):
        print(f"{name:15s} CPU best {min(times):.3f} s, median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
