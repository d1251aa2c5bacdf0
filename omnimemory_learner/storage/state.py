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
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from ..core.fates import DONE, UNDELIVERED, CloseReason, Fate, Replacement
from ..core.sessions import ClosedSession
from .files import STATE_FILE
from .migrations import COUNTERS as COUNTERS  # the counters state.db keeps
from .outbox import Outbox, add_counters, content_key, decode_commands, encode_commands
from .sqlite_file import StateError, StoreFile

_compact_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_BIG_ENDIAN = sys.byteorder == "big"

_DONE_MARKS = ",".join("?" * len(DONE))
# The words as plain str for the commit's rows: sqlite3 binds a str subclass (an enum member) by
# looking for an adapter first, a microsecond per value, and a catch-up binds two per session.
_TEXT: Dict[str, str] = {word: word.value for kind in (Fate, CloseReason) for word in kind}
_PENDING, _LOW_QUALITY, _TOO_SHORT, _ALREADY_DELIVERED = (
    _TEXT[Fate.PENDING],
    _TEXT[Fate.LOW_QUALITY],
    _TEXT[Fate.TOO_SHORT],
    _TEXT[Fate.ALREADY_DELIVERED],
)


# The meta key of the last reconcile with the API (delivery/relearn.py writes it; status and doctor read it).
RECONCILE_META = "reconcile"
# The pid of the running service that reconciles when sent SIGUSR1 (other holders of the lock would die of it).
LISTENER_META = "reconcile_listener"


class Fingerprint(NamedTuple):
    """The events database's rows where it was read, each [rowid, repr of the row] (None: none read).

    What tells a copy of the database (same rows, new inode) from a
    rewritten one (database_identity.py).
    """

    first: Optional[list]  # the table's first row
    last: Optional[list]  # the last row read
    # A row read at or below the first one still needed (the low-water mark):
    # where a renumbered table's rows are verified from (database_identity.py).
    low: Optional[list] = None


def _position_meta(position: Position, now: float) -> List[Tuple[str, Optional[str]]]:
    """The meta rows a commit writes for its position."""
    rows_read = position.fingerprint
    fingerprint = None
    if rows_read is not None and (rows_read.first or rows_read.last):
        found = {"first": rows_read.first, "last": rows_read.last}
        if rows_read.low is not None:
            found["low"] = rows_read.low
        fingerprint = _compact_json(found)
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
        len(session.pairs),
        None,
        _TEXT.get(session.reason, session.reason),
        now,
        session.quality,
        session.unmapped,
    )


def _note_replaced(db: sqlite3.Connection, verdict: str, why: str) -> None:
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('db_replaced', ?)",
        (_compact_json({"verdict": verdict, "why": why, "at": time.time()}),),
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


# The page cache of the reading thread's connection to state.db, in KiB (SQLite's default is 2,000).
# Its writes append (the outbox's rows, the ends of their indexes): a catch-up filled 2 MB with
# pages it never read again.  The delivery thread's connections keep the default: they update
# and look up rows all over the outbox and the history.
READER_CACHE_KIB = 256


