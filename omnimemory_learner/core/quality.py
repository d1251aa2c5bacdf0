"""A quality score in [0, 1] for every closed session, from metadata only (pure).

The score is the weighted mean of five components, each in [0, 1]; the man
page (omnimemory-learner.toml(5), `min_quality`) documents the same table:

    component   weight  1.0 when                                 0.0 when
    variety     0.25    4 or more distinct commands               one distinct command
    signal      0.20    every row of the id in the session was    every row was of a type the
                        of a mapped type                          event map does not know
    repetition  0.20    no command repeats back to back           the session is one long run
                        (folded length / length)
    duration    0.15    30 s to 2 h from first to last event      0 s; it falls to 0.25 at 8 h
                                                                  and stays there
    evidence    0.20    the outcome came from an indicator in     0.5: the outcome is the
                        the last three commands                   default (no indicator)

Nothing here reads a clock: the duration is the span of the event times.
"""

from __future__ import annotations

from operator import mul
from typing import Dict, NamedTuple, Sequence, Tuple

from .folding import folded_length
from .outcome import has_outcome_indicator

WEIGHTS: Dict[str, float] = {
    "variety": 0.25,
    "signal": 0.20,
    "repetition": 0.20,
    "duration": 0.15,
    "evidence": 0.20,
}
_WEIGHT_VALUES = tuple(WEIGHTS.values())
FULL_VARIETY = 4
SHORT_SECONDS = 30.0
LONG_SECONDS = 2 * 3600.0
VERY_LONG_SECONDS = 8 * 3600.0
VERY_LONG_SCORE = 0.25
DEFAULT_OUTCOME_EVIDENCE = 0.5


class Quality(NamedTuple):
    score: float
    components: Dict[str, float]


def duration_component(seconds: float) -> float:
    if seconds <= 0:
        return 0.0
    if seconds < SHORT_SECONDS:
        return seconds / SHORT_SECONDS
    if seconds <= LONG_SECONDS:
        return 1.0
    if seconds >= VERY_LONG_SECONDS:
        return VERY_LONG_SCORE
    # Linear from 1.0 at two hours down to 0.25 at eight.
    return 1.0 - (1.0 - VERY_LONG_SCORE) * (seconds - LONG_SECONDS) / (VERY_LONG_SECONDS - LONG_SECONDS)


def _components(names: Sequence[str], first_time: float, last_time: float, unmapped_rows: int) -> Tuple[float, ...]:
    """The five components, in WEIGHTS' order."""
    count = len(names)
    return (
        min(1.0, (len(set(names)) - 1) / (FULL_VARIETY - 1)),
        count / (count + max(0, unmapped_rows)),
        folded_length(names) / count if count > 1 else 1.0,
        duration_component(last_time - first_time),
        1.0 if has_outcome_indicator(names) else DEFAULT_OUTCOME_EVIDENCE,
    )


def _score(components: Tuple[float, ...]) -> float:
    return round(min(1.0, max(0.0, sum(map(mul, _WEIGHT_VALUES, components)))), 3)


def quality_score(names: Sequence[str], first_time: float, last_time: float, unmapped_rows: int = 0) -> float:
    """session_quality()'s score alone, without the dict of its components."""
    if not names:
        return 0.0
    return _score(_components(names, first_time, last_time, unmapped_rows))


def session_quality(names: Sequence[str], first_time: float, last_time: float, unmapped_rows: int = 0) -> Quality:
    """The score of a session with these command names (before folding), with its components.

    `unmapped_rows` counts the rows of the session's id, between its first and
    last event, whose type the event map does not know.
    """
    if not names:
        return Quality(0.0, dict.fromkeys(WEIGHTS, 0.0))
    components = _components(names, first_time, last_time, unmapped_rows)
    return Quality(_score(components), dict(zip(WEIGHTS, components)))
