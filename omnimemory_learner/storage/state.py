"""Durable state: the read position, the outbox of closed sessions, counters.

Exactly once, without storing open sessions:

* the committed position is a low-water mark: every event after `resume_after`
  may still be needed by an open session; `replay_until` is how far the
  reader had read;
* each closed session is written in the same transaction that advances the
  position, so a session is either closed and in the outbox, or will be
  rebuilt from the events on restart; never both, never neither;
* a closed session stays recorded (delivered or not, learnable or too short)
  while its rows are above the low-water mark, so the replay after a restart
  skips its events instead of forming it again.

Each pending session carries its own schedule (next_attempt_at) and the
count of failures that were its own, so that one session the API keeps
failing backs off, and is parked, without holding up the others;
delivery/health.py decides what counts.

The state store is SQLite in WAL mode.  The reading side commits with
synchronous=FULL: a closed session that was committed survives a crash of the
process and of the machine.  The delivery thread records results with
synchronous=NORMAL (per connection): in WAL mode that survives a crash of the
process, and the next FULL commit makes it durable on disk too; a power loss
in between can only cause a resend with the same idempotency key.  An fsync
per delivered session would cap delivery at the disk's fsync rate.

The file itself (created 0600, its schema version and migrations, its repair
when deleted or replaced under the service) is sqlite_file.StoreFile's.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from array import array
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..core.fates import DONE, UNDELIVERED, Fate
from ..core.identity import session_key
from ..core.quality import quality_score
from ..core.sessions import ClosedSession
from .files import STATE_FILE
from .migrations import COUNTERS as COUNTERS  # the counters state.db keeps
from .sqlite_file import StateError, StoreFile

_compact_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_BIG_ENDIAN = sys.byteorder == "big"

_DONE_MARKS = ",".join("?" * len(DONE))


class Fingerprint(NamedTuple):
    """The events database's rows where it was read, each [rowid, repr of the row] (None: none read).

    What tells a copy of the database (same rows, new inode) from a
    rewritten one (database_identity.py).
    """

    first: Optional[list]  # the table's first row
    last: Optional[list]  # the last row read


def _position_meta(position: Position, now: float) -> List[Tuple[str, Optional[str]]]:
    """The meta rows a commit writes for its position."""
    rows_read = position.fingerprint
    fingerprint = (
        _compact_json({"first": rows_read.first, "last": rows_read.last})
        if rows_read is not None and (rows_read.first or rows_read.last)
        else None
    )
    return [
        ("resume_after", str(position.resume_after)),
        ("replay_until", str(position.replay_until)),
        ("db_identity", json.dumps(list(position.db_identity)) if position.db_identity else None),
        ("committed_at", repr(now)),
        ("rewrite_head", None if position.rewrite_head is None else str(position.rewrite_head)),
        ("db_fingerprint", fingerprint),
    ]


def _marker_row(session: ClosedSession, status: str, now: float) -> tuple:
    """A closed session kept as a marker, as a row of the sessions table (see commit's INSERT)."""
    return (
        "",
        session.session_id,
        session.first_rowid,
        session.last_rowid,
        status,
        None,
        len(session.pairs),
        None,
        session.reason,
        now,
        session.quality,
        session.unmapped,
    )


class Position(NamedTuple):
    """Where reading is, as one value: committed whole with the outbox, read back whole."""

    resume_after: int  # low-water mark: re-read every rowid above it
    replay_until: int  # how far the reader had read when it was committed
    db_identity: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) of the file read
    fingerprint: Optional[Fingerprint] = None
    # After a rewritten database: sessions with rows up to here may have been
    # delivered before (the ledger decides); None once every such row is read again.
    rewrite_head: Optional[int] = None


