"""A per-user guess at how an inconclusive session went, from the sessions the rules judged: measured, not shipped.

Naive Bayes over command transitions: each session is the set of its
adjacent pairs, with a start and an end marker (""), each pair counted once
a session (a run of edits of any length is one pair, not a weight), Laplace
smoothing over the pairs seen in training; a pair never seen is left out.
It learns only from verdicts the rules gave with evidence (success or
failure, never inconclusive) and answers only when the posterior of its
guess reaches the threshold and it has seen enough of both outcomes;
otherwise None.  Its state is two session counts and two tables of pair
counts: at most (commands + 1) squared pairs an outcome, JSON as it is.

Issue 27 item 4's candidate, kept here for bench/outcome_labels.py --model
(bench/RESULTS.md, issue 27 item 4).  It is not in the package because it
learns the rules' own evidence: among the sessions they judge, those that end
with a build started are nearly all failures ("rework"), so it calls an
inconclusive session that ends with a build a failure, with confidence.
That is right where the generator's inconclusive sessions are failing ones
damaged by noise, and wrong where they are sessions cut short whatever
their outcome (--cut): there it loses 0.016-0.034 of macro-F1 on average at
0-20% noise, worse on 29 of 30 held-out pairs of seeds.

Standard library only, no I/O or clock, so it could move to core/ as it is.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Set, Tuple

OUTCOMES = ("success", "failure")
_MARK = ""  # before the first command and after the last; no command is named ""


def _pairs(commands: Sequence[str]) -> Set[Tuple[str, str]]:
    names = [_MARK, *commands, _MARK]
    return set(zip(names, names[1:]))


class OutcomeModel:
    """Counts of sessions and of their command pairs, per outcome; learn() adds one, guess() reads them."""

    def __init__(self, state: Optional[dict] = None) -> None:
        state = state or {}
        self.sessions: Dict[str, int] = {o: int(state.get("sessions", {}).get(o, 0)) for o in OUTCOMES}
        # pairs[outcome][first][second]: nested so that any command name is a JSON key as it is.
        self.pairs: Dict[str, Dict[str, Dict[str, int]]] = {
            o: {a: dict(row) for a, row in state.get("pairs", {}).get(o, {}).items()} for o in OUTCOMES
        }

    def learn(self, commands: Sequence[str], outcome: str) -> None:
        """Count one session the rules judged `outcome` ("success" or "failure")."""
        self.sessions[outcome] += 1
        table = self.pairs[outcome]
        for first, second in _pairs(commands):
            row = table.setdefault(first, {})
            row[second] = row.get(second, 0) + 1

    def posterior(self, commands: Sequence[str]) -> Dict[str, float]:
        """P(outcome | the session's pairs) for each outcome, summing to 1."""
        seen = {(a, b) for o in OUTCOMES for a, row in self.pairs[o].items() for b in row}
        total = sum(self.sessions.values())
        logs = {}
        for o in OUTCOMES:
            counted = sum(sum(row.values()) for row in self.pairs[o].values())
            log = math.log((self.sessions[o] + 1) / (total + 2))
            for a, b in _pairs(commands) & seen:
                log += math.log((self.pairs[o].get(a, {}).get(b, 0) + 1) / (counted + len(seen)))
            logs[o] = log
        top = max(logs.values())
        weights = {o: math.exp(log - top) for o, log in logs.items()}
        return {o: w / sum(weights.values()) for o, w in weights.items()}

    def guess(self, commands: Sequence[str], threshold: float = 0.9, least: int = 20) -> Optional[str]:
        """The likelier outcome if its posterior is at least `threshold` and each outcome was learned `least` times."""
        if min(self.sessions.values()) < least:
            return None
        chances = self.posterior(commands)
        best = max(OUTCOMES, key=lambda o: chances[o])
        return best if chances[best] >= threshold else None

    def state(self) -> dict:
        """What to keep (JSON as it is); OutcomeModel(state) is the same model."""
        return {
            "sessions": dict(self.sessions),
            "pairs": {o: {a: dict(r) for a, r in self.pairs[o].items()} for o in OUTCOMES},
        }
