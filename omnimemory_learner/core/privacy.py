"""What the user says may not be learned: the one filter every path asks.

`exclude_session_ids` holds glob patterns, matched against the whole session
id, case-sensitive: `*` any run of characters (none included), `?` one
character, `[abc]` one of them, `[!abc]` one not among them, `[a-z]` a range.
A pattern with no wildcard names one id exactly.  `exclude_event_types` holds
event types, exact.  An excluded row is never part of a session.

The patterns are compiled once into one regular expression, and each session
id is decided once (a bounded cache), not per row: the filter costs a batch a
set of its ids, plus a pass over its events only when an event type is
excluded or one of its ids is.  Pure: no I/O, no clock; one object a
configuration, built again on reload.
"""

from __future__ import annotations

import fnmatch
import re
from operator import itemgetter
from typing import Dict, FrozenSet, Iterable, List, Optional, Pattern, Sequence, Set, Tuple, TypeVar

# Ids decided and remembered; past it the cache starts again (an id is then decided once more).
DECIDED_HELD = 100_000

_ID = itemgetter(1)
EventT = TypeVar("EventT", bound=tuple)


class PatternError(ValueError):
    """A pattern that is not a glob this module reads; the message names it and says why."""


def check_pattern(pattern: str) -> Optional[str]:
    """Why `pattern` is not a valid glob (None: it is)."""
    if not pattern:
        return "an empty pattern matches nothing"
    if "\0" in pattern:
        return "a pattern cannot hold a NUL character"
    position = 0
    while position < len(pattern):
        if pattern[position] == "[":
            # fnmatch would read an unclosed "[" as itself; said here, it is surely a mistake.
            end = position + 1
            if end < len(pattern) and pattern[end] == "!":
                end += 1
            if end < len(pattern) and pattern[end] == "]":
                end += 1  # a "]" first in the set is one of its characters
            close = pattern.find("]", end)
            if close < 0:
                return f"the '[' at character {position + 1} is never closed"
            position = close
        position += 1
    return None


def compile_patterns(patterns: Sequence[str]) -> Optional[Pattern[str]]:
    """One expression matching an id any pattern matches (None: no pattern); PatternError naming a bad one."""
    for pattern in patterns:
        problem = check_pattern(pattern)
        if problem is not None:
            raise PatternError(f"invalid pattern {pattern!r}: {problem}")
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns))


class Privacy:
    """The exclusion rules of one configuration, and the ids already decided."""

    __slots__ = ("_excluded", "_match", "_seen", "event_types", "patterns")

    def __init__(self, patterns: Sequence[str] = (), event_types: Iterable[str] = ()):
        self.patterns: Tuple[str, ...] = tuple(patterns)
        self.event_types: FrozenSet[str] = frozenset(event_types)
        expression = compile_patterns(self.patterns)
        self._match = expression.match if expression is not None else None
        # Every id decided, and those excluded among them: a batch's ids are looked up as sets, in C.
        self._seen: Set[str] = set()
        self._excluded: Set[str] = set()

    @property
    def active(self) -> bool:
        """Any rule at all (none: every path skips the filter)."""
        return self._match is not None or bool(self.event_types)

    def excludes_id(self, session_id: str) -> bool:
        return bool(self.excluded_among({session_id}))

    def excluded_among(self, session_ids: Set[str]) -> Set[str]:
        """The ids of this set the rules exclude; only ids never seen before are matched."""
        unknown = session_ids - self._seen
        if unknown:
            if len(self._seen) + len(unknown) > DECIDED_HELD:
                # Started again before this set's ids are decided, so none of them is forgotten meanwhile.
                self._seen.clear()
                self._excluded.clear()
                unknown = set(session_ids)
            match = self._match
            self._seen.update(unknown)
            if match is not None:
                self._excluded.update(session_id for session_id in unknown if match(session_id) is not None)
        return session_ids & self._excluded

    def keep(self, events: List[EventT], unmapped: Optional[Dict[str, int]] = None) -> Tuple[List[EventT], int]:
        """The events (rowid, session_id, (command, event_type), time) no rule excludes, and how many it did.

        `unmapped` (rows of other types per id, for quality) loses the excluded ids: their rows count for nothing.
        """
        if not self.active:
            return events, 0
        ids = set(map(_ID, events))
        if unmapped:
            ids.update(unmapped)
        excluded_ids = self.excluded_among(ids) if self._match is not None else set()
        if unmapped and excluded_ids:
            for session_id in excluded_ids.intersection(unmapped):
                del unmapped[session_id]
        types = self.event_types
        if not excluded_ids and not types:
            return events, 0
        if types:
            kept = [event for event in events if event[1] not in excluded_ids and event[2][1] not in types]
        else:
            kept = [event for event in events if event[1] not in excluded_ids]
        return kept, len(events) - len(kept)

    def excludes_session(self, session_id: str, event_types: Iterable[str] = ()) -> bool:
        """A stored session (outbox, history) the rules exclude now: its id, or any of its event types."""
        if self.excludes_id(session_id):
            return True
        types = self.event_types
        return bool(types) and any(event_type in types for event_type in event_types)

    def describe(self) -> List[str]:
        """The effective rules, for check-config and doctor."""
        lines = []
        if self.patterns:
            lines.append("session ids matching " + ", ".join(map(repr, self.patterns)))
        if self.event_types:
            lines.append("event types " + ", ".join(map(repr, sorted(self.event_types))))
        return lines


# No rule at all: what a path given no configuration asks.
NO_RULES = Privacy()
