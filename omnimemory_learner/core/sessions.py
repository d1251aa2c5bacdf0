"""Grouping commands into workflow sessions (pure: no I/O, no threads, no clock).

Where a session is cut has one definition, per session id, over the events in
rowid order: an event starts a new session of its id when its event time is
at least the idle threshold after the latest event time of that id's current
session (the maximum over the session, not the last row's time); otherwise it
joins it.  Nothing about other ids' events, batch boundaries, the moment a row
was read or a restart changes that cut, so a row dated years ahead or behind,
or a step of the writer's clock, touches its own session at most: a step back
never cuts, a step forward past the threshold cuts one session of its id.

When a session is finished (goes to the outbox) is a separate question, and
no answer to it changes where the rule cuts:

* its id's next event cuts it (the rule above);
* it reached `max_commands` (a chunk: deterministic, by count);
* more than `max_open` sessions are open: the least recently arriving one is
  evicted (counted in `evicted_count`; the caller logs it);
* processing time: no event for it arrived for the threshold on the caller's
  monotonic clock (`close_idle`).  The caller asks only once it has read
  everything there is, so a backlog is cut exactly; live, a row arriving
  later than the threshold after its session's previous row can split only
  its own session.

Callers pass `now` (monotonic seconds) in; nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from bisect import bisect_right
from collections import OrderedDict
from operator import itemgetter
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .fates import CloseReason
from .folding import folded_length
from .identity import key_of_pairs
from .quality import quality_score

# One command as the API gets it: (command, timestamp, event_type).
Command = Tuple[str, float, str]
# One mapped event: (rowid, session_id, (command, event_type), timestamp).  The
# pair is shared by every event of its type (mapping.command_pairs).
MappedEvent = Tuple[int, str, Tuple[str, str], float]


class ClosedSession:
    """A finished session, ready for the outbox (or counted as too short)."""

    __slots__ = (
        "first_rowid",
        "last_rowid",
        "learnable",
        "low_quality",
        "pairs",
        "quality",
        "reason",
        "session_id",
        "times",
        "unmapped",
    )

    def __init__(
        self,
        session_id: str,
        pairs: Sequence[Tuple[str, str]],
        times: array,
        first_rowid: int,
        last_rowid: int,
        reason: str,
        learnable: bool,
        unmapped: int = 0,
    ):
        self.session_id: str = session_id
        self.pairs: Sequence[Tuple[str, str]] = pairs
        self.times: array = times  # array("d")
        self.first_rowid: int = first_rowid
        self.last_rowid: int = last_rowid
        self.reason: str = reason  # a CloseReason
        self.learnable: bool = learnable
        self.unmapped: int = unmapped
        # Filled in by the pipeline when it commits the session.
        self.quality: Optional[float] = None
        self.low_quality = False  # below min_quality: settled without being sent

    @classmethod
    def from_commands(
        cls,
        session_id: str,
        commands: Sequence[Command],
        first_rowid: int,
        last_rowid: int,
        reason: str = CloseReason.IDLE,
        learnable: bool = True,
    ) -> ClosedSession:
        return cls(
            session_id,
            [(command, event_type) for command, _, event_type in commands],
            array("d", [timestamp for _, timestamp, _ in commands]),
            first_rowid,
            last_rowid,
            reason,
            learnable,
        )

    @property
    def commands(self) -> List[Command]:
        return [(command, timestamp, event_type) for (command, event_type), timestamp in zip(self.pairs, self.times)]

    @property
    def key(self) -> str:
        """The content key (core.identity): the ledger's and the history's index, the Idempotency-Key."""
        return key_of_pairs(self.session_id, self.pairs, self.times)

    @property
    def names(self) -> List[str]:
        return list(map(itemgetter(0), self.pairs))

    def score_quality(self) -> float:
        """The quality score (core.quality) of the session as it is."""
        times = self.times
        if not len(times):
            return 0.0
        return quality_score(self.names, min(times), max(times), self.unmapped)

    def __repr__(self) -> str:
        return (
            f"ClosedSession({self.session_id!r}, {len(self.pairs)} commands, "
            f"rows {self.first_rowid}-{self.last_rowid}, {self.reason})"
        )


class _OpenSession(ClosedSession):
    """A session still open: the ClosedSession it becomes, being filled (finishing it makes no copy).

    A session is a list of references to the shared (command, event_type)
    pairs and an array of timestamps: 16 bytes a command, where a tuple per
    command with its own strings and float cost about 150.
    """

    __slots__ = ("last_arrival", "latest_time")
    pairs: list

    def __init__(self, session_id: str, rowid: int, timestamp: float, now: float):
        # Not ClosedSession.__init__: a call less per session on the catch-up's path.
        self.session_id = session_id
        self.pairs = []
        self.times = array("d")
        self.first_rowid = rowid
        self.last_rowid = rowid
        # The latest event time in the session: the rule cuts from it.
        self.latest_time = timestamp
        self.last_arrival = now
        # Rows of the id of types the event map does not know, while it was open (quality's "signal").
        self.unmapped = 0
        self.reason = CloseReason.IDLE  # set when it is finished (SessionTracker._finish), as is learnable
        self.learnable = False
        self.quality = None
        self.low_quality = False


class SessionTracker:
    def __init__(
        self,
        idle_seconds: float,
        min_commands: int = 3,
        max_commands: int = 1000,
        max_open: int = 10000,
        close_on: Iterable[str] = (),
        fold_repeats: bool = False,
    ):
        if idle_seconds <= 0 or min_commands < 1 or max_commands < 1 or max_open < 1:
            raise ValueError("idle_seconds, min_commands, max_commands and max_open must be positive")
        self.idle_seconds = idle_seconds
        self.min_commands = min_commands
        self.max_commands = max_commands
        self.max_open = max_open
        # Real-time learning: a session that receives one of these commands is finished at once.
        self.close_on = frozenset(close_on)
        # With folding, min_commands counts the commands a session has once its repeats are folded.
        self.fold_repeats = fold_repeats
        # Ordered by last arrival: the first entry is always the longest idle,
        # so the next deadline and eviction are O(1).
        self._open: OrderedDict[str, _OpenSession] = OrderedDict()
        # (first rowid, tie, session) of the sessions opened, closed ones left until they come up:
        # low_water, asked at every batch, in O(log n) instead of a pass over every open session.
        self._firsts: List[Tuple[int, int, _OpenSession]] = []
        self._tie = itertools.count()
        self.closed_count = 0
        self.too_short_count = 0
        self.evicted_count = 0

    # -- feeding -------------------------------------------------------------

    def feed(self, events: Iterable[MappedEvent], now: float) -> List[ClosedSession]:
        """Add mapped events in rowid order; returns the sessions they finished.

        `now` is the moment they were read (processing time), which only
        `close_idle` uses; where sessions are cut does not depend on it.
        """
        closed: List[ClosedSession] = []
        sessions = self._open
        get = sessions.get
        move_to_end = sessions.move_to_end
        finish = self._finish
        idle = self.idle_seconds
        max_commands = self.max_commands
        max_open = self.max_open
        close_on = self.close_on
        firsts, tie, push = self._firsts, self._tie, heapq.heappush
        for rowid, session_id, pair, timestamp in events:
            session = get(session_id)
            if session is None:
                session = sessions[session_id] = _OpenSession(session_id, rowid, timestamp, now)
                push(firsts, (rowid, next(tie), session))
                if len(sessions) > max_open:
                    # The memory cap: the least recently arriving session goes
                    # now, as it is; its id's next event starts a new one.
                    closed.append(finish(sessions.pop(next(iter(sessions))), CloseReason.EVICTED))
                    self.evicted_count += 1
            else:
                latest = session.latest_time
                if timestamp - latest >= idle:
                    closed.append(finish(session, CloseReason.IDLE))
                    session = sessions[session_id] = _OpenSession(session_id, rowid, timestamp, now)
                    push(firsts, (rowid, next(tie), session))
                elif timestamp > latest:
                    session.latest_time = timestamp
                move_to_end(session_id)
            pairs = session.pairs
            pairs.append(pair)
            session.times.append(timestamp)
            session.last_rowid = rowid
            session.last_arrival = now
            if len(pairs) >= max_commands:
                del sessions[session_id]
                closed.append(finish(session, CloseReason.CHUNK))
            elif close_on and pair[0] in close_on:
                # Per id and in rowid order, like the cut: the same on any read or replay.
                del sessions[session_id]
                closed.append(finish(session, CloseReason.CLOSE_ON))
        return closed

    def note_unmapped(self, counts: Mapping[str, int]) -> None:
        """Rows of unmapped types, per id, read in the last batch: they count against its open session."""
        sessions = self._open
        for session_id, count in counts.items():
            session = sessions.get(session_id)
            if session is not None:
                session.unmapped += count

    # -- closing -------------------------------------------------------------

    def close_idle(self, now: float) -> List[ClosedSession]:
        """Close the sessions no event has reached for the threshold (processing time)."""
        deadline_arrival = now - self.idle_seconds
        return self._close_from_front(lambda session: session.last_arrival > deadline_arrival)

    def _close_from_front(self, still_active: Callable[[_OpenSession], bool]) -> List[ClosedSession]:
        """Close idle sessions from the longest idle on, up to the first still active."""
        closed = []
        sessions = self._open
        while sessions:
            session = sessions[next(iter(sessions))]
            if still_active(session):
                break
            del sessions[session.session_id]
            closed.append(self._finish(session, CloseReason.IDLE))
        return closed

    def close_all(self, reason: str = CloseReason.END) -> List[ClosedSession]:
        """Close every open session (end of a backfill, a replaced database)."""
        closed = [self._finish(session, reason) for session in self._open.values()]
        self._open.clear()
        self._firsts.clear()
        return closed

    def _finish(self, session: _OpenSession, reason: str) -> ClosedSession:
        """The session as closed: the same object, its reason and learnable set (it has left `_open`)."""
        pairs = session.pairs
        length = folded_length([command for command, _ in pairs]) if self.fold_repeats else len(pairs)
        learnable = length >= self.min_commands
        self.closed_count += 1
        if not learnable:
            self.too_short_count += 1
        session.reason = reason
        session.learnable = learnable
        return session

    def close_above(self, rowid: int, reason: str) -> List[ClosedSession]:
        """Close the open sessions whose every row is above `rowid` (those rows were deleted): as they are."""
        gone = [session for session in self._open.values() if session.first_rowid > rowid]
        for session in gone:
            del self._open[session.session_id]
        return [self._finish(session, reason) for session in gone]

    def renumber(self, shift: int) -> None:
        """The rows moved `shift` rowids down (a delete, then VACUUM): the open sessions' rowids with them."""
        for session in self._open.values():
            session.first_rowid -= shift
            session.last_rowid -= shift
        self._index_firsts()

    def _index_firsts(self) -> None:
        self._firsts = [(session.first_rowid, next(self._tie), session) for session in self._open.values()]
        heapq.heapify(self._firsts)

    # -- questions the service loop asks ---------------------------------------

    def next_deadline(self) -> Optional[float]:
        """When the longest-idle session reaches the threshold (processing time)."""
        if not self._open:
            return None
        return self._open[next(iter(self._open))].last_arrival + self.idle_seconds

    def low_water(self) -> Optional[int]:
        """The smallest rowid an open session still needs, or None."""
        sessions, firsts = self._open, self._firsts
        if not sessions:
            return None
        if len(firsts) > 2 * len(sessions) + 64:
            self._index_firsts()  # closed sessions' entries: at most as many again as the open ones
        # Every open session has its entry (feed); one whose session is no longer its id's is closed.
        while True:
            rowid, _, session = firsts[0]
            if sessions.get(session.session_id) is session:
                return rowid
            heapq.heappop(firsts)

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def open_commands(self) -> int:
        return sum(len(session.pairs) for session in self._open.values())


def drop_replayed(
    events: Sequence[MappedEvent], closed_ranges: Dict[str, List[Tuple[int, int]]]
) -> Sequence[MappedEvent]:
    """Leave out events that belong to sessions already closed before a restart.

    After a restart the reader goes back to the low-water mark; the events of
    sessions that were already closed (and are in the outbox or delivered)
    come by again and must not form a session a second time.  A closed
    session owns every event of its id between its first and last rowid.
    Each id's ranges must be sorted by first rowid (StateStore.closed_ranges
    gives them so).
    """
    if not closed_ranges:
        return events
    # The ranges of one id do not overlap (its sessions follow each other in
    # rowid order) and come sorted by first rowid: a bisect finds the one that
    # could hold a row, so an id with many closed sessions costs log(n) a row.
    kept = []
    for event in events:
        ranges = closed_ranges.get(event[1])
        if ranges:
            index = bisect_right(ranges, (event[0], _AFTER_ANY_ROWID)) - 1
            if index >= 0 and event[0] <= ranges[index][1]:
                continue
        kept.append(event)
    return kept


# Greater than any rowid (SQLite's are 64-bit): (rowid, this) sorts after every (rowid, last).
_AFTER_ANY_ROWID = 1 << 64
