"""How well an outcome rule labels sessions whose outcome is known: a labelled generator, two rules, their scores.

    python3 bench/outcome_labels.py [--sessions 800] [--seed 7] [--noise 0 0.1 0.2] [--cut 0.25]
    python3 bench/outcome_labels.py --model [--pairs 10] [--threshold 0.9] [--cut 0.25]

Eight workflow templates, four that end well and four given up or failing by
construction, each with runs of edits of random length; then noise at a rate
per command, each time one of: a command replaced by any other, one inserted,
one left out, a run of edits inserted.  For each noise level, the evidence
rule (core/evidence.py, inconclusive sent as success) and the original's
(core/outcome.py, "last3"): accuracy, macro-F1 over success and failure, and
failure recall.

--cut: that share of the sessions cut short after their last edit, with a
save and a build started that the session does not see finish (the rules
can only call most of them inconclusive); each keeps its template's outcome.

--model: the evidence rule alone (inconclusive sent as success) against the
rule with bench/outcome_model.py asked for its inconclusive sessions, trained
on the rule's verdicts of one seed's sessions (never their labels) and scored
on the next seed's, for --pairs pairs of seeds: both scores, the gain, how
many inconclusive sessions it decided and how many of those it got right.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from outcome_model import OutcomeModel

from omnimemory_learner.core.evidence import INCONCLUSIVE, judge, sent_outcome
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


def cut_short(commands: Sequence[str]) -> List[str]:
    """The session up to its last edit, then a save and a build started that it did not see finish."""
    last = max(index for index, command in enumerate(commands) if command == "edit_code")
    return [*commands[: last + 1], "save_file", "build_project"]


def labelled(count: int, rate: float, seed: int, cut: float = 0.0) -> List[Tuple[List[str], str]]:
    """`count` sessions with their template's outcome; a share `cut` of them cut short (cut_short), label kept."""
    rng = random.Random(seed)
    sessions = []
    for index in range(count):
        commands, label = _template(rng, index % 8)
        # Drawn only when asked for: without --cut the sessions are the same as before it existed.
        if cut and rng.random() < cut:
            commands = cut_short(commands)
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


def held_out(
    train: Sequence[Tuple[Sequence[str], str]], test: Sequence[Tuple[Sequence[str], str]], threshold: float
) -> dict:
    """The model trained on `train`'s rule verdicts, asked for `test`'s inconclusive sessions: scores, counts."""
    model = OutcomeModel()
    for commands, _label in train:
        verdict = judge(commands)
        if verdict.outcome != INCONCLUSIVE:
            model.learn(commands, verdict.outcome)

    def ruled(commands: Sequence[str]) -> str:
        verdict = judge(commands)
        if verdict.outcome != INCONCLUSIVE:
            return verdict.outcome
        return model.guess(commands, threshold) or "success"  # abstained: sent as the rules alone send it

    guesses = [(model.guess(c, threshold), label) for c, label in test if judge(c).outcome == INCONCLUSIVE]
    asked, decided = len(guesses), sum(guess is not None for guess, _ in guesses)
    right = sum(guess == label for guess, label in guesses)
    alone, both = scores(test, evidence_rule), scores(test, ruled)
    return {"alone": alone, "both": both, "asked": asked, "decided": decided, "right": right}


def compare(args: argparse.Namespace) -> None:
    """--model: rules alone against rules + model, trained on seed A, measured on seed B, for each pair of seeds."""
    print(
        f"rules alone against rules + model (threshold {args.threshold}), {args.sessions} sessions, cut {args.cut:.0%}"
    )
    print("noise  train/test  accuracy alone -> +model  macro-F1 alone -> +model  inconclusive  decided  right")
    for rate in args.noise:
        gains = []
        for pair in range(args.pairs):
            a, b = args.seed + 2 * pair, args.seed + 2 * pair + 1
            got = held_out(
                labelled(args.sessions, rate, a, args.cut), labelled(args.sessions, rate, b, args.cut), args.threshold
            )
            alone, both = got["alone"], got["both"]
            gains.append((both["accuracy"] - alone["accuracy"], both["macro_f1"] - alone["macro_f1"]))
            print(
                f"{rate:5.0%}  {a:5}/{b:<5}  {alone['accuracy']:14.3f} -> {both['accuracy']:.3f}"
                f"  {alone['macro_f1']:14.3f} -> {both['macro_f1']:.3f}"
                f"  {got['asked']:12}  {got['decided']:7}  {got['right']:5}"
            )
        for name, values in (("accuracy", [g[0] for g in gains]), ("macro-F1", [g[1] for g in gains])):
            mean = statistics.mean(values)
            spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
            better, worse = sum(v > 0 for v in values), sum(v < 0 for v in values)
            print(
                f"{rate:5.0%}  gain in {name}: mean {mean:+.4f} (s.e. {spread:.4f}), {better} pairs better,"
                f" {worse} worse, min {min(values):+.4f} max {max(values):+.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=800)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--cut", type=float, default=0.0, help="share of sessions cut short (cut_short)")
    parser.add_argument("--model", action="store_true", help="rules alone against rules + bench/outcome_model.py")
    parser.add_argument("--pairs", type=int, default=10, help="--model: pairs of seeds (train, test) from --seed on")
    parser.add_argument("--threshold", type=float, default=0.9, help="--model: the posterior it must reach")
    args = parser.parse_args()
    if args.model:
        compare(args)
        return
    print(
        f"{args.sessions} sessions of 8 templates (half failing by construction), seed {args.seed}, cut {args.cut:.0%}"
    )
    print("noise  rule      accuracy  macro-F1  failure recall")
    for rate in args.noise:
        sessions = labelled(args.sessions, rate, args.seed, args.cut)
        for name, rule in (("evidence", evidence_rule), ("last3", infer_outcome)):
            got = scores(sessions, rule)
            print(
                f"{rate:5.0%}  {name:8}  {got['accuracy']:8.3f}  {got['macro_f1']:8.3f}  {got['failure_recall']:14.3f}"
            )


if __name__ == "__main__":
    main()
