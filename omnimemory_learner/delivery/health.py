"""The procedural API's health as one state, and the rule that parks a session failing on its own.

Guarantee: pure (no I/O, no threads, no clock: times are passed in), and the
state changes only through `_change`.  Two kinds of trouble are told apart by
the sessions around a failure:

* the API is down or failing everything (not reachable, or two sessions in a
  row failed, or it asked us to wait): DOWN, the API's backoff is waited and
  one session at a time probes it, so ten thousand pending sessions cost no
  more than one;
* one session fails on its own (it failed and the next session was taken):
  that session backs off by itself while the others go on, and once it has
  failed `limit` times over at least `limit_seconds` it is parked as rejected.

    state     meaning                                   left by
    HEALTHY   the last attempt settled its session      unreachable -> DOWN; failed -> SUSPECT or DOWN
    SUSPECT   one failure, judged by the next session    failed or unreachable -> DOWN; settled -> HEALTHY
    DOWN      not reachable, or failing everything      settled -> HEALTHY (failures keep it DOWN)

The last failure (`suspect`) is kept in DOWN too: the next session the API
settles judges it.  `tried` holds the sessions that failed since the API last
settled one: a probe goes to another session, so two sessions that always
fail cannot hold up the rest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from typing import Dict, Generic, List, NamedTuple, Optional, Protocol, Tuple, TypeVar

FIRST_BACKOFF_SECONDS = 1.0
# Never 0: the delivery thread takes 0 as "go on at once".
LEAST_WAIT_SECONDS = 0.001


class ApiHealth(Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    DOWN = "down"


HEALTHY, SUSPECT, DOWN = ApiHealth.HEALTHY, ApiHealth.SUSPECT, ApiHealth.DOWN


class Tried(Protocol):
    """What health needs of a session: its outbox id and its own failures so far."""

    @property
    def id(self) -> int: ...

    @property
    def failures(self) -> int: ...


S = TypeVar("S", bound=Tried)


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, cap: float, first: float = FIRST_BACKOFF_SECONDS, rng: Optional[random.Random] = None):
        self.cap = cap
        self.first = min(first, cap)
        self.failures = 0
        self._rng = rng or random.Random()

    def delay_after(self, failures: int) -> float:
        """The wait after `failures` failures in a row (the first wait after 0)."""
        ceiling = min(self.cap, self.first * (2 ** min(failures, 30)))
        # Half fixed, half random: spreads retries yet never retries at once.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def next_delay(self) -> float:
        delay = self.delay_after(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class Failure(Generic[S]):
    session: S
    error: str
    at: float  # wall-clock time


class Failed(NamedTuple):
    """A failure of a session the API answered (or left unanswered after connecting)."""

    retry_at: float  # when the session itself is due again (its own backoff)
    wait: Optional[float]  # seconds to wait for the API; None: go on with the next session


@dataclass(frozen=True)
class Settled(Generic[S]):
    """What the API settling a session says about the failures before it."""

    blamed: Optional[Failure[S]]  # the last failure was its session's own
    excused: List[int]  # sessions that failed while the API was in trouble: due again now
    down_for: Optional[float]  # seconds the API had been down, when it was


class Blame(NamedTuple):
    """A failure that was its session's own, as the outbox records it."""

    failures: int
    first_failed_at: float
    next_attempt_at: Optional[float]  # None when parked
    parked: bool
    span: float  # seconds from its first such failure to this one
    error: str  # the session's last_error


