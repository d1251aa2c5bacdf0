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
failing backs off, and is parked, without holding up the others; delivery.py
decides what counts.

The state store is SQLite in WAL mode.  The reading side commits with
synchronous=FULL: a closed session that was committed survives a crash of the
process and of the machine.  The delivery thread records results with
synchronous=NORMAL (per connection): in WAL mode that survives a crash of the
process, and the next FULL commit makes it durable on disk too; a power loss
in between can only cause a resend with the same idempotency key.  An fsync
per delivered session would cap delivery at the disk's fsync rate.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from ..core.fates import DONE, UNDELIVERED, Fate
from ..core.folding import fold_runs
from ..core.identity import session_key
from ..core.quality import quality_score
from ..core.sessions import ClosedSession
from .files import STATE_FILE, ensure_private_dir

log = logging.getLogger(__name__)

_compact_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_BIG_ENDIAN = sys.byteorder == "big"

_DONE_MARKS = ",".join("?" * len(DONE))

COUNTERS = (
    "events_processed",
    "events_skipped",
    "events_ignored",
    "sessions_created",
    "sessions_too_short",
    "sessions_low_quality",
    "sessions_evicted",
    "patterns_learned",
    "sessions_not_learned",
    "sessions_rejected",
    "sessions_already_delivered",
    "sessions_past_horizon",
    "errors",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    -- The session's content key (core/identity.py): the same session read twice gets the same key.
    idempotency_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_rowid INTEGER NOT NULL,
    last_rowid INTEGER NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT,
    n_commands INTEGER NOT NULL,
    commands BLOB,  -- encode_commands(); JSON text in stores of earlier development builds
    reason TEXT,
    closed_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    pattern_id TEXT,
    delivered_at REAL,
    next_attempt_at REAL,  -- these three: see _ADDED_COLUMNS
    failures INTEGER NOT NULL DEFAULT 0,
    first_failed_at REAL,
    quality REAL,
    unmapped INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, id);
CREATE INDEX IF NOT EXISTS sessions_by_last_rowid ON sessions (last_rowid);
"""

# How many sessions have each status, kept in the transactions that change
# them: the status snapshot every 5 s reads a few rows instead of counting the
# outbox (16 ms with 137,000 pending: most of the idle CPU).  Deletes and
# status changes are counted by triggers, so that no code path can forget
# one; inserts happen in one place, commit(), which adds its batch's tally
# per status: a trigger's upsert per inserted row was a fifth of a
# catch-up's commit.
_INSERT_TRIGGER_OF_EARLIER_BUILDS = "sessions_counted_in"
_COUNT_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS sessions_counted_out AFTER DELETE ON sessions BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
    END""",
    """CREATE TRIGGER IF NOT EXISTS sessions_counted_moved AFTER UPDATE OF status ON sessions
        WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
        INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END""",
)

# Columns added after the first release, as (name, declaration): CREATE TABLE
# IF NOT EXISTS leaves an older table as it is, so each is added when missing.
_ADDED_COLUMNS = (
    # The outbox's own schedule for a session the API failed (NULL: due now).
    ("next_attempt_at", "REAL"),
    # Failures that were the session's own (the API took the next session),
    # and when the first of them happened: together they park it.
    ("failures", "INTEGER NOT NULL DEFAULT 0"),
    ("first_failed_at", "REAL"),
    # The session's quality score (sent with it; the history records it).
    # (Stores of the build before also have an "unusual" column, flags made
    # when sessions were read; read while they are pending, never written.)
    ("quality", "REAL"),
    # Rows of the session's id of unmapped types: with them the delivery
    # thread scores the quality of a session the reading thread did not
    # (min_quality = 0), off the catch-up's path.
    ("unmapped", "INTEGER"),
)


class StateError(Exception):
    """The state store cannot be used (permissions, disk, corruption)."""


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
    # JSON [score, "a -> b"]: flagged as unusual by an earlier build when it
    # was read (this one judges it when the API takes it; see delivery._judge).
    unusual: Optional[str] = None
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

    def body(self, fold_repeats: bool = False) -> dict:
        if fold_repeats:
            commands = [run.as_payload() for run in fold_runs(self.commands)]
        else:
            commands = [
                {"command": command, "timestamp": timestamp, "context": {"event_type": event_type}}
                for command, timestamp, event_type in self.commands
            ]
        body: Dict[str, Any] = {
            "session_commands": commands,
            # Inferred on the commands before folding.
            "session_outcome": self.outcome,
            "session_id": self.session_id,
            "tool_id": "omnimemory-learner",
        }
        quality = self.scored_quality()
        if quality is not None:
            body["quality"] = quality
        return body


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
    if isinstance(value, str):  # the JSON list of an earlier store
        return [tuple(command) for command in json.loads(value)]
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
        row[0], row[1] or key, row[2], row[3], commands, row[5], row[6], row[7], row[8], row[9], row[10], key
    )


