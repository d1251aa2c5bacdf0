"""Reading activity events from the memory daemon's database (read-only).

The database belongs to another program: it is opened with `mode=ro`, never
created, and every batch is one complete SELECT in autocommit mode, so no read
transaction stays open between batches to hold back the writer's checkpoints.

Nothing is created beside it either.  A read-only connection to a WAL database
creates its -wal and -shm when they are absent (the writer is not running) and
leaves them, owned by us.  Absent, the whole content is in the main file, so it
is then read with `immutable=1` (no locks, no WAL; DatabaseFiles.whole_in_main
says when, the -wal or -shm alone included): every statement's rows are
checked against the files as they were at the open, and a writer that started
meanwhile (its -wal, -shm, or a write to the main file) makes them read again
through a connection that sees its WAL (_Unlocked).

And the connection is not kept between reads (EventReader.rest): an open one,
even idle, holds a shared lock that makes the writer's
`PRAGMA journal_mode=DELETE` fail with "database is locked".  Between reads,
`changed()` compares the files' state (DatabaseFiles) with the one before the
last read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import math
import os
import re
import sqlite3
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, TypeVar
from urllib.parse import quote

from .core import row_digest
from .core.fates import Unavailability

log = logging.getLogger(__name__)

# Unix seconds later than this are taken for milliseconds (as INTERFACES.md says).
MILLISECONDS_ABOVE = 1e11
# Event times outside 1970..9999 are not real activity.
MAX_TIMESTAMP = 253402300799.0
MAX_SESSION_ID_LENGTH = 512
DEFAULT_SESSION_ID = "default"
# SQLite's largest rowid: past it, new rows get random unused rowids (a table without AUTOINCREMENT).
LARGEST_ROWID = 2**63 - 1

# No event's time or type is this long (characters, or bytes of a blob): a
# longer one makes its row malformed, and is never fetched whole (a batch of
# such rows would cost the batch times the field).
MAX_FIELD_LENGTH = 4096
# An id longer than this in UTF-8 is surely longer than MAX_SESSION_ID_LENGTH characters.
_MAX_SESSION_ID_BYTES = 4 * MAX_SESSION_ID_LENGTH
# What an id too long to fetch is read as: too long to be an id (_session_id: malformed).
_TOO_LONG_ID = "\x00" * (MAX_SESSION_ID_LENGTH + 1)

# Each field too long to be one is replaced in SQL, so that only what can be
# an event's is fetched: memory per row is bounded, whatever the rows hold.
_BATCH_SQL = (
    "SELECT rowid,"
    f" CASE WHEN length(timestamp) > {MAX_FIELD_LENGTH} THEN NULL ELSE timestamp END,"
    f" CASE WHEN length(event_type) > {MAX_FIELD_LENGTH} THEN NULL ELSE event_type END,"
    f" CASE WHEN length(CAST(session_id AS BLOB)) > {_MAX_SESSION_ID_BYTES} THEN ? ELSE session_id END"
    " FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
_ROW_SQL = "SELECT rowid, timestamp, event_type, session_id FROM events WHERE rowid = ?"

# (rowid, session_id, (command, event_type), timestamp): the pair is shared per type.
Event = Tuple[int, str, Tuple[str, str], float]


class Unavailable(Exception):
    """The events cannot be read now (missing, locked, corrupt); try again later."""

    def __init__(self, kind: Unavailability, detail: str):
        super().__init__(detail)
        self.kind = kind


def read_only_uri(path: Path) -> str:
    """The `file:` URI that opens `path` read-only and never creates it.

    The path is made absolute and percent-escaped: a `#` or `?` left as it is
    would end the path there (SQLite would open, or create, a file named by
    the part before it), and `%` would be taken for an escape.
    """
    return "file:" + quote(os.path.abspath(os.fspath(path)), safe="/") + "?mode=ro"


_SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseFiles(NamedTuple):
    """The state of the database's files: any commit, checkpoint or replacement changes it.

    Stats (device, inode, size, mtime in ns) of the main file, its -wal and
    -journal; the main file's header (its change counter, bytes 24-27, moves
    at every commit in rollback-journal mode); the -shm's identity and its two
    copies of the wal-index header (which every WAL commit changes; the -shm's
    times are left out: our own reads write to it).  None: the file is absent.
    """

    main: Optional[Tuple[int, ...]]
    header: bytes
    wal: Optional[Tuple[int, ...]]
    shm: Optional[Tuple[object, ...]]
    journal: Optional[Tuple[int, ...]]

    @property
    def wal_mode(self) -> bool:
        """The main file's header says WAL (bytes 18-19): what PRAGMA journal_mode does not say through immutable=1."""
        return self.header[:16] == _SQLITE_HEADER and 2 in self.header[18:20]

    def whole_in_main(self) -> bool:
        """A WAL database without its -wal and -shm both there, and no -journal: read the main file alone.

        A WAL writer has both open.  Neither: it is not running.  The -wal
        alone: one is starting (it makes the -wal first) or has closed (it
        removes the -shm first, once all is checkpointed), or it holds the file
        in exclusive locking mode (no one else can read then).  The -shm alone:
        someone is deleting them.  A connection with locks would create the
        one missing (and leave it, ours); a writer's later work changes the files.
        """
        writer_side = self.wal is not None and self.shm is not None
        return self.main is not None and self.wal_mode and not writer_side and self.journal is None