class PendingSession(NamedTuple):
    id: int
    idempotency_key: str
    session_id: str
    outcome: str
    commands: list  # [(command, timestamp, event_type), ...]
    attempts: int
    failures: int = 0  # the session's own failures (see StateStore.blame_failure)
    quality: Optional[float] = None  # None: scored when sent (see scored_quality)
    reason: Optional[str] = None  # why it closed
    unmapped: Optional[int] = None
    # The session's content key (core/identity.py), made once when it is taken
    # from the outbox: the ledger's and the history's index.  Its Idempotency-Key
    # is the same, except in rows of a build that used random keys.
    content_key: str = ""

    def scored_quality(self) -> Optional[float]:
        """The quality score: as committed, else worked out now from what the session was read with.

        The same inputs as at close (names, event times, unmapped rows), so
        the same score.  None for a session of a build before quality.
        """
        if self.quality is not None or self.unmapped is None:
            return self.quality
        commands = self.commands
        if not commands:
            return 0.0
        times = [timestamp for _, timestamp, _ in commands]
        return quality_score([command for command, _, _ in commands], min(times), max(times), self.unmapped)


class _PairJSON(dict):
    """(command, event_type) -> its JSON text, made once per pair.

    Bounded by the event map's size: pairs come from command_pairs().
    """

    def __missing__(self, pair):
        if len(self) > 4096:
            self.clear()
        text = self[pair] = _compact_json(pair)
        return text


_pair_json = _PairJSON().__getitem__


def encode_commands(session: ClosedSession) -> bytes:
    """A session's commands as the outbox keeps them until delivery.

    JSON of the (command, event_type) pairs, a NUL (never in JSON text), then
    the timestamps as little-endian doubles.  A catch-up commits a session
    every dozen events: JSON of the floats (a repr each) was two thirds of
    that commit's cost; the bytes of the array are free, and exact.
    """
    times = session.times
    if _BIG_ENDIAN:
        times = array("d", times)  # a copy: the session's own array stays as it is
        times.byteswap()
    names = "[" + ",".join(map(_pair_json, session.pairs)) + "]"
    return names.encode() + b"\0" + times.tobytes()


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


def _content_key(session_id: str, commands: List[Tuple[str, float, str]]) -> str:
    return session_key(
        session_id, [event_type for _, _, event_type in commands], [timestamp for _, timestamp, _ in commands]
    )


def _pending_session(row: tuple) -> PendingSession:
    """A PendingSession from _pending_columns(), its content key made now (an empty stored key is that key)."""
    commands = decode_commands(row[4])
    key = _content_key(row[2], commands)
    return PendingSession(
        row[0], row[1] or key, row[2], row[3], commands, row[5], row[6], row[7], row[8], row[9], content_key=key
    )