def _create_private(path: Path) -> None:
    """Create the database file 0600 (sqlite3 would honour the umask).

    Only when it does not exist: opening and closing a descriptor on a file
    SQLite has open drops every POSIX lock this process holds on it, and
    another process could then rebuild the WAL index under our connections.
    """
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


# Held while a connection repairs or reopens a state store deleted or replaced under it.
_REPAIRING = threading.Lock()


_SQLITE_HEADER = b"SQLite format 3\0"


def _is_state_store(path: Path) -> bool:
    """Whether the regular file at `path` is a SQLite database with a learner's sessions table.

    Read as the file alone (immutable=1): the write-ahead log beside it is
    named after the path, so it may be the log of the file this one
    replaced, and SQLite would lay those pages over this file.  A FIFO or a
    device is never opened (that could block).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as file:
            if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                return False
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    except (OSError, sqlite3.Error):
        return False
    try:
        found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions'")
        return found.fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        connection.close()


class StateStore:
    """One connection to the state database; each thread opens its own."""

    def __init__(self, state_dir: Path, create: bool = True, synchronous: str = "FULL"):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        if not create and not self.path.exists():
            raise StateError(f"no state at {self.path}")
        self._synchronous = "NORMAL" if synchronous == "NORMAL" else "FULL"
        try:
            if create:
                ensure_private_dir(self.state_dir)
                _create_private(self.path)
            self._create = create
            self._made_keys: Dict[int, str] = {}  # see outbox_keys
            self._connect()
            self._prepare()
        except (OSError, sqlite3.Error) as error:
            raise StateError(f"cannot use state store {self.path}: {error}") from None
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(str(self.path) + suffix, 0o600)
            except OSError:
                pass

    def _prepare(self) -> None:
        """Bring the file at our path to this build's schema: when opened, and when it was replaced under us."""
        if self._create:
            self._db.executescript(_SCHEMA)
            self._db.executemany(
                "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(name,) for name in COUNTERS]
            )
        self._add_columns(required=self._create)
        if self._create:
            self._count_statuses()
        self._counted = self._counting()

    def _connect(self) -> None:
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        # Turning a new file to WAL needs it to itself, and SQLite does not
        # wait for that: two connections opening a new store at once (the
        # reader and the delivery thread) would see "database is locked".
        for attempt in range(200):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 199:
                    raise
                time.sleep(0.05)
        self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        status = os.stat(self.path)
        self._identity: Optional[Tuple[int, int]] = (status.st_dev, status.st_ino)

    def close(self) -> None:
        self._db.close()

    def _add_columns(self, required: bool) -> None:
        """Bring a state store of an earlier version up to this schema.

        Checked again inside the write transaction: two connections opening
        one old store at once (the reader and the delivery thread) must not
        both add a column.  A command that only reads (create=False) may lack
        the right to write: then it reads the old table as it is (see _column).
        """
        present = self._present_columns()
        if all(name in present for name, _ in _ADDED_COLUMNS):
            self._columns = present
            return
        try:
            with _Transaction(self._db):
                present = self._present_columns()
                for name, kind in _ADDED_COLUMNS:
                    if name not in present:
                        self._db.execute(f"ALTER TABLE sessions ADD COLUMN {name} {kind}")
            present = self._present_columns()
        except StateError:
            if required:
                raise
        self._columns = present

    def _present_columns(self) -> set:
        return {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}

    def _pending_columns(self) -> str:
        """PendingSession's fields, as the outbox keeps them (NULL for what an older store lacks)."""
        later = ", ".join(map(self._column, ("failures", "quality", "reason", "unmapped", "unusual")))
        return f"id, idempotency_key, session_id, outcome, commands, attempts, {later}"

    def _column(self, name: str) -> str:
        """`name` in a SELECT, or NULL when an unmigrated store lacks it."""
        return name if name in self._columns else f"NULL AS {name}"

    def _transaction(self):
        self._ensure_file()
        return _Transaction(self._db)

    def _ensure_file(self) -> None:
        """Writes must reach the file at our path, not one deleted or replaced under us.

        If state.db was deleted while we run, our connection still holds the
        whole state: write it back with VACUUM INTO.  If the file at the path
        is not a state store (an empty file, another database, junk), it is
        left alone and every write says so (StateError) until it is moved
        away.  Otherwise (a restored backup, or another connection wrote it
        back) reopen the one at the path and bring it to this build's
        schema.  One connection of this process at a time does this (the
        reader and the delivery thread would race: two VACUUM INTOs into one
        new file empty it).
        """
        try:
            status = os.stat(self.path)
            if (status.st_dev, status.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StateError(f"cannot check the state store {self.path}: {error}") from None
        with _REPAIRING:
            self._repair()

    def _repair(self) -> None:
        try:
            status = os.stat(self.path)
            if (status.st_dev, status.st_ino) == self._identity:
                return  # another connection repaired it meanwhile and it is ours after all
            if not _is_state_store(self.path):
                # Not ours to overwrite or adopt (an empty file, another program's database, a FIFO):
                # said on every write, reading pauses, our connection keeps the state meanwhile.
                raise StateError(
                    f"the state store {self.path} was replaced by a file that is not one; move that file away "
                    "(the state is then written back from the running service) or put the state back"
                )
        except FileNotFoundError:
            self._write_back("was deleted while running")
        except OSError as error:
            raise StateError(f"cannot check the state store {self.path}: {error}") from None
        self._db.close()
        try:
            self._connect()
            # A file put there by hand (a restored backup) may be of an earlier build.
            self._prepare()
        except sqlite3.Error as error:
            self._identity = None  # not ready: the next write tries again
            raise StateError(f"cannot use state store {self.path}: {error}") from None

    def _write_back(self, what: str) -> None:
        """Our connection's state into a new file at the path."""
        try:
            ensure_private_dir(self.state_dir)
            self._db.execute("VACUUM INTO ?", (str(self.path),))
            os.chmod(self.path, 0o600)
        except (sqlite3.Error, OSError) as error:
            if not self.path.exists():
                raise StateError(f"the state store {self.path} {what} and cannot be restored: {error}") from None
            return  # written back by another process meanwhile: reopened below
        log.warning("The state store %s %s; restored it from the open connection", self.path, what)

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
        self._ensure_file()  # another connection may have restored a deleted file
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

    def blame_failure(
        self, session_id: int, error: str, failed_at: float, retry_at: float, limit: int, limit_seconds: float
    ) -> Optional[Tuple[int, float]]:
        """A failure that was the session's own: it backs off until `retry_at`.

        Once it has `limit` such failures spanning at least `limit_seconds`, it
        is parked as rejected; then (failures, seconds spanned), else None.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT failures, coalesce(first_failed_at, ?) FROM sessions WHERE id = ? AND status = ?",
                (failed_at, session_id, Fate.PENDING),
            ).fetchone()
            if row is None:
                return None  # settled or dropped meanwhile
            failures, first_failed_at = row[0] + 1, row[1]
            span = failed_at - first_failed_at
            parked = failures >= limit and span >= limit_seconds
            db.execute(
                "UPDATE sessions SET failures = ?, first_failed_at = ?, next_attempt_at = ?, status = ?,"
                " last_error = ? WHERE id = ?",
                (
                    failures,
                    first_failed_at,
                    None if parked else retry_at,
                    Fate.REJECTED if parked else Fate.PENDING,
                    f"failed {failures} times over {span:.0f} s while the API took other sessions; last: {error}"
                    if parked
                    else error,
                    session_id,
                ),
            )
            if parked:
                self._add_counters(db, {"sessions_rejected": 1})
            return (failures, span) if parked else None

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
                f" first_rowid, last_rowid, {self._column('next_attempt_at')}, {self._column('failures')},"
                f" {self._column('first_failed_at')} FROM sessions WHERE status IN ({marks}) ORDER BY id",
                tuple(statuses),
            )
        ]

    # -- figures ---------------------------------------------------------------

    def counters(self) -> Dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters"))

    def _count_statuses(self) -> None:
        """Install the counting triggers; a store without them is counted once, in the same transaction.

        A store of an earlier build also counted inserts by a trigger: it is
        dropped (commit() counts them now), or each insert would count twice.
        """
        if self._counting():
            return
        with _Transaction(self._db):
            if self._counting():
                return  # another connection did it meanwhile
            self._db.execute(f"DROP TRIGGER IF EXISTS {_INSERT_TRIGGER_OF_EARLIER_BUILDS}")
            for statement in _COUNT_STATEMENTS:
                self._db.execute(statement)
            self._db.execute("DELETE FROM status_counts")
            self._db.execute(
                "INSERT INTO status_counts (status, n) SELECT status, count(*) FROM sessions GROUP BY status"
            )

    def _counting(self) -> bool:
        """Whether this build's counting triggers, and only they, are there (the table they keep is then right)."""
        names = {statement.split()[5] for statement in _COUNT_STATEMENTS[1:]}
        found = {
            name
            for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'sessions_counted_%'"
            )
        }
        return found == names

    def status_counts(self) -> Dict[str, int]:
        if self._counted:
            return {status: n for status, n in self._db.execute("SELECT status, n FROM status_counts") if n}
        return dict(self._db.execute("SELECT status, count(*) FROM sessions GROUP BY status"))

    def meta_value(self, key: str) -> Optional[str]:
        return self._meta(key)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a COMMIT failing with "disk
        # full" does): then there is no transaction left to roll back.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StateError(f"cannot write the state store: {error}") from None
        return self._db

    def __exit__(self, kind, value, traceback):
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return False
            except sqlite3.Error as error:
                self._rollback()
                raise StateError(f"cannot write the state store: {error}") from None
        self._rollback()
        if isinstance(value, sqlite3.Error):
            raise StateError(f"cannot write the state store: {value}") from value
        return False