def _stat(path: str) -> Optional[Tuple[int, ...]]:
    try:
        status = os.stat(path)
    except OSError:
        return None
    # Not ctime: opening the -wal, even read-only, changes it (as root SQLite
    # gives the file the database's owner again, with fchown).
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _head_bytes(path: str, count: int) -> bytes:
    # O_NONBLOCK: a FIFO at the path is not waited on.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return b""
    try:
        return os.read(descriptor, count)
    except OSError:
        return b""
    finally:
        os.close(descriptor)


def database_files(path: Path) -> DatabaseFiles:
    """The files' state now: four stats and two small reads, no SQLite.

    Only while this process has no SQLite connection to the database open
    with locks: closing any descriptor of a file drops every POSIX lock the
    process holds on it, SQLite's included.
    """
    real = os.path.realpath(os.path.abspath(os.fspath(path)))
    main = _stat(real)
    shm_status = _stat(real + "-shm")
    shm = None if shm_status is None else (*shm_status[:2], _head_bytes(real + "-shm", 96))
    header = _head_bytes(real, 100) if main is not None else b""
    return DatabaseFiles(main, header, _stat(real + "-wal"), shm, _stat(real + "-journal"))


class _Stale(sqlite3.OperationalError):
    """The files changed while a connection without locks read them: what it read may be torn."""