class StateStore:
    """One connection to the state database; each thread opens its own."""

    def __init__(self, state_dir: Path, create: bool = True, synchronous: str = "FULL"):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        if not create and not self.path.exists():
            raise StateError(f"no state at {self.path}")
        self._made_keys: Dict[int, str] = {}  # see outbox_keys
        self._file = StoreFile(self.path, create, synchronous)

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection to the file at our path (a new one after a repair)."""
        return self._file.db

    def close(self) -> None:
        self._file.close()

    def _pending_columns(self) -> str:
        """PendingSession's fields, as the outbox keeps them."""
        return "id, idempotency_key, session_id, outcome, commands, attempts, failures, quality, reason, unmapped"

    def _transaction(self):
        return self._file.transaction()

    # -- position --------------------------------------------------------------

    def _meta(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def position(self) -> Position:
        identity = self._meta("db_identity")
        fingerprint = self._meta("db_fingerprint")
        rewrite_head = self._meta("rewrite_head")
        rows = json.loads(fingerprint) if fingerprint else None
        return Position(
            int(self._meta("resume_after") or 0),
            int(self._meta("replay_until") or 0),
            tuple(json.loads(identity)) if identity else None,
            Fingerprint(rows.get("first"), rows.get("last")) if rows else None,
            int(rewrite_head) if rewrite_head else None,
        )

    def closed_ranges(self, after_rowid: int) -> Dict[str, List[Tuple[int, int]]]:
        """Row ranges of closed sessions still above the low-water mark, each id's sorted by first rowid."""
        ranges: Dict[str, List[Tuple[int, int]]] = {}
        for session_id, first, last in self._db.execute(
            "SELECT session_id, first_rowid, last_rowid FROM sessions WHERE last_rowid > ? ORDER BY first_rowid",
            (after_rowid,),
        ):
            ranges.setdefault(session_id, []).append((first, last))
        return ranges

    def commit(
        self,
        position: Position,
        closed: Iterable[ClosedSession],
        counters: Dict[str, int],
        known: Iterable[ClosedSession] = (),
    ) -> int:
        """Record closed sessions and advance the position, atomically.

        `known`: sessions read again after a rewrite that the ledger or the
        outbox has already; kept only as markers for a replay.  Returns the
        number of sessions added to the outbox.
        """
        now = time.time()
        resume_after = position.resume_after
        rows = self._outbox_rows(closed, known, resume_after, now)
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO sessions (idempotency_key, session_id, first_rowid, last_rowid, status, outcome,"
                " n_commands, commands, reason, closed_at, quality, unmapped) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", _position_meta(position, now))
            self._add_counters(db, counters)
            tally: Dict[str, int] = {}
            for row in rows:
                tally[row[4]] = tally.get(row[4], 0) + 1
            db.executemany(
                "INSERT INTO status_counts (status, n) VALUES (?, ?) ON CONFLICT (status) DO UPDATE SET n = n + ?",
                [(status, n, n) for status, n in tally.items()],
            )
            # Markers below the low-water mark can never be met again.
            db.execute(
                f"DELETE FROM sessions WHERE last_rowid <= ? AND status IN ({_DONE_MARKS})",
                (resume_after, *DONE),
            )
        return sum(1 for row in rows if row[4] == Fate.PENDING)

    @staticmethod
    def _outbox_rows(
        closed: Iterable[ClosedSession], known: Iterable[ClosedSession], resume_after: int, now: float
    ) -> List[tuple]:
        """The sessions table's rows for a commit: whole sessions to send, markers for the rest."""
        rows: List[tuple] = []
        for session in closed:
            # The Idempotency-Key is the content key (core/identity.py): a session
            # read again (a replay, a replaced or rewritten database, a backfill)
            # is sent with the same one, and the delivered ledger knows it.  It is
            # made when the session is taken from the outbox (_pending_session),
            # in the delivery thread, off the reading path.  Markers need none.
            if session.learnable and not session.low_quality:
                rows.append(
                    (
                        "",
                        session.session_id,
                        session.first_rowid,
                        session.last_rowid,
                        Fate.PENDING,
                        session.outcome,
                        len(session.pairs),
                        encode_commands(session),
                        session.reason,
                        now,
                        session.quality,
                        session.unmapped,
                    )
                )
            elif session.last_rowid > resume_after:
                # Too short or below min_quality: kept only as a marker while a replay could meet its rows.
                status = Fate.LOW_QUALITY if session.learnable else Fate.TOO_SHORT
                rows.append(_marker_row(session, status, now))
        for session in known:
            if session.last_rowid > resume_after:
                rows.append(_marker_row(session, Fate.ALREADY_DELIVERED, now))
        return rows

    def note_replaced(self, verdict: str, why: str) -> None:
        """The last replaced database's verdict ("copy" or "rewritten"), for status and doctor."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('db_replaced', ?)",
                (_compact_json({"verdict": verdict, "why": why, "at": time.time()}),),
            )

    def replaced(self) -> Optional[dict]:
        """note_replaced()'s last record, or None."""
        value = self._meta("db_replaced")
        return json.loads(value) if value else None

    def outbox_keys(self) -> set:
        """Idempotency keys of the sessions still in the outbox (pending or rejected).

        Asked at every commit while a rewritten database is read again: a
        row stored without its key (made when delivered, _pending_session)
        has it made once here and remembered by row id.
        """
        keys = set()
        made: Dict[int, str] = {}
        missing: List[int] = []
        for row_id, key in self._db.execute(
            "SELECT id, idempotency_key FROM sessions WHERE status IN (?, ?)", UNDELIVERED
        ):
            if key:
                keys.add(key)
            elif row_id in self._made_keys:
                made[row_id] = self._made_keys[row_id]
            else:
                missing.append(row_id)
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            for row_id, session_id, commands in self._db.execute(
                f"SELECT id, session_id, commands FROM sessions WHERE id IN ({','.join('?' * len(chunk))})"
                " AND commands IS NOT NULL",
                chunk,
            ):
                made[row_id] = _content_key(session_id, decode_commands(commands))
        self._made_keys = made  # only the rows still there: bounded by the outbox
        keys.update(made.values())
        return keys

    def mark_already_delivered(self, session_id: int) -> None:
        """Settled without sending: the delivered ledger has its content key."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET status = ?, commands = NULL, delivered_at = ? WHERE id = ? AND status = ?",
                (Fate.ALREADY_DELIVERED, time.time(), session_id, Fate.PENDING),
            )
            self._add_counters(db, {"sessions_already_delivered": 1})

    def forget_database(self, rewrite_head: Optional[int] = None) -> None:
        """The events database was replaced: its rowids mean nothing any more."""
        with self._transaction() as db:
            db.execute(f"DELETE FROM sessions WHERE status IN ({_DONE_MARKS})", DONE)
            # Undelivered sessions stay; their rows are renumbered so no replay meets them.
            db.execute("UPDATE sessions SET first_rowid = 0, last_rowid = 0")
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [
                    ("resume_after", "0"),
                    ("replay_until", "0"),
                    ("db_identity", None),
                    ("db_fingerprint", None),
                    ("rewrite_head", None if rewrite_head is None else str(rewrite_head)),
                ],
            )

    @staticmethod
    def _add_counters(db: sqlite3.Connection, counters: Dict[str, int]) -> None:
        db.executemany(
            "UPDATE counters SET value = value + ? WHERE name = ?",
            [(delta, name) for name, delta in counters.items() if delta],
        )

    # -- outbox ----------------------------------------------------------------

    def pending(self, limit: int = 100, after_id: int = 0, due_by: Optional[float] = None) -> List[PendingSession]:
        """Pending sessions in outbox order; with `due_by`, only those due by then."""
        self._file.ensure()  # another connection may have restored a deleted file
        due = "" if due_by is None else " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        return [
            _pending_session(row)
            for row in self._db.execute(
                f"SELECT {self._pending_columns()} FROM sessions WHERE status = ? AND id > ?{due} ORDER BY id LIMIT ?",
                (Fate.PENDING, after_id, *(() if due_by is None else (due_by,)), limit),
            )
        ]

    def undelivered(self, session_id: int) -> Optional[PendingSession]:
        """One pending or rejected session, whole (what `outbox drop` records before it drops it)."""
        row = self._db.execute(
            f"SELECT {self._pending_columns()} FROM sessions"
            " WHERE id = ? AND status IN (?, ?) AND commands IS NOT NULL",
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
            self._add_counters(db, {"patterns_learned" if pattern_id else "sessions_not_learned": 1})
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_delivery_at', ?)", (repr(time.time()),))

    def mark_rejected(self, session_id: int, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET status = ?, last_error = ?, attempts = attempts + 1 WHERE id = ?",
                (Fate.REJECTED, error, session_id),
            )
            self._add_counters(db, {"sessions_rejected": 1, "errors": 1})

    def note_failure(self, session_id: int, error: str, retry_at: Optional[float] = None) -> None:
        """An attempt that failed; the session is next due at `retry_at` (None: now)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET last_error = ?, attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                (error, retry_at, session_id),
            )
            self._add_counters(db, {"errors": 1})
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
                self._add_counters(db, {"sessions_rejected": 1})
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

    def outbox(self, statuses=UNDELIVERED) -> List[dict]:
        marks = ",".join("?" * len(statuses))
        return [
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
            }
            for row in self._db.execute(
                "SELECT id, session_id, status, outcome, n_commands, attempts, last_error, closed_at,"
                " first_rowid, last_rowid, next_attempt_at, failures,"
                f" first_failed_at FROM sessions WHERE status IN ({marks}) ORDER BY id",
                tuple(statuses),
            )
        ]

    # -- figures ---------------------------------------------------------------

    def counters(self) -> Dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters"))

    def status_counts(self) -> Dict[str, int]:
        """How many sessions have each status: the table the triggers keep, when they are there (StoreFile)."""
        if self._file.counted:
            return {status: n for status, n in self._db.execute("SELECT status, n FROM status_counts") if n}
        return dict(self._db.execute("SELECT status, count(*) FROM sessions GROUP BY status"))

    def meta_value(self, key: str) -> Optional[str]:
        return self._meta(key)
