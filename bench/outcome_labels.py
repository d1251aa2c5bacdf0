"""How well an outcome rule labels sessions whose outcome is known: a labelled generator, two rules, their scores.

    python3 bench/outcome_labels.py [--sessions 800] [--seed 7] [--noise 0 0.1 0.2]

Eight workflow templates, four that end well and four given up or failing by
construction, each with runs of edits of random length; then noise at a rate
per command, each time one of: a command replaced by any other, one inserted,
one left out, a run of edits inserted.  For each noise level, the evidence
rule (core/evidence.py, inconclusive sent as success) and the original's
(core/outcome.py, "last3"): accuracy, macro-F1 over success and failure, and
failure recall.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omnimemory_learner.core.evidence import judge, sent_outcome
from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP
from omnimemory_learner.core.outcome import infer_outcome

VOCABULARY = sorted(set(DEFAULT_EVENT_MAP.values()))


def _edits(rng: random.Random) -> List[str]:
    return ["edit_code"] * rng.randint(1, 6)


def _template(rng: random.Random, which: int) -> Tuple[List[str], str]:
    e = lambda: _edits(rng)  # noqa: E731
    if which == 0:  # a feature, tested and committed (sometimes pushed)
        return ["open_file", *e(), "save_file", "run_tests", "commit_changes"] + ["push_changes"] * rng.randint(
            0, 1
        ), "success"
    if which == 1:  # a fix found by the tests, fixed, tested again and committed
        return [
            "open_file",
            *e(),
            "save_file",
            "run_tests",
            *e(),
            "save_file",
            "run_tests",
            "commit_changes",
        ], "success"
    if which == 2:  # built, the build finished, committed and pushed
        return [*e(), "save_file", "build_project", "command_completed", "commit_changes", "push_changes"], "success"
    if which == 3:  # pulled, changed, verified (nothing to commit yet)
        return ["pull_changes", "open_file", *e(), "save_file", "run_tests"], "success"
    if which == 4:  # tested, then edits after the last test and no commit: given up
        return ["open_file", *e(), "save_file", "run_tests", *e(), "save_file"], "failure"
    if which == 5:  # a build started again and again after edits, never finishing
        return [
            *e(),
            "save_file",
            "build_project",
            *e(),
            "save_file",
            "build_project",
            *e(),
            "build_project",
        ], "failure"
    if which == 6:  # the work deleted after the last commit
        return [*e(), "save_file", "commit_changes", "open_file", "delete_file"], "failure"
    # tests run again and again after fixes, never committed
    return ["open_file", *e(), "save_file", "run_tests", *e(), "save_file", "run_tests", *e(), "run_tests"], "failure"


def noisy(commands: Sequence[str], rate: float, rng: random.Random) -> List[str]:
    """Each command, at `rate`: replaced, followed by an inserted one, left out, or followed by a run of edits."""
    out: List[str] = []
    for command in commands:
        if rng.random() >= rate:
            out.append(command)
            continue
        kind = rng.randrange(4)
        if kind == 0:
            out.append(rng.choice([other for other in VOCABULARY if other != command]))
        elif kind == 1:
            out += [command, rng.choice(VOCABULARY)]
        elif kind == 3:
            out += [command, *["edit_code"] * rng.randint(2, 5)]
        # kind 2: left out
    return out or list(commands[:1])


def labelled(count: int, rate: float, seed: int) -> List[Tuple[List[str], str]]:
    rng = random.Random(seed)
    sessions = []
    for index in range(count):
        commands, label = _template(rng, index % 8)
        sessions.append((noisy(commands, rate, rng), label))
    return sessions


def scores(sessions: Sequence[Tuple[Sequence[str], str]], rule: Callable[[Sequence[str]], str]) -> dict:
    said = [(rule(commands), label) for commands, label in sessions]
    accuracy = sum(got == label for got, label in said) / len(said)
    f1s = {}
    for positive in ("success", "failure"):
        tp = sum(got == positive and label == positive for got, label in said)
        fp = sum(got == positive and label != positive for got, label in said)
        fn = sum(got != positive and label == positive for got, label in said)
        f1s[positive] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    failures = [got for got, label in said if label == "failure"]
    recall = sum(got == "failure" for got in failures) / len(failures) if failures else 0.0
    return {"accuracy": accuracy, "macro_f1": (f1s["success"] + f1s["failure"]) / 2, "failure_recall": recall}


def evidence_rule(commands: Sequence[str]) -> str:
    return sent_outcome(judge(commands), "success")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=800)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    args = parser.parse_args()
    print(f"{args.sessions} sessions of 8 templates (half failing by construction), seed {args.seed}")
    print("noise  rule      accuracy  macro-F1  failure recall")
    for rate in args.noise:
        sessions = labelled(args.sessions, rate, args.seed)
        for name, rule in (("evidence", evidence_rule), ("last3", infer_outcome)):
            got = scores(sessions, rule)
            print(
                f"{rate:5.0%}  {name:8}  {got['accuracy']:8.3f}  {got['macro_f1']:8.3f}  {got['failure_recall']:14.3f}"
            )


if __name__ == "__main__":
    main()