class _Fetched:
    """A statement's rows, all fetched (what _Unlocked.execute returns in place of a cursor)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list):
        self._rows = rows

    def fetchall(self) -> list:
        return self._rows

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def __iter__(self):
        return iter(self._rows)


class _Unlocked(sqlite3.Connection):
    """A connection opened with immutable=1, its every statement checked against the files at the open.

    SQLite takes no lock and opens no WAL for it, and keeps its page cache
    for good: rows read while the files changed may be torn, and rows read
    after a change stale.  So each statement is fetched whole, then the files
    are compared with `files_at_open`; any change raises _Stale (read again
    on a new connection, which sees the writer's WAL).
    """

    path: Path
    files_at_open: DatabaseFiles
    deferring = False  # inside _one_read: the files are compared once, at its end

    def stale(self) -> bool:
        return database_files(self.path) != self.files_at_open

    def execute(self, sql, parameters=(), /):
        try:
            rows = super().execute(sql, parameters).fetchall()
        except sqlite3.DatabaseError as error:
            if self.stale():
                raise _Stale(f"the database changed while it was read: {error}") from None
            raise
        if not self.deferring and self.stale():
            raise _Stale("the database changed while it was read (its writer started)")
        return _Fetched(rows)


def open_read_only(
    path: Path, timeout: float, files: Optional[DatabaseFiles] = None, unlocked: bool = True
) -> sqlite3.Connection:
    """A connection to the daemon's database, read-only, in autocommit mode.

    The one way anything here opens that database (the service, `status`,
    `doctor`): `mode=ro` through an escaped URI, so nothing is ever written
    beside it, and autocommit so that each SELECT is its own short read
    transaction that never holds back the writer's checkpoints.  When the
    content is whole in the main file (`files`, taken now when not given), an
    _Unlocked connection (unless `unlocked` is False), so that no -wal or
    -shm is created either.  Call it with no other connection to the
    database open in this process (database_files says why).
    """
    if files is None:
        files = database_files(path)
    if not (unlocked and files.whole_in_main()):
        connection = sqlite3.connect(read_only_uri(path), uri=True, timeout=timeout, check_same_thread=False)
    else:
        connection = sqlite3.connect(
            read_only_uri(path) + "&immutable=1",
            uri=True,
            timeout=timeout,
            check_same_thread=False,
            factory=_Unlocked,
        )
        connection.path, connection.files_at_open = Path(path), files
    connection.isolation_level = None
    return connection


_WITHOUT_ROWID = re.compile(r"\bwithout\s+rowid\s*;?\s*$", re.IGNORECASE)


def events_table_problem(connection: sqlite3.Connection) -> Optional[str]:
    """Why `events` cannot be read by row id, or None when it can (or is not there yet).

    The position is the row id: a view has none (SQLite answers NULL for
    every row), a WITHOUT ROWID table has none, and a real column named
    `rowid` hides it behind values of its own.
    """
    found = connection.execute(
        "SELECT type, sql FROM sqlite_master WHERE lower(name) = 'events' AND type IN ('table', 'view')"
    ).fetchone()
    if found is None:
        return None
    kind, sql = found
    if kind == "view":
        return "events is a view, not a table: a view has no row id to keep the read position by"
    if sql and _WITHOUT_ROWID.search(sql):
        return "events is a WITHOUT ROWID table: it has no row id to keep the read position by"
    columns = [str(row[1]).lower() for row in connection.execute("PRAGMA table_info(events)")]
    if "rowid" in columns:
        return "the events table has a column named rowid, which hides the row id the read position is kept by"
    return None


# A plain number, possibly signed, with a fraction or an exponent: Unix time.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_timestamp(value) -> Optional[float]:
    """Unix seconds from the forms the writer uses, or None when it is not one."""
    if isinstance(value, str):
        if len(value) > MAX_FIELD_LENGTH:
            return None  # as read_batch reads it: never fetched
        text = value.strip()
        if not text:
            return None
        if _NUMBER.fullmatch(text):
            # Digits are Unix time, never an ISO basic-format date:
            # fromisoformat() reads "1701011210000" as a date in 1701.
            return _seconds(float(text))
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            if text[-1:] in ("Z", "z"):
                # Python < 3.11 does not read the Z suffix.
                try:
                    parsed = _dt.datetime.fromisoformat(text[:-1] + "+00:00")
                except ValueError:
                    return None
            else:
                try:
                    return _seconds(float(text))
                except ValueError:
                    return None
        try:
            # A naive value is the writer's local time, as timestamp() assumes.
            seconds = parsed.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
        return _seconds(seconds)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _seconds(float(value))
    return None


def _seconds(number: float) -> Optional[float]:
    if not math.isfinite(number):
        return None
    if abs(number) > MILLISECONDS_ABOVE:
        number /= 1000.0
    if number <= 0 or number > MAX_TIMESTAMP:
        return None
    return number


def _session_id(value) -> Optional[str]:
    if value is None:
        return DEFAULT_SESSION_ID
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    if not value:
        return DEFAULT_SESSION_ID
    if len(value) > MAX_SESSION_ID_LENGTH:
        return None
    return value


class LocalTimeContext:
    """What reading naive local times needs from the rows before them.

    A naive timestamp is the writer's local time.  In the hour a DST fall-back
    repeats, one naive time names two instants; validate_rows takes the one
    nearer the previous event (continuity, `datetime.fold`).  A time in a
    spring-forward gap does not exist; it is read with the offset in force
    before the change (fold 0: a clock that had not moved on yet).

    Continuity needs a close neighbour: a stream (or the rows re-read after a
    restart) that starts inside the repeated hour is read as its first
    occurrence, and after an hour-long silence of every source the nearer
    instant may be the wrong one.

    Kept by the caller across batches, so a batch boundary changes nothing:
    `previous` is the previous event's time; `plain_hours` caches, per naive
    hour ("YYYY-MM-DDTHH"), its span of Unix seconds when one offset holds all
    hour (and within 1970..9999), else (); `plain_low`/`plain_high` is the
    span of consecutive plain hours the last rows fell in, so the common row
    costs two comparisons.
    """

    __slots__ = ("plain_high", "plain_hours", "plain_low", "previous")

    def __init__(self) -> None:
        self.previous: Optional[float] = None
        self.plain_hours: Dict[str, Tuple[float, ...]] = {}
        self.plain_low = 0.0
        self.plain_high = 0.0


# A neighbour further away than this says nothing about which of two instants
# an hour apart a naive time meant (an outlier, or a long pause).
_CONTINUITY_SECONDS = 12 * 3600.0
_LOOK_BACK_EVENTS = 64


def _plain_hour_span(parsed: _dt.datetime) -> Tuple[float, ...]:
    """(first, end) Unix seconds of the naive hour of `parsed` if one offset holds all hour, else ()."""
    start = parsed.replace(minute=0, second=0, microsecond=0, fold=0)
    last = start.replace(minute=59, second=59, microsecond=999999)
    try:
        first_seconds = start.timestamp()
        last_seconds = last.timestamp()
        plain = (
            first_seconds == start.replace(fold=1).timestamp()
            and last_seconds == last.replace(fold=1).timestamp()
            and abs(last_seconds - first_seconds - 3599.999999) < 1e-3
        )
    except (OverflowError, OSError, ValueError):
        return ()
    if not plain or first_seconds <= 0 or first_seconds + 3600.0 > MAX_TIMESTAMP:
        return ()  # the span also vouches for the range
    return (first_seconds, first_seconds + 3600.0)


def _outside_plain_span(text: str, seconds: float, context: LocalTimeContext, events: List[Event]) -> Optional[float]:
    parsed = _dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        seconds = _naive_local_seconds(parsed, text[:13], seconds, context, events)
    elif 0 < seconds <= MAX_TIMESTAMP:
        # An explicit offset is exact; learning the local hour it falls in lets
        # the rows after it take the fast path.
        try:
            local = _dt.datetime.fromtimestamp(seconds)
        except (OverflowError, OSError, ValueError):
            pass
        else:
            _in_plain_hour(local, local.isoformat()[:13], context)
    return seconds if 0 < seconds <= MAX_TIMESTAMP else None


def _in_plain_hour(parsed: _dt.datetime, key: str, context: LocalTimeContext) -> bool:
    """Whether one offset holds all the naive hour `key`; if so the known span takes it in."""
    hours = context.plain_hours
    span = hours.get(key)
    if span is None:
        if len(hours) > 4096:
            hours.clear()
        span = hours[key] = _plain_hour_span(parsed)
    if not span:
        return False
    low, high = span
    # Grow the known span over consecutive plain hours, else move it here.
    if low == context.plain_high:
        context.plain_high = high
    elif high == context.plain_low:
        context.plain_low = low
    else:
        context.plain_low, context.plain_high = low, high
    return True


def _naive_local_seconds(
    parsed: _dt.datetime, key: str, seconds: float, context: LocalTimeContext, events: List[Event]
) -> float:
    """Unix seconds of a naive local time outside the plain span known so far."""
    if _in_plain_hour(parsed, key, context):
        return seconds
    try:
        later = parsed.replace(fold=1).timestamp()
    except (OverflowError, OSError, ValueError):
        return seconds
    if later <= seconds:
        return seconds  # one instant, or a time in a spring-forward gap: fold 0
    # The repeated hour: the instant nearer the previous event that is near at all.
    previous = _previous_near(seconds, context, events)
    if previous is None:
        return seconds
    return later if abs(later - previous) < abs(seconds - previous) else seconds


def _previous_near(seconds: float, context: LocalTimeContext, events: List[Event]) -> Optional[float]:
    for index in range(len(events) - 1, max(-1, len(events) - 1 - _LOOK_BACK_EVENTS), -1):
        candidate = events[index][3]
        if abs(candidate - seconds) < _CONTINUITY_SECONDS:
            return candidate
    previous = context.previous
    if previous is not None and abs(previous - seconds) < _CONTINUITY_SECONDS:
        return previous
    return None


def validate_rows(
    rows,
    pairs: Mapping[str, Tuple[str, str]],
    context: Optional[LocalTimeContext] = None,
    unmapped_by_id: Optional[Dict[str, int]] = None,
) -> Tuple[List[Event], int, int]:
    """The well-formed rows of the wanted types, as events.

    `pairs` is mapping.command_pairs(): event_type -> (command, event_type).
    Returns the events (rowid, session_id, pair, timestamp), the number of
    rows of other types (ignored) and the number of malformed rows (bad).
    `context` carries what naive local times need across calls (pass the same
    one for consecutive batches); without it each call starts afresh.
    `unmapped_by_id`, when given, counts the ignored rows per session id (a
    session's quality weighs them); only those rows pay for it.

    The per-event hot path of a catch-up, so it is one pass: a row of another
    type costs its id's check and a count, nothing more; the common
    row (an isoformat() string of the form YYYY-MM-DDTHH:MM:SS, a text session
    id) is handled inline, without a function call per field, and its time is
    checked against the span of plain local hours already known (two
    comparisons); anything else goes through the full parsers.  That is why
    it is the one function of the package over 60 lines: cut into helpers
    it would pay a call per row, a tenth of a catch-up's cost per event.
    """
    if context is None:
        context = LocalTimeContext()
    events: List[Event] = []
    append = events.append
    lookup = pairs.get
    bad = ignored = 0
    fromisoformat = _dt.datetime.fromisoformat
    plain_low = context.plain_low
    plain_high = context.plain_high
    longest_id = MAX_SESSION_ID_LENGTH
    for rowid, timestamp, event_type, session_id in rows:
        pair = lookup(event_type)
        if pair is None:
            # Longer than any type: malformed, as read_batch reads it where it does not fetch it.
            if type(event_type) is str and 0 < len(event_type) <= MAX_FIELD_LENGTH:
                ignored += 1
                if unmapped_by_id is not None:
                    if type(session_id) is str and 0 < len(session_id) <= longest_id:
                        sid: Optional[str] = session_id
                    else:
                        sid = _session_id(session_id)
                    if sid is not None:
                        unmapped_by_id[sid] = unmapped_by_id.get(sid, 0) + 1
            else:
                bad += 1
            continue
        if type(session_id) is str and 0 < len(session_id) <= longest_id:
            sid = session_id  # the common case, without a call
        else:
            sid = _session_id(session_id)
            if sid is None:
                bad += 1
                continue
        if type(timestamp) is str and len(timestamp) >= 19 and timestamp[10] == "T" and timestamp[-1] not in "Zz":
            try:
                seconds = fromisoformat(timestamp).timestamp()
            except (ValueError, OverflowError, OSError):
                bad += 1
                continue
            # Inside the span of plain local hours known so far the time is
            # read and in range; anything else is looked at closely.
            if not plain_low <= seconds < plain_high:
                resolved = _outside_plain_span(timestamp, seconds, context, events)
                plain_low, plain_high = context.plain_low, context.plain_high
                if resolved is None:
                    bad += 1
                    continue
                seconds = resolved
        else:
            parsed = parse_timestamp(timestamp)
            if parsed is None:
                bad += 1
                continue
            seconds = parsed
        append((rowid, sid, pair, seconds))
    if events:
        context.previous = events[-1][3]
    return events, ignored, bad


def _decode_lossy(raw: bytes) -> str:
    # Bytes that are not UTF-8 become their \\xNN escapes: two ids that differ
    # only there stay two ids (a replacement character would merge them), and
    # the result is valid text for SQLite and JSON.
    return raw.decode("utf-8", "backslashreplace")


def cut_by_length(row) -> bool:
    """Whether a field of `row` may have been replaced in SQL for its length (it may be NULL as stored too)."""
    return row[1] is None or row[2] is None or row[3] == _TOO_LONG_ID


def file_identity(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


_Result = TypeVar("_Result")
# Reads of one call on connections without locks, the files changing under each,
# before the last one is made through a connection with them.
_UNLOCKED_ATTEMPTS = 2


@contextlib.contextmanager
def _one_read(connection: sqlite3.Connection) -> Iterator[None]:
    """The statements inside in one snapshot of the database.

    An _Unlocked connection sees one state of the files: compared once at
    the end (each statement's own comparison costs a few stats).  Any other
    reads each statement in a snapshot of its own (autocommit) unless they
    share a transaction.
    """
    if isinstance(connection, _Unlocked):
        connection.deferring = True
        try:
            yield
        finally:
            connection.deferring = False
        if connection.stale():
            raise _Stale("the database changed while it was read")
        return
    connection.execute("BEGIN")
    try:
        yield
    finally:
        if connection.in_transaction:
            connection.execute("COMMIT")


def _fingerprinted_row(connection: sqlite3.Connection, rowid: int, mask: Optional[row_digest.Mask]) -> Optional[tuple]:
    """The row at `rowid` as its digest of `mask` compares it (row_digest.select_sql), or None.

    Its text decoded as read_batch falls back to for text that is not UTF-8
    (the same for valid text): every row a fingerprint is taken of or
    compared with is read here.
    """
    connection.text_factory = _decode_lossy
    try:
        row = connection.execute(row_digest.select_sql(mask), (rowid,)).fetchone()
    finally:
        connection.text_factory = str
    return row_digest.as_row(row, mask) if row is not None else None


def _anchor_row(connection: sqlite3.Connection, at: int, below: bool) -> Optional[tuple]:
    """The row at `at`, or (`below`) the newest below it, read UNMASKED."""
    rowid = at
    if below:
        rowid = connection.execute("SELECT max(rowid) FROM events WHERE rowid < ?", (at,)).fetchone()[0]
    return _fingerprinted_row(connection, rowid, row_digest.UNMASKED) if rowid else None


def _checked_read(
    connection: sqlite3.Connection, last_read: Optional[list], anchor: Optional[Tuple[int, bool]], read: Callable
) -> Optional[Tuple[object, Optional[tuple]]]:
    """`read()` and the anchor row asked for, in one read checking that `last_read` is still there (None if not)."""
    with _one_read(connection):
        if last_read is not None:
            rowid, text = last_read
            row = _fingerprinted_row(connection, rowid, row_digest.mask_of(text))
            if row is None or not row_digest.matches(row, text):
                return None
        anchored = _anchor_row(connection, *anchor) if anchor is not None else None
        return read(), anchored


class EventReader:
    """Read-only connections to the events database: opened for a read, closed between reads (rest)."""

    def __init__(self, db_path: Path, busy_timeout: float = 0.2):
        self.db_path = Path(db_path)
        self.busy_timeout = busy_timeout
        self._connection: Optional[sqlite3.Connection] = None
        self.identity: Optional[Tuple[int, int]] = None
        self._data_version: Optional[int] = None
        # The files before the first open since the last rest, and (between
        # reads) the state changed() compares with.
        self._opened_files: Optional[DatabaseFiles] = None
        self._baseline: Optional[DatabaseFiles] = None

    # -- connection ------------------------------------------------------------

    def _open(self, unlocked: bool = True) -> sqlite3.Connection:
        connection = self._connection
        if connection is not None:
            # A stale one (its files changed since its open) is found out by its
            # next statement (_Unlocked.execute), and _query opens another.
            if unlocked or not isinstance(connection, _Unlocked):
                return connection
            self.close()
        identity = file_identity(self.db_path)
        # Before connecting: whatever is committed after this is news to changed().
        files = database_files(self.db_path)
        if self._opened_files is None:
            self._opened_files = files
        if identity is None:
            raise Unavailable(Unavailability.MISSING, f"database {self.db_path} does not exist")
        try:
            connection = open_read_only(self.db_path, self.busy_timeout, files, unlocked)
        except sqlite3.Error as error:
            raise Unavailable(Unavailability.UNREADABLE, f"cannot open {self.db_path}: {error}") from None
        try:
            problem = events_table_problem(connection)
        except sqlite3.DatabaseError as error:
            connection.close()
            raise self._unavailable(error) from None
        if problem is not None:
            connection.close()
            raise Unavailable(Unavailability.NO_ROWID, f"cannot read {self.db_path}: {problem}")
        self._connection = connection
        self.identity = identity
        self._data_version = None
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def rest(self) -> None:
        """Between reads: close the connection (an open one, even idle, keeps the writer in WAL mode).

        changed() then compares the files with their state before the first
        open since the last rest: older than anything read since, so a commit
        after it, read or not, is news (at worst one read that finds nothing).
        """
        self.close()
        if self._opened_files is not None:
            self._baseline, self._opened_files = self._opened_files, None

    def replaced(self) -> bool:
        """Whether the path now names another file than the one last opened."""
        if self.identity is None:
            return False
        return file_identity(self.db_path) != self.identity

    def changed(self) -> bool:
        """Cheaply: did anyone commit (or replace the file) since the last check?"""
        connection = self._connection
        if isinstance(connection, _Unlocked):
            self.rest()  # it holds no lock and no data a new one would not read
            connection = None
        if connection is None:
            files = database_files(self.db_path)
            if files == self._baseline:
                return False
            self._baseline = files
            return True
        if self.replaced():
            return True
        try:
            version = connection.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return True
        if version != self._data_version:
            self._data_version = version
            return True
        return False

    # -- reading ---------------------------------------------------------------

    def _query(self, work: Callable[[sqlite3.Connection], _Result]) -> _Result:
        """`work` on the connection, read again while a connection without locks saw its files change."""
        attempt = 0
        while True:
            connection = self._open(unlocked=attempt < _UNLOCKED_ATTEMPTS)
            try:
                return work(connection)
            except _Stale:
                self.close()
                attempt += 1
                if self.identity is not None and file_identity(self.db_path) != self.identity:
                    # Replaced while it was read: the next drain checks what the new file is
                    # before a row of it is taken for the continuation of the old one.
                    raise Unavailable(
                        Unavailability.LOCKED, f"{self.db_path} was replaced while it was read; reading it again"
                    ) from None
            except sqlite3.DatabaseError as error:
                raise self._unavailable(error) from None

    def read_batch(self, after_rowid: int, limit: int) -> list:
        """Raw rows with rowid > after_rowid, at most `limit`, in rowid order.

        A field too long to be an event's (MAX_FIELD_LENGTH) is read as what
        makes the row malformed (NULL, or an id too long), never fetched,
        except in the rows a fingerprint is taken of (database_identity.saw:
        the batch's last, and from the start its first): those are as stored,
        as fingerprint_rows reads them, each costing its size once.
        """
        return self._query(lambda connection: self._batch(connection, after_rowid, limit))

    def read_on(
        self, after_rowid: int, limit: int, last_read: Optional[list], anchor: Optional[Tuple[int, bool]] = None
    ) -> Optional[Tuple[list, Optional[tuple]]]:
        """read_batch, in one read transaction with database_identity's questions; None if `last_read` moved.

        `last_read`, [rowid, fingerprint] of the last row read, is compared
        first: a delete, a VACUUM or a rewrite between two batches, or between
        the drain's check and its first batch, is never read past (None: the
        caller checks the identity again).  `anchor` (at, below): the row at
        `at` (or the newest below it) as well, of the numbering read.
        """

        def read(connection: sqlite3.Connection):
            return _checked_read(connection, last_read, anchor, lambda: self._batch(connection, after_rowid, limit))

        return self._query(read)

    def _batch(self, connection: sqlite3.Connection, after_rowid: int, limit: int) -> list:
        try:
            return self._select(connection, after_rowid, limit)
        except sqlite3.OperationalError as error:
            if "decode" not in str(error).lower():
                raise
        # Text that is not UTF-8 in some row: read this batch losslessly
        # enough to validate it, and go back to the fast decoder after.
        connection.text_factory = _decode_lossy
        try:
            return self._select(connection, after_rowid, limit)
        finally:
            connection.text_factory = str

    @staticmethod
    def _select(connection: sqlite3.Connection, after_rowid: int, limit: int) -> list:
        rows = connection.execute(_BATCH_SQL, (_TOO_LONG_ID, after_rowid, limit)).fetchall()
        for index in {0, len(rows) - 1} if after_rowid == 0 else {len(rows) - 1}:
            if 0 <= index < len(rows) and cut_by_length(rows[index]):
                rows[index] = connection.execute(_ROW_SQL, (rows[index][0],)).fetchone() or rows[index]
        return rows

    def head(self) -> int:
        """The largest rowid in the table (0 when empty)."""
        value = self._query(lambda connection: connection.execute("SELECT max(rowid) FROM events").fetchone()[0])
        return value or 0

    def rowids_renumbered_by_vacuum(self) -> bool:
        """Whether VACUUM may renumber the rows: the rowid is no INTEGER PRIMARY KEY (SQLite's own rule)."""

        def ask(connection: sqlite3.Connection) -> bool:
            keys = [row for row in connection.execute("PRAGMA table_info(events)") if row[5]]
            return not (len(keys) == 1 and str(keys[0][2]).upper() == "INTEGER")

        return self._query(ask)

    def count_between(self, low: int, high: int) -> int:
        """How many rows have rowids from `low` to `high` (a walk of the rowid b-tree, no row read)."""
        return self._query(
            lambda connection: connection.execute(
                "SELECT count(*) FROM events WHERE rowid BETWEEN ? AND ?", (low, high)
            ).fetchone()[0]
        )

    def newest_up_to(self, rowid: int) -> int:
        """The largest rowid at or below `rowid` (0: none)."""
        sql = "SELECT max(rowid) FROM events WHERE rowid <= ?"
        value = self._query(lambda connection: connection.execute(sql, (rowid,)).fetchone()[0])
        return value or 0

    def anchor_row(self, at: int, below: bool, last_read: Optional[list]) -> Tuple[bool, Optional[tuple]]:
        """(whether `last_read` is still there, the row at `at` or, `below`, the newest below it), in one read."""
        found = self._query(lambda connection: _checked_read(connection, last_read, (at, below), lambda: None))
        return (False, None) if found is None else (True, found[1])

    def rowids_of_digest(self, below: int, text: str, most: int = 2, chunk: int = 10_000) -> List[int]:
        """Up to `most` rowids below `below` whose rows have the digest `text` (core/row_digest.py), largest first.

        Read newest first, `chunk` rows a query, each field as the digest's
        mask reads it: memory bounded by the chunk, no huge field fetched.
        Fewer than `most` found means the table was read to its start.
        """
        mask = row_digest.mask_of(text)
        if mask is None:
            return []  # the older form of fingerprint: no digest to look for
        sql = row_digest.select_sql(mask, "rowid < ? ORDER BY rowid DESC LIMIT ?")

        def look(connection: sqlite3.Connection, before: int) -> Tuple[List[int], int]:
            connection.text_factory = _decode_lossy  # as fingerprint_rows reads
            try:
                rows = connection.execute(sql, (before, chunk)).fetchall()
            finally:
                connection.text_factory = str
            found = [row[0] for row in rows if row_digest.digest(row_digest.as_row(row, mask)) == text]
            return found, rows[-1][0] if len(rows) == chunk else 0

        matched: List[int] = []
        before = below
        while before > 0 and len(matched) < most:
            found, before = self._query(functools.partial(look, before=before))
            matched.extend(found)
        return matched[:most]

    def fingerprint_rows(
        self, wanted: Mapping[int, Optional[row_digest.Mask]], learn_first: bool = False
    ) -> row_digest.Fingerprinted:
        """The table's first row, the rows wanted by rowid, AUTOINCREMENT's sequence: what tells a copy from a rewrite.

        Point reads by rowid on the read-only connection, for
        database_identity.DatabaseIdentity.check.  Each wanted rowid comes with
        the mask of its stored digest (core/row_digest.py): the fields it
        summarised are read as their type alone, the others whole unless over
        SUMMARY_BYTES (then a Summary too), so a huge field is never fetched to
        be compared.  A mask of None (a fingerprint of the older form, the
        row's repr) reads the row whole, as that form was made.  The first row
        is (rowid,) unless learn_first: then it is read UNMASKED.
        """
        connection = self._open()
        try:
            first = connection.execute("SELECT rowid FROM events ORDER BY rowid LIMIT 1").fetchone()
            found: Dict[int, tuple] = {}
            for rowid, mask in wanted.items():
                row = _fingerprinted_row(connection, rowid, mask)
                if row is not None:
                    found[rowid] = row
            if first is not None and learn_first:
                first = _fingerprinted_row(connection, first[0], row_digest.UNMASKED)
            sequence = None
            # Without an AUTOINCREMENT table in the file there is no sqlite_sequence to ask.
            if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
                found_sequence = connection.execute(
                    "SELECT seq FROM sqlite_sequence WHERE lower(name) = 'events'"
                ).fetchone()
                sequence = found_sequence[0] if found_sequence and type(found_sequence[0]) is int else None
        except sqlite3.DatabaseError as error:
            raise self._unavailable(error) from None
        return row_digest.Fingerprinted(tuple(first) if first else None, found, sequence)

    def _unavailable(self, error: sqlite3.Error) -> Unavailable:
        message = str(error)
        lowered = message.lower()
        if isinstance(error, _Stale):
            # The writer started while we read without locks: the next read goes through its WAL.
            self.close()
            return Unavailable(Unavailability.LOCKED, f"database {self.db_path} changed while being read: {message}")
        if "no such table" in lowered:
            # The writer may create the table later; a new connection sees it.
            self.close()
            return Unavailable(Unavailability.NO_TABLE, f"database {self.db_path} has no events table yet")
        if "locked" in lowered or "busy" in lowered:
            return Unavailable(Unavailability.LOCKED, f"database {self.db_path} is locked: {message}")
        self.close()
        if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
            return Unavailable(Unavailability.CORRUPT, f"database {self.db_path} is corrupt: {message}")
        return Unavailable(Unavailability.UNREADABLE, f"cannot read {self.db_path}: {message}")