class Health(Generic[S]):
    """The API's health (HEALTHY / SUSPECT / DOWN), its backoff, and the parking rule."""

    def __init__(
        self,
        retry_max_seconds: float,
        limit: int = 10,
        limit_seconds: float = 3600.0,
        rng: Optional[random.Random] = None,
    ):
        self.state = HEALTHY
        self.backoff = Backoff(retry_max_seconds, rng=rng)
        self.limit = limit
        self.limit_seconds = limit_seconds
        self.down_since: Optional[float] = None  # wall-clock time it went DOWN
        self.retry_at: Optional[float] = None  # wall-clock time of the next probe, once a wait was asked
        self.suspect: Optional[Failure[S]] = None
        self.tried: Dict[int, None] = {}  # insertion-ordered set

    def configure(self, retry_max_seconds: float, limit: int, limit_seconds: float) -> None:
        self.backoff.cap = retry_max_seconds
        self.limit = limit
        self.limit_seconds = limit_seconds

    def _change(self, state: ApiHealth, now: float) -> None:
        """The one way into a state: what entering it means for the rest."""
        if state is DOWN and self.down_since is None:
            self.down_since = now
        elif state is HEALTHY:
            self.down_since = None
            self.retry_at = None
            self.suspect = None
            self.tried.clear()
            self.backoff.reset()
        elif state is SUSPECT:
            assert self.state is HEALTHY, f"SUSPECT is entered from HEALTHY only, not {self.state.name}"
        self.state = state

    # -- what happened to an attempt ------------------------------------------------

    def unreachable(self, now: float) -> float:
        """The API could not be reached (nothing sent): the seconds to wait before the next probe.

        The session is not held against anything: it stays due, so the oldest
        session probes and the order holds.
        """
        self._change(DOWN, now)
        return self._wait(True, None, now)

    def failed(self, session: S, error: str, now: float, asked_wait: Optional[float] = None) -> Failed:
        """The API failed this session: it backs off on its own, and maybe the API is in trouble."""
        earlier = self.suspect
        self.suspect = Failure(session, error, now)
        self.tried[session.id] = None
        # Out of the way for its own backoff, so the next session shows
        # whether it is this session or the API that fails.
        retry_at = now + self.backoff.delay_after(session.failures)
        if earlier is None and asked_wait is None:
            if self.state is HEALTHY:
                self._change(SUSPECT, now)
            return Failed(retry_at, None)
        # Two failures in a row (or the API asked us to wait): the API is in
        # trouble, and the earlier failure is not held against its session.
        self._change(DOWN, now)
        return Failed(retry_at, self._wait(earlier is not None, asked_wait, now))

    def settled(self, session_id: int, now: float) -> Settled[S]:
        """The API settled a session (2xx or a rejection): the failures before it are judged."""
        suspect = self.suspect
        # It failed and the next session was taken: its own failure.
        blamed = suspect if suspect is not None and suspect.session.id != session_id else None
        # The others failed while the API was in trouble: no mark against them.
        excused = [
            tried for tried in self.tried if tried != session_id and (suspect is None or tried != suspect.session.id)
        ]
        down_for = None if self.down_since is None else now - self.down_since
        self._change(HEALTHY, now)
        return Settled(blamed, excused, down_for)

    def start_over(self) -> None:
        """Every due session failed since the API last settled one: each may probe again."""
        self.tried.clear()

    def passed_over(self, session_id: int) -> bool:
        """The session failed since the API last settled one: another session probes first."""
        return session_id in self.tried

    def _wait(self, failing: bool, asked_wait: Optional[float], now: float) -> float:
        """The wait before the next request: the API's backoff while it fails, at least what it asked."""
        delay = self.backoff.next_delay() if failing else 0.0
        if asked_wait is not None:
            delay = max(delay, min(asked_wait, self.backoff.cap))
        delay = max(delay, LEAST_WAIT_SECONDS)
        self.retry_at = now + delay
        return delay

    # -- the parking rule -----------------------------------------------------------

    def blame(self, failure: Failure[S], recorded: Tuple[int, Optional[float]]) -> Blame:
        """A failure judged the session's own, given what the outbox holds: (failures, first_failed_at).

        Parked once it has `limit` such failures spanning at least
        `limit_seconds`; otherwise it backs off on its own.
        """
        failures = recorded[0] + 1
        first_failed_at = failure.at if recorded[1] is None else recorded[1]
        span = failure.at - first_failed_at
        retry_at = failure.at + self.backoff.delay_after(failure.session.failures + 1)
        if failures >= self.limit and span >= self.limit_seconds:
            error = f"failed {failures} times over {span:.0f} s while the API took other sessions; last: "
            return Blame(failures, first_failed_at, None, True, span, error + failure.error)
        return Blame(failures, first_failed_at, retry_at, False, span, failure.error)
