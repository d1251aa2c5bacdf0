"""The one vocabulary for what becomes of a session, of one delivery attempt, and of a read.

Every string here is written to disk (state.db's outbox, history.db) or shown
by `status`, `history` and `report`, so the values never change; the names
are what the code says.  This module imports nothing of the package.

A session's fate (`Fate`), and who decides it::

    closed by core.sessions
     ├── TOO_SHORT          fewer than min_commands_for_learning      pipeline (at commit)
     ├── LOW_QUALITY        below min_quality                         pipeline (at commit)
     ├── ALREADY_DELIVERED  the ledger knew its content key           identity check / delivery thread
     └── PENDING            in the outbox, waiting for the API        pipeline (at commit)
          ├── LEARNED        2xx with a pattern_id                    delivery (Verdict.LEARNED)
          ├── NOT_LEARNED    2xx with pattern_id null (too short)     delivery (Verdict.NOT_LEARNED)
          ├── REJECTED       4xx, or parked after its own failures    delivery (Verdict.REJECTED, health)
          │    └── PENDING   again by `outbox retry`
          └── DROPPED        removed by `outbox drop`                 operator (history only)

The outbox keeps PENDING and REJECTED sessions whole; the others stay there
only as markers for a replay (a dropped one as TOO_SHORT, without commands).
The history keeps one entry per settled session, with every fate but PENDING
and ALREADY_DELIVERED.

One attempt's verdict (`Verdict`), from delivery's API client: LEARNED,
NOT_LEARNED and REJECTED settle the session with the fate of that name;
RETRY leaves it PENDING.

Why a session closed (`CloseReason`), from core.sessions and the pipeline::

    IDLE      no event of its id for the idle threshold (event or processing time)
    CLOSE_ON  one of the close_on commands ended it
    CHUNK     max_session_commands reached; the rest goes on as a new session
    EVICTED   the open-session cap closed the least recently active
    END       the run ended (backfill, shutdown of a backfill)
    REPLACED  the events database was replaced by a different history

Why the events database cannot be read now (`Unavailability`), from events.py;
STATE when the state store cannot be written (the pipeline).

What a replaced events database turned out to be (`Replacement`), from
database_identity.py; state.db keeps the last COPY or REWRITTEN for `status`
and `doctor`::

    SAME       the file read before
    COPY       a new file with the same rows where it was read: read on from the position
    REWRITTEN  a different history: read again from its start, past the ledger
"""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A str that is its value everywhere: in SQL, JSON, f-strings and comparisons."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class Fate(_Word):
    PENDING = "pending"
    LEARNED = "learned"
    NOT_LEARNED = "not_learned"
    REJECTED = "rejected"
    TOO_SHORT = "too_short"
    LOW_QUALITY = "low_quality"
    ALREADY_DELIVERED = "already_delivered"
    DROPPED = "dropped"


class Verdict(_Word):
    LEARNED = "learned"
    NOT_LEARNED = "not_learned"
    REJECTED = "rejected"
    RETRY = "retry"


class CloseReason(_Word):
    IDLE = "idle"
    CLOSE_ON = "close_on"
    CHUNK = "chunk"
    EVICTED = "evicted"
    END = "end"
    REPLACED = "replaced"
    DELETED = "rows_deleted"  # every row of it deleted while it was open (the newest rows of the table)


class Unavailability(_Word):
    MISSING = "missing"
    NO_TABLE = "no-table"
    NO_ROWID = "no-rowid"
    LOCKED = "locked"
    CORRUPT = "corrupt"
    UNREADABLE = "unreadable"
    STATE = "state"


class Replacement(_Word):
    SAME = "same"
    COPY = "copy"
    RENUMBERED = "renumbered"  # the same rows, moved down (a delete, then VACUUM)
    REWRITTEN = "rewritten"


# Fates of sessions that are done: in the outbox only as replay markers.
DONE = (Fate.LEARNED, Fate.NOT_LEARNED, Fate.TOO_SHORT, Fate.LOW_QUALITY, Fate.ALREADY_DELIVERED)
# Fates of sessions still in the outbox whole (commands kept).
UNDELIVERED = (Fate.PENDING, Fate.REJECTED)
# The API took these (it answered 2xx): what the unusual-session model learns from.
TAKEN_BY_API = (Fate.LEARNED, Fate.NOT_LEARNED)
# What a verdict that settles a session makes of it.
FATE_OF_VERDICT = {
    Verdict.LEARNED: Fate.LEARNED,
    Verdict.NOT_LEARNED: Fate.NOT_LEARNED,
    Verdict.REJECTED: Fate.REJECTED,
}