class StateStore:
    """One connection to the state database; each thread opens its own."""

    def __init__(
        self, state_dir: Path, create: bool = True, synchronous: str = "FULL", cache_kib: Optional[int] = None
    ):
        """`cache_kib`: the connection's page cache (None: SQLite's default); see READER_CACHE_KIB."""
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        if not create and not self.path.exists():
            raise StateError(f"no state at {self.path}")
        self._made_keys: Dict[int, str] = {}  # see outbox_keys
        self._file = StoreFile(self.path, create, synchronous)
        if cache_kib is not None:
            self._db.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        # The delivery side's work on the sessions table, on the same connection.
        self.outbox = Outbox(self._file)

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection to the file at our path (a new one after a repair)."""
        return self._file.db

    def close(self) -> None:
        self._file.close()

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
            Fingerprint(rows.get("first"), rows.get("last"), rows.get("low")) if rows else None,
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
        tally = dict.fromkeys((_PENDING, _LOW_QUALITY, _TOO_SHORT, _ALREADY_DELIVERED), 0)
        with self._transaction() as db:
            # The rows made as they are inserted, never a list of them all: a catch-up's
            # commit of 5,000 sessions held their rows and encoded commands at once (MBs).
            db.executemany(
                "INSERT INTO sessions (idempotency_key, session_id, first_rowid, last_rowid, status,"
                " n_commands, commands, reason, closed_at, quality, unmapped) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                self._outbox_rows(closed, known, resume_after, now, tally),
            )
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", _position_meta(position, now))
            add_counters(db, counters)
            db.executemany(
                "INSERT INTO status_counts (status, n) VALUES (?, ?) ON CONFLICT (status) DO UPDATE SET n = n + ?",
                [(status, n, n) for status, n in tally.items() if n],
            )
            # Markers below the low-water mark can never be met again.
            db.execute(
                f"DELETE FROM sessions WHERE last_rowid <= ? AND status IN ({_DONE_MARKS})",
                (resume_after, *DONE),
            )
        return tally[_PENDING]

    @staticmethod
    def _outbox_rows(
        closed: Iterable[ClosedSession],
        known: Iterable[ClosedSession],
        resume_after: int,
        now: float,
        tally: Dict[str, int],
    ) -> Iterator[tuple]:
        """A commit's rows of the sessions table (sessions to send, markers for the rest), each counted in `tally`.

        The per-session cost of a catch-up's commit, so one pass with what it
        needs bound to locals; the counts come from the same pass (the
        status_counts table adds them; its triggers count only deletes and moves).
        """
        text = _TEXT.get
        encode = encode_commands
        pending = low_quality = too_short = 0
        for session in closed:
            # The Idempotency-Key is the content key (core/identity.py): a session
            # read again (a replay, a replaced or rewritten database, a backfill)
            # is sent with the same one, and the delivered ledger knows it.  It is
            # made when the session is taken from the outbox (_pending_session),
            # in the delivery thread, off the reading path.  Markers need none.
            if session.learnable and not session.low_quality:
                reason = session.reason
                yield (
                    "",
                    session.session_id,
                    session.first_rowid,
                    session.last_rowid,
                    _PENDING,
                    len(session.pairs),
                    encode(session),
                    text(reason, reason),
                    now,
                    session.quality,
                    session.unmapped,
                )
                pending += 1
            elif session.last_rowid > resume_after:
                # Too short or below min_quality: kept only as a marker while a replay could meet its rows.
                if session.learnable:
                    yield _marker_row(session, _LOW_QUALITY, now)
                    low_quality += 1
                else:
                    yield _marker_row(session, _TOO_SHORT, now)
                    too_short += 1
        already = 0
        for session in known:
            if session.last_rowid > resume_after:
                yield _marker_row(session, _ALREADY_DELIVERED, now)
                already += 1
        tally[_PENDING] += pending
        tally[_LOW_QUALITY] += low_quality
        tally[_TOO_SHORT] += too_short
        tally[_ALREADY_DELIVERED] += already

    def note_replaced(self, verdict: str, why: str) -> None:
        """The last replaced database's verdict (a core.fates.Replacement), for status and doctor."""
        with self._transaction() as db:
            _note_replaced(db, verdict, why)

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
                made[row_id] = content_key(session_id, decode_commands(commands))
        self._made_keys = made  # only the rows still there: bounded by the outbox
        keys.update(made.values())
        return keys

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

    def renumber(self, position: Position, shift: int, why: str) -> None:
        """The events' rows moved `shift` rowids down (a delete, then VACUUM): the outbox's rows and position too.

        One transaction, with the note for status and doctor (note_replaced):
        nothing is written of it if any of it fails.  Only the rows from the low-water mark on moved by
        exactly `shift` (the pipeline verified it); a session's rows below it
        moved by less, so its range ends below the new mark and no replay
        meets it.
        """
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET first_rowid = max(first_rowid - ?, 0), last_rowid = max(last_rowid - ?, 0)"
                " WHERE last_rowid > 0",
                (shift, shift),
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", _position_meta(position, time.time())
            )
            _note_replaced(db, Replacement.RENUMBERED, why)

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

    def note(self, key: str, value: str) -> None:  # key: RECONCILE_META, say
        """A note for status and doctor (the last reconcile, say), kept in meta."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
