"""Unusual sessions, scored against the user's own transition model (pure).

The model is first-order: the probability that command b follows command a,
estimated from the history's sessions (repeats folded) with add-alpha
smoothing over the commands seen plus an end marker, and a start marker
before each session:

    P(b | a) = (count(a -> b) + alpha) / (count(a -> anything) + alpha * (|V| + 1))

A session's score is the mean negative log-likelihood per transition
(start -> first, ..., last -> end): a session made of the user's usual
transitions scores low, one made of transitions never or rarely seen scores
high.  A session is flagged when the model has seen at least MIN_HISTORY
sessions and its score is above the FLAG_PERCENTILE-th percentile of the
history's own scores; the rarest transition (lowest probability) says why.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

START, END = "^", "$"
ALPHA = 0.5
MIN_HISTORY = 200
FLAG_PERCENTILE = 99.0
# Sessions learned between two draws of the threshold.
RECOMPUTE_EVERY = 500


def _folded(names: Sequence[str]) -> List[str]:
    # The plain loop: half the cost of an enumerate comprehension, and this
    # runs once per closed session in the reading thread.
    folded: List[str] = []
    previous = None
    for name in names:
        if name != previous:
            folded.append(name)
            previous = name
    return folded


class Score(NamedTuple):
    value: float  # mean negative log-likelihood per transition (nats)
    rarest: Tuple[str, str]  # the least likely transition
    rarest_probability: float


class TransitionModel:
    def __init__(self, alpha: float = ALPHA):
        if alpha <= 0:
            raise ValueError("alpha must be positive")
        self.alpha = alpha
        self._counts: Dict[str, Dict[str, int]] = {}
        self._totals: Dict[str, int] = {}
        self._vocabulary: set = set()
        self.sessions = 0

    def add(self, names: Sequence[str]) -> None:
        self._add_path([START, *_folded(names), END])

    def _add_path(self, path: List[str]) -> None:
        counts, totals = self._counts, self._totals
        previous = path[0]
        for name in path[1:]:
            row = counts.get(previous)
            if row is None:
                row = counts[previous] = {}
            row[name] = row.get(name, 0) + 1
            totals[previous] = totals.get(previous, 0) + 1
            previous = name
        self._vocabulary.update(path[1:-1])
        self.sessions += 1

    def probability(self, a: str, b: str) -> float:
        # Every command seen, plus the end marker, can follow; unseen ones get alpha too.
        outcomes = len(self._vocabulary) + 1
        count = self._counts.get(a, {}).get(b, 0)
        return (count + self.alpha) / (self._totals.get(a, 0) + self.alpha * outcomes)

    def score(self, names: Sequence[str]) -> Optional[Score]:
        if not names:
            return None
        return self._score_path([START, *_folded(names), END])

    def _score_path(self, path: List[str]) -> Score:
        # probability() inlined: it runs for every session the API takes, and
        # a call per transition would cost more than its arithmetic.
        alpha = self.alpha
        spread = alpha * (len(self._vocabulary) + 1)
        counts, totals, empty = self._counts, self._totals, _EMPTY
        log = math.log
        total = 0.0
        lowest = math.inf
        rarest: Tuple[str, str] = (path[0], path[1])
        previous = path[0]
        for name in path[1:]:
            p = (counts.get(previous, empty).get(name, 0) + alpha) / (totals.get(previous, 0) + spread)
            total -= log(p)
            if p < lowest:
                lowest, rarest = p, (previous, name)
            previous = name
        return Score(total / (len(path) - 1), rarest, lowest)


_EMPTY: Dict[str, int] = {}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class UnusualDetector:
    """A model over the history plus the flagging threshold drawn from it.

    `observe` judges each newly settled session, then adds it; the threshold is drawn again
    from the scores every RECOMPUTE_EVERY sessions (and as soon as the model
    has seen MIN_HISTORY), so the service's view follows the user's habits.
    """

    def __init__(
        self,
        history: Iterable[Sequence[str]] = (),
        min_history: int = MIN_HISTORY,
        flag_percentile: float = FLAG_PERCENTILE,
        alpha: float = ALPHA,
        max_scores: int = 100_000,
    ):
        self.model = TransitionModel(alpha)
        self.min_history = min_history
        self.flag_percentile = flag_percentile
        self.max_scores = max_scores
        # Two passes, the model first, then the history's scores against it.  A
        # collection (or CommandLists, which reads history.db again) is walked
        # twice rather than held: 20,000 sessions of 1,000 commands held whole
        # were 1.6 GB.  A one-shot iterator is held, having no second pass.
        sessions: Iterable[Sequence[str]] = list(history) if iter(history) is history else history
        for names in sessions:
            if names:
                self.model.add(names)
        self._scores: List[float] = [
            score.value for score in map(self.model.score, (names for names in sessions if names)) if score is not None
        ]
        self._learned_since = 0
        self.threshold: Optional[float] = None
        self._draw_threshold()

    def _draw_threshold(self) -> None:
        if len(self._scores) > self.max_scores:
            del self._scores[: len(self._scores) - self.max_scores]
        if self.model.sessions >= self.min_history and self._scores:
            self.threshold = percentile(self._scores, self.flag_percentile)
        self._learned_since = 0

    @property
    def ready(self) -> bool:
        return self.threshold is not None

    def judge(self, names: Sequence[str]) -> Tuple[Optional[Score], bool]:
        """The session's score and whether it is unusual (never before MIN_HISTORY sessions)."""
        score = self.model.score(names)
        return score, self._beyond(score)

    def _beyond(self, score: Optional[Score]) -> bool:
        return score is not None and self.threshold is not None and score.value > self.threshold

    def observe(self, names: Sequence[str]) -> Tuple[Optional[Score], bool]:
        """judge() the session, then add it to the model; one fold for both.

        The score kept for the threshold is the session's score once it is in
        the model, as the history's own are scored when the detector is built.
        """
        if not names:
            return None, False
        path = [START, *_folded(names), END]
        score = self.model._score_path(path)
        flagged = self._beyond(score)
        self.model._add_path(path)
        self._scores.append(self.model._score_path(path).value)
        self._learned_since += 1
        first_time = self.threshold is None and self.model.sessions >= self.min_history
        if self._learned_since >= RECOMPUTE_EVERY or first_time:
            self._draw_threshold()
        return score, flagged
