"""The outbox: closed sessions waiting for the API, as the delivery side and `outbox` work on them.

The reading side puts sessions in (StateStore.commit, in the transaction that
moves the position); everything after that is here: the outbox in its order
(pending() by id, each session due by its own schedule), each attempt's
record, the settling writes (learned, not learned, rejected, parked, already
delivered, dropped) and the operator's retry.  Every write is one
transaction on the state store's own connection (sqlite_file.StoreFile), and
a write that settles a session only moves one still PENDING (or, for `drop`,
still undelivered): a session settled twice stays settled once.

Also the row format of a session's commands (encode_commands), shared with
the commit that writes them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from array import array
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..core.evidence import LAST3, OutcomeRule
from ..core.fates import UNDELIVERED, Fate
from ..core.identity import session_key
from ..core.quality import quality_score
from ..core.sessions import ClosedSession
from .sqlite_file import StoreFile

_compact_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_BIG_ENDIAN = sys.byteorder == "big"

LAST3_RULE = OutcomeRule(LAST3)

# PendingSession's fields, as the outbox keeps them.
PENDING_COLUMNS = "id, idempotency_key, session_id, outcome, commands, attempts, failures, quality, reason, unmapped"


class PendingSession(NamedTuple):
    id: int
    idempotency_key: str
    session_id: str
    outcome: Optional[str]  # None until judged (judged): the outbox keeps none (state.db schema 2)
    commands: list  # [(command, timestamp, event_type), ...]
    attempts: int
    failures: int = 0  # the session's own failures (see StateStore.blame_failure)
    quality: Optional[float] = None  # None: scored when sent (see scored_quality)
    reason: Optional[str] = None  # why it closed
    unmapped: Optional[int] = None
    # The session's content key (core/identity.py), made once when it is taken
    # from the outbox: the ledger's and the history's index, and its
    # Idempotency-Key (the outbox stores the key empty: it is made from the row).
    content_key: str = ""
    # The outcome's rule and the session's rework count (core/evidence.py), once judged.
    rule: Optional[str] = None
    rework: Optional[int] = None

    def judged(self, rule: OutcomeRule) -> PendingSession:
        """The session with its outcome judged by `rule`, from its commands as they are (before folding).

        Judged when it is sent or settled, in the delivery thread: nothing of
        it is worked out on the reading path, and the rule in force then
        (a reload may change it) is the one the API is told.
        """
        if self.rule is not None:
            return self
        names = [command for command, _, _ in self.commands]
        if self.outcome is not None:
            # Committed by a build before outcome rules (state.db schema 1), which judged it by the
            # original rule and may have sent it already (a POST left unanswered): told as it was.
            judged = LAST3_RULE.judged(names)
            return self._replace(rule=judged.rule, rework=judged.rework)
        judged = rule.judged(names)
        return self._replace(outcome=judged.outcome, rule=judged.rule, rework=judged.rework)

    @property
    def told(self) -> str:
        """The outcome the API is told: a session is sent only once judged, never with a null outcome."""
        if self.outcome is None:
            raise ValueError(f"outbox session {self.id} was not judged (PendingSession.judged)")
        return self.outcome

    def scored_quality(self) -> Optional[float]:
        """The quality score: as committed, else worked out now from what the session was read with.

        The same inputs as at close (names, event times, unmapped rows), so
        the same score.
        """
        if self.quality is not None or self.unmapped is None:
            return self.quality
        commands = self.commands
        if not commands:
            return 0.0
        times = [timestamp for _, timestamp, _ in commands]
        return quality_score([command for command, _, _ in commands], min(times), max(times), self.unmapped)


class _PairJSON(dict):
    """(command, event_type) -> its JSON text as UTF-8 bytes, made once per pair.

    Bounded by the event map's size: pairs come from command_pairs().
    """

    def __missing__(self, pair):
        if len(self) > 4096:
            self.clear()
        text = self[pair] = _compact_json(pair).encode()
        return text


_pair_json = _PairJSON().__getitem__


def encode_commands(session: ClosedSession) -> bytes:
    """A session's commands as the outbox keeps them until delivery.

    JSON of the (command, event_type) pairs, a NUL (never in JSON text), then
    the timestamps as little-endian doubles: the array's bytes are exact and
    cost nothing to write, where JSON would make a repr of every float on the
    catch-up's path.  Joined as bytes: no text of the whole list to encode.
    """
    times = session.times
    if _BIG_ENDIAN:
        times = array("d", times)  # a copy: the session's own array stays as it is
        times.byteswap()
    return b"".join((b"[", b",".join(map(_pair_json, session.pairs)), b"]\0", times.tobytes()))


def decode_commands(value) -> List[Tuple[str, float, str]]:
    """encode_commands() undone: [(command, timestamp, event_type), ...]."""
    split = value.index(b"\0")
    times = array("d")
    times.frombytes(value[split + 1 :])
    if _BIG_ENDIAN:
        times.byteswap()
    return [
        (command, timestamp, event_type) for (command, event_type), timestamp in zip(json.loads(value[:split]), times)
    ]


def content_key(session_id: str, commands: List[Tuple[str, float, str]]) -> str:
    return session_key(
        session_id, [event_type for _, _, event_type in commands], [timestamp for _, timestamp, _ in commands]
    )


def _pending_session(row: tuple) -> PendingSession:
    """A PendingSession from PENDING_COLUMNS, its content key made now (an empty stored key is that key)."""
    commands = decode_commands(row[4])
    key = content_key(row[2], commands)
    return PendingSession(
        row[0], row[1] or key, row[2], row[3], commands, row[5], row[6], row[7], row[8], row[9], content_key=key
    )


def add_counters(db: sqlite3.Connection, counters: Dict[str, int]) -> None:
    db.executemany(
        "UPDATE counters SET value = value + ? WHERE name = ?",
        [(delta, name) for name, delta in counters.items() if delta],
    )


class Outbox:
    """The sessions table as the delivery thread and `outbox` see it; shares its StateStore's connection."""

    def __init__(self, file: StoreFile):
        self._file = file

    @property
    def _db(self) -> sqlite3.Connection:
        return self._file.db

    def _transaction(self):
        return self._file.transaction()

    def mark_already_delivered(self, session_id: int) -> None:
        """Settled without sending: the delivered ledger has its content key."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET status = ?, commands = NULL, delivered_at = ? WHERE id = ? AND status = ?",
                (Fate.ALREADY_DELIVERED, time.time(), session_id, Fate.PENDING),
            )
            add_counters(db, {"sessions_already_delivered": 1})

    def pending(
        self, limit: int = 100, after_id: int = 0, due_by: Optional[float] = None, latest: Optional[float] = None
    ) -> List[PendingSession]:
        """Pending sessions in outbox order; with `due_by`, only those due by then.

        `latest`: the furthest time a schedule can be (now plus the longest
        backoff); one beyond it was made before the wall clock was stepped
        back, and is due now rather than hours late.
        """
        self._file.ensure()  # another connection may have restored a deleted file
        due, times = "", ()  # type: Tuple[str, Tuple[float, ...]]
        if due_by is not None:
            due, times = " AND (next_attempt_at IS NULL OR next_attempt_at <= ?", (due_by,)
            if latest is not None:
                due, times = due + " OR next_attempt_at > ?", (due_by, latest)
            due += ")"
        return [
            _pending_session(row)
            for row in self._db.execute(
                f"SELECT {PENDING_COLUMNS} FROM sessions WHERE status = ? AND id > ?{due} ORDER BY id LIMIT ?",
                (Fate.PENDING, after_id, *times, limit),
            )
        ]

    def undelivered(self, session_id: int) -> Optional[PendingSession]:
        """One pending or rejected session, whole (what `outbox drop` records before it drops it)."""
        row = self._db.execute(
            f"SELECT {PENDING_COLUMNS} FROM sessions WHERE id = ? AND status IN (?, ?) AND commands IS NOT NULL",
            (session_id, *UNDELIVERED),
        ).fetchone()
        if row is None:
            return None
        return _pending_session(row)

    def next_due(self, now: float) -> Optional[float]:
        """When the earliest pending session that backs off is due again (None: none does)."""
        row = self._db.execute(
            "SELECT min(next_attempt_at) FROM sessions WHERE status = ? AND next_attempt_at > ?", (Fate.PENDING, now)
        ).fetchone()
        return row[0]

    def mark_delivered(self, session_id: int, pattern_id: Optional[str]) -> None:
        status = Fate.LEARNED if pattern_id else Fate.NOT_LEARNED
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET status = ?, pattern_id = ?, delivered_at = ?, commands = NULL,"
                " attempts = attempts + 1 WHERE id = ?",
                (status, pattern_id, time.time(), session_id),
            )
            add_counters(db, {"patterns_learned" if pattern_id else "sessions_not_learned": 1})
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_delivery_at', ?)", (repr(time.time()),))

    def mark_rejected(self, session_id: int, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET status = ?, last_error = ?, attempts = attempts + 1 WHERE id = ?",
                (Fate.REJECTED, error, session_id),
            )
            add_counters(db, {"sessions_rejected": 1, "errors": 1})

    def note_failure(self, session_id: int, error: str, retry_at: Optional[float] = None) -> None:
        """An attempt that failed; the session is next due at `retry_at` (None: now)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET last_error = ?, attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                (error, retry_at, session_id),
            )
            add_counters(db, {"errors": 1})
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_error', ?)", (f"{time.time()!r} {error}",)
            )

    def failure_record(self, session_id: int) -> Optional[Tuple[int, Optional[float]]]:
        """(failures, first_failed_at) of a pending session's own failures; None when it is not pending.

        In a write transaction, as the write that follows it (blame_failure):
        a busy store is a StateError, which delivery retries.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT failures, first_failed_at FROM sessions WHERE id = ? AND status = ?", (session_id, Fate.PENDING)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def blame_failure(
        self,
        session_id: int,
        error: str,
        failures: int,
        first_failed_at: float,
        next_attempt_at: Optional[float],
        parked: bool,
    ) -> bool:
        """A failure that was the session's own, as delivery judged it: its count, and parked or not.

        False when the session is no longer pending (settled or dropped meanwhile).
        """
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE sessions SET failures = ?, first_failed_at = ?, next_attempt_at = ?, status = ?,"
                " last_error = ? WHERE id = ? AND status = ?",
                (
                    failures,
                    first_failed_at,
                    next_attempt_at,
                    Fate.REJECTED if parked else Fate.PENDING,
                    error,
                    session_id,
                    Fate.PENDING,
                ),
            )
            if cursor.rowcount != 1:
                return False
            if parked:
                add_counters(db, {"sessions_rejected": 1})
            return True

    def reschedule(self, session_ids: List[int], at: Optional[float]) -> None:
        """Pending sessions due at `at` (None: now) instead of their own time."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE sessions SET next_attempt_at = ? WHERE id = ? AND status = ?",
                [(at, session_id, Fate.PENDING) for session_id in session_ids],
            )

    def retry_rejected(self, session_ids: Optional[List[int]] = None) -> int:
        """Rejected sessions back to pending, due now, with a clean record of failures."""
        fresh = "status = ?, failures = 0, first_failed_at = NULL, next_attempt_at = NULL"
        with self._transaction() as db:
            if session_ids:
                marks = ",".join("?" * len(session_ids))
                cursor = db.execute(
                    f"UPDATE sessions SET {fresh} WHERE status = ? AND id IN ({marks})",
                    (Fate.PENDING, Fate.REJECTED, *session_ids),
                )
            else:
                cursor = db.execute(f"UPDATE sessions SET {fresh} WHERE status = ?", (Fate.PENDING, Fate.REJECTED))
            return cursor.rowcount

    def drop(self, session_id: int) -> bool:
        """Remove an undelivered session for good (the operator asked)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE sessions SET status = ?, commands = NULL WHERE id = ? AND status IN (?, ?)",
                (Fate.TOO_SHORT, session_id, *UNDELIVERED),
            )
            return cursor.rowcount == 1

    def entries(self, statuses=UNDELIVERED, outcome_rule: Optional[OutcomeRule] = None) -> List[dict]:
        """The sessions of these statuses, as `outbox` shows them.

        `outcome_rule`: what judges those not judged yet (pending: the
        delivery thread judges a session when it sends it), as it would now.
        """
        marks = ",".join("?" * len(statuses))
        listed = [
            {
                "id": row[0],
                "session_id": row[1],
                "status": row[2],
                "outcome": row[3],
                "commands": row[4],
                "attempts": row[5],
                "last_error": row[6],
                "closed_at": row[7],
                "first_rowid": row[8],
                "last_rowid": row[9],
                "next_attempt_at": row[10],
                "failures": row[11] or 0,
                "first_failed_at": row[12],
                "_commands": row[13],
            }
            for row in self._db.execute(
                "SELECT id, session_id, status, outcome, n_commands, attempts, last_error, closed_at,"
                " first_rowid, last_rowid, next_attempt_at, failures,"
                f" first_failed_at, commands FROM sessions WHERE status IN ({marks}) ORDER BY id",
                tuple(statuses),
            )
        ]
        for entry in listed:
            commands = entry.pop("_commands")
            if outcome_rule is not None and entry["outcome"] is None and commands is not None:
                entry["outcome"] = outcome_rule.judged([name for name, _, _ in decode_commands(commands)]).outcome
        return listed
