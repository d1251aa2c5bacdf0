"""The history of settled sessions, and the ledger of what was delivered.

Every session that settles (learned, not learned, rejected, too short, below
min_quality, dropped by the operator) gets one row here, keyed by its content
key (core.identity): the key index is the delivered ledger, so one store
answers both "what did it learn?" and "was this session sent already?".

It lives in its own file, history.db beside state.db, and is a convenience,
not the source of truth for exactly-once within one database (the outbox in
state.db is): losing it (deleted, corrupt, unwritable) never stops learning.
The store says so once, moves a corrupt file aside and starts a new one.
Its schema is versioned (migrations.py); a history.db of a newer version
than this build knows is reported the same way and left alone: neither
written nor moved aside.
Every method but open() swallows its own failures for that reason and
reports them through `problem`.

Retention: rows whose last event is older than `days`, and beyond
`max_sessions` the oldest, are pruned in small batches (prune_some), so a
prune never holds the write lock for long and readers (WAL) never wait.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, cast

from ..core.evidence import OutcomeRule, reason_of
from ..core.fates import Fate
from ..core.graph import workflow_of
from ..core.reconcile import Taught
from ..core.sessions import ClosedSession
from . import migrations
from .files import HISTORY_FILE, ensure_private_dir
from .outbox import PendingSession
from .sqlite_file import connect_wal

log = logging.getLogger(__name__)

PRUNE_BATCH = 500

# json.dumps with separators makes an encoder per call: one, made once (the same text).
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Entry(NamedTuple):
    key: str
    session_id: str
    first_time: float
    last_time: float
    commands: Sequence[str]
    outcome: Optional[str]
    pattern_id: Optional[str]
    closed_reason: Optional[str]
    settled: str
    quality: Optional[float] = None
    unusual_score: Optional[float] = None
    unusual: bool = False
    rarest: Optional[str] = None
    settled_at: float = 0.0
    # How the outcome was judged (core/evidence.py); None for sessions recorded by earlier builds.
    rule: Optional[str] = None
    rework: Optional[int] = None

    def as_json(self) -> Dict[str, Any]:
        data = self._asdict()
        data["commands"] = list(self.commands)
        data["reason"] = reason_of(self.rule)
        return data


# Every version's columns, and those version 5 added (migrations.HISTORY_MIGRATIONS).
_BASE_COLUMNS = ", ".join(Entry._fields[:14])
_COLUMNS = ", ".join(Entry._fields)
_OLDER_COLUMNS = _BASE_COLUMNS + ", NULL, NULL"  # read from a file of an older version


def _row(entry: Entry, body: Optional[bytes], now: float) -> Tuple[Any, ...]:
    """An entry as record() writes it: the base columns, the body sent (packed), then rule and rework."""
    return (
        *entry[:4],
        _compact_json(list(entry.commands)),
        *entry[5:13],
        entry.settled_at or now,
        _pack(body),
        entry.rule,
        entry.rework,
    )


def _columns(version: int) -> str:
    return _COLUMNS if version >= 5 else _OLDER_COLUMNS


def _entry(row: Sequence[Any]) -> Entry:
    values = list(row)
    values[4] = json.loads(values[4])
    values[11] = bool(values[11])
    return Entry(*values)


class HistoryFile:
    """One connection to history.db, opened again when the file is lost, replaced or corrupt."""

    def __init__(self, state_dir: Path, create: bool = True, cache_kib: Optional[int] = None):
        """`cache_kib`: the connection's page cache (None: SQLite's default; see state.READER_CACHE_KIB)."""
        self.path = Path(state_dir) / HISTORY_FILE
        self.problem: Optional[str] = None
        self._db: Optional[sqlite3.Connection] = None
        self._identity: Optional[tuple] = None
        self._create = create
        self._cache_kib = cache_kib
        self.version = 0  # the file's schema version once open
        # The names table as this connection knows it (token -> id); None: read it again.
        self._name_ids: Optional[Dict[bytes, int]] = None
        self._open()

    # -- opening, and starting again when the file is lost -------------------

    def _open(self) -> bool:
        if self._db is not None:
            return True
        if not self._create and not self.path.exists():
            return False
        try:
            if self._create:
                ensure_private_dir(self.path.parent)
                try:
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass  # there already, or another connection of ours made it just now
            db = connect_wal(self.path, 5.0, "NORMAL")
            try:
                if self._cache_kib is not None:
                    db.execute(f"PRAGMA cache_size = -{int(self._cache_kib)}")
                self._migrate(db)
                db.execute("SELECT count(*) FROM history WHERE 0").fetchone()
            except (sqlite3.DatabaseError, migrations.SchemaTooNew):
                db.close()
                raise
        except migrations.SchemaTooNew as newer:
            # Neither written nor moved aside: it is that version's history, and learning goes on without it.
            self._fail(f"the history {self.path} was made by a newer version of omnimemory-learner ({newer})")
            return False
        except sqlite3.DatabaseError as error:
            if self._create and _is_corrupt(error):
                return self._start_again(f"{self.path} is corrupt ({error})")
            self._fail(f"cannot use the history {self.path}: {error}")
            return False
        except OSError as error:
            self._fail(f"cannot use the history {self.path}: {error}")
            return False
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(str(self.path) + suffix, 0o600)
            except OSError:
                pass
        status = os.stat(self.path)
        self._identity = (status.st_dev, status.st_ino)
        self._db = db
        if self.problem is not None:
            log.info("The history %s is usable again", self.path)
            self.problem = None
        return True

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the file to this build's schema (migrations.HISTORY_MIGRATIONS).

        A reader (create=False: history, report) never writes: it reads an
        older file as it is (0.1.0's table is version 1's), and the service
        migrates it when it starts.
        """
        found = migrations.version(db, migrations.HISTORY_MIGRATIONS)
        if self._create and found < migrations.latest(migrations.HISTORY_MIGRATIONS):
            migrations.migrate(db, migrations.HISTORY_MIGRATIONS)
            found = migrations.latest(migrations.HISTORY_MIGRATIONS)
        self.version = found
        self._name_ids = None

    def _start_again(self, why: str) -> bool:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.warning("%s; moved it to %s and started a new history (learning goes on)", why, aside)
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                try:
                    os.unlink(str(self.path) + suffix)
                except FileNotFoundError:
                    pass
        except OSError as error:
            self._fail(f"cannot move the corrupt history {self.path} aside: {error}")
            return False
        return self._open()

    def _fail(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("%s; learning goes on without it", problem)
        self.problem = problem

    def _usable(self) -> bool:
        """The connection, reopened when the file was deleted or replaced under us."""
        if self._db is not None:
            try:
                status = os.stat(self.path)
                if (status.st_dev, status.st_ino) == self._identity:
                    return True
                why = "was replaced"
            except FileNotFoundError:
                why = "was deleted"
            except OSError:
                return True
            log.warning("The history %s %s; starting a new one (learning goes on)", self.path, why)
            self.close()
        return self._open()

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _run(self, action: Callable[[sqlite3.Connection], Any], default: Any) -> Any:
        if not self._usable():
            return default
        assert self._db is not None
        try:
            return action(self._db)
        except sqlite3.DatabaseError as error:
            self._failed(error)
            return default

    def _failed(self, error: sqlite3.DatabaseError) -> None:
        """A query failed: a corrupt file is moved aside and started again (by the service), else said."""
        if self._create and _is_corrupt(error):
            self.close()
            self._start_again(f"{self.path} is corrupt ({error})")
        else:
            self._fail(f"cannot use the history {self.path}: {error}")


class HistoryStore(HistoryFile):
    """What the history holds: settled sessions, the ledger, what the API was sent (each thread opens its own)."""

    # -- writing ---------------------------------------------------------------

    def record(self, entries: Iterable[Entry], sent: Optional[Mapping[str, bytes]] = None) -> bool:
        """Add settled sessions; a key already there is updated (a rejected one retried, say).

        `sent`: content key -> the body POSTed for it (the sessions the API
        took), kept compressed so that a forgetful API can be taught it again.
        """
        now = time.time()
        bodies = sent or {}
        rows = [_row(entry, bodies.get(entry.key), now) for entry in entries]
        if not rows:
            return True

        def write(db: sqlite3.Connection) -> bool:
            try:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    if self.version < 4:  # a history this build could not migrate: as that version wrote it
                        sql = f"INSERT OR REPLACE INTO history ({_BASE_COLUMNS}, sent) VALUES ({'?,' * 14}?)"
                        db.executemany(sql, [row[:15] for row in rows])
                        return True
                    id_of = self._id_of(db)
                    judged = self.version >= 5
                    names = f"{_BASE_COLUMNS}, sent, workflow, exact" + (", rule, rework" if judged else "")
                    sql = f"INSERT OR REPLACE INTO history ({names}) VALUES ({'?,' * (18 if judged else 16)}?)"
                    made = [
                        (
                            *row[:15],
                            *(workflow_of(row[4].encode(), id_of) or (None, None)),
                            *(row[15:] if judged else ()),
                        )
                        for row in rows
                    ]
                    db.executemany(sql, made)
            except BaseException:
                self._name_ids = None  # ids given in a transaction that did not commit
                raise
            return True

        return bool(self._run(write, False))

    def prune_some(self, days: float, max_sessions: int, now: Optional[float] = None) -> int:
        """Remove at most PRUNE_BATCH rows past retention; returns how many (0: nothing left to do)."""
        horizon = (now if now is not None else time.time()) - days * 86400.0

        def prune(db: sqlite3.Connection) -> int:
            with db:
                db.execute("BEGIN IMMEDIATE")
                removed = _prune_oldest(db, "WHERE last_time < ?", (horizon,), PRUNE_BATCH)
                if removed < PRUNE_BATCH:
                    over = db.execute("SELECT count(*) FROM history").fetchone()[0] - max_sessions
                    if over > 0:
                        removed += _prune_oldest(db, "", (), min(over, PRUNE_BATCH))
            return removed

        return int(self._run(prune, 0))

    # -- what the API was taught, for teaching it again ---------------------------

    def taught(self, since: float) -> List[Taught]:
        """Every session the API learned (pattern id, outcome, last time, key), last event at or after `since`.

        Read from the covering index history_taught. The rows are plain tuples
        in Taught's order: a NamedTuple each would cost more than the read
        (0.15 s per 10^5 sessions).
        """
        sql = (
            "SELECT pattern_id, outcome, last_time, key FROM history "
            "WHERE settled = ? AND pattern_id IS NOT NULL AND last_time >= ?"
        )
        return cast(List[Taught], self._run(lambda db: db.execute(sql, (str(Fate.LEARNED), since)).fetchall(), []))

    def sent_session(self, key: str) -> Optional[SentSession]:
        """What teaches the API this learned session again: its body as sent, or what rebuilds it."""

        def read(db: sqlite3.Connection) -> Optional[SentSession]:
            row = db.execute(
                "SELECT key, session_id, first_time, last_time, commands, outcome, pattern_id, quality, sent, retaught "
                "FROM history WHERE key = ? AND settled = ?",
                (key, str(Fate.LEARNED)),
            ).fetchone()
            if row is None:
                return None
            found, session_id, first_time, last_time, commands, outcome, pattern_id, quality, sent, retaught = row
            return SentSession(
                found,
                session_id,
                first_time,
                last_time,
                json.loads(commands),
                outcome,
                pattern_id,
                quality,
                _unpack(sent),
                int(retaught),
            )

        return self._run(read, None)

    def mark_retaught(self, key: str, at: float, pattern_id: Optional[str] = None) -> bool:
        """One more time the API was taught this session again (after its 2xx), with the pattern id it answered.

        The id answered now is the one the next reconcile looks for (an API
        that changed how it makes ids would otherwise look as if it forgot
        the session again at every reconcile).
        """

        def write(db: sqlite3.Connection) -> bool:
            with db:
                db.execute(
                    "UPDATE history SET retaught = retaught + 1, retaught_at = ?, pattern_id = coalesce(?, pattern_id)"
                    " WHERE key = ?",
                    (at, pattern_id, key),
                )
            return True

        return bool(self._run(write, False))

    def retaught(self) -> Tuple[int, int]:
        """(sessions taught again at least once, times taught again in all), within the history."""
        sql = "SELECT count(*), coalesce(sum(retaught), 0) FROM history WHERE retaught > 0"
        row = self._run(lambda db: db.execute(sql).fetchone(), None)
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- the ledger --------------------------------------------------------------

    def ledger_horizon(self) -> Optional[float]:
        """The last event time of the newest session ever pruned: the ledger is whole only after it.

        Pruning by count (history_max_sessions) can remove sessions of hours
        ago, and raising history_days does not bring back what was pruned:
        whoever decides whether a session was sent before must not trust the
        ledger at or before this time.  None: nothing pruned (or a history
        of 0.1.0, which did not keep it).
        """

        def read(db: sqlite3.Connection) -> Optional[float]:
            row = db.execute("SELECT value FROM meta WHERE key = 'ledger_horizon'").fetchone()
            return float(row[0]) if row and row[0] is not None else None

        return self._run(read, None)

    def delivered(self, keys: Sequence[str], excluding: Sequence[str] = ()) -> set:
        """Which of these content keys settled already (O(1) each: the primary key).

        `excluding`: settlements that do not count (the delivery thread leaves
        out `rejected`: `outbox retry` sends such a session again on purpose).
        """
        if not keys:
            return set()

        def look(db: sqlite3.Connection) -> set:
            found: set = set()
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in db.execute(f"SELECT key, settled FROM history WHERE key IN ({marks})", chunk)
                    if row[1] not in excluding
                )
            return found

        return set(self._run(look, set()))

    # -- reading -----------------------------------------------------------------

    def sessions(
        self,
        since: Optional[float] = None,
        until: Optional[float] = None,
        session_id: Optional[str] = None,
        limit: Optional[int] = None,
        oldest_first: bool = False,
        settled: Optional[Sequence[str]] = None,
    ) -> List[Entry]:
        where, values = _where(settled, since, until, session_id)
        order = "ASC" if oldest_first else "DESC"
        tail = " LIMIT ?" if limit is not None else ""
        if limit is not None:
            values.append(limit)
        sql = f"SELECT {_columns(self.version)} FROM history{where} ORDER BY last_time {order}, key{tail}"
        return list(self._run(lambda db: [_entry(row) for row in db.execute(sql, values)], []))

    def count(self) -> int:
        return int(self._run(lambda db: db.execute("SELECT count(*) FROM history").fetchone()[0], 0))

    # -- reading one row at a time (report, history, the unusual-session model) ----------

    def _rows(self, sql: str, values: Sequence[Any] = ()) -> Iterator[Tuple[Any, ...]]:
        """The rows of one query as SQLite steps through them; a failure ends them and is said as _run says it."""
        if not self._usable():
            return
        assert self._db is not None
        cursor: Optional[sqlite3.Cursor] = None
        try:
            cursor = self._db.execute(sql, values)
            yield from cursor
        except sqlite3.DatabaseError as error:
            self._failed(error)
        finally:
            if cursor is not None:
                cursor.close()

    def entries(
        self,
        since: Optional[float] = None,
        until: Optional[float] = None,
        session_id: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> Iterator[Entry]:
        """sessions(), newest first, one entry at a time."""
        where, values = _where(None, since, until, session_id)
        tail = " LIMIT ?" if limit is not None else ""
        sql = f"SELECT {_columns(self.version)} FROM history{where} ORDER BY last_time DESC, key{tail}"
        return map(_entry, self._rows(sql, [*values, *([limit] if limit is not None else [])]))

    def _id_of(self, db: sqlite3.Connection) -> Callable[[bytes], int]:
        """A name token's id in the names table, added (in the caller's transaction) when it is new."""
        if self._name_ids is None:
            self._name_ids = dict(db.execute("SELECT token, id FROM names"))
        ids = self._name_ids

        def id_of(token: bytes) -> int:
            found = ids.get(token)
            if found is None:
                db.execute("INSERT OR IGNORE INTO names (token) VALUES (?)", (token,))
                found = ids[token] = db.execute("SELECT id FROM names WHERE token = ?", (token,)).fetchone()[0]
            return found

        return id_of

    def name_ids(self) -> Dict[bytes, int]:
        """The names table (token -> id): what the workflow keys of report_rows are made of."""
        if self.version < 4:
            return {}
        return dict(self._rows("SELECT token, id FROM names"))

    def report_rows(
        self, since: Optional[float] = None
    ) -> Iterator[
        Tuple[str, float, Optional[str], str, Optional[bytes], Optional[bytes], Optional[bytes], int, Any, Any]
    ]:
        """(key, last_time, outcome, settled, commands, workflow, exact, unusual, rule, rework) of every session.

        In no order; rule and rework are NULL in rows earlier builds recorded.

        `workflow` and `exact` as core.graph.workflow_of made them when the
        session was recorded, `commands` (JSON bytes) only where they were not
        (rows of an older version).

        In the table's order: through the index by time, each row is a look-up
        of its own (2.2 s per 10^5 sessions against 0.4 s for the whole table).
        """
        where = " WHERE +last_time >= ?" if since is not None else ""
        if self.version < 4:  # read as that version wrote it (a reader never migrates)
            sql = "SELECT key, last_time, outcome, settled, CAST(commands AS BLOB), NULL, NULL, unusual, NULL, NULL"
            sql += f" FROM history{where}"
        else:
            judged = ", rule, rework" if self.version >= 5 else ", NULL, NULL"
            sql = (
                "SELECT key, last_time, outcome, settled, CASE WHEN exact IS NULL THEN CAST(commands AS BLOB) END,"
                f" workflow, exact, unusual{judged} FROM history{where}"
            )
        return self._rows(sql, [since] if since is not None else [])

    def keys_of_ids(self, wanted: Callable[[str], bool], since: Optional[float] = None) -> set:
        """The content keys of the sessions whose id `wanted` picks (the exclusion rules ask it)."""
        where = " WHERE +last_time >= ?" if since is not None else ""
        rows = self._rows(f"SELECT key, session_id FROM history{where}", [since] if since is not None else [])
        return {key for key, session_id in rows if wanted(session_id)}

    def by_keys(self, keys: Iterable[str]) -> Iterator[Entry]:
        """The entries of these content keys, in the order given (a key not there is left out)."""
        sql = f"SELECT {_columns(self.version)} FROM history WHERE key = ?"
        for key in keys:
            yield from map(_entry, self._rows(sql, (key,)))

    def command_lists(self, limit: int, settled: Sequence[str]) -> CommandLists:
        """The command names of the newest `limit` sessions settled so, read again at each iteration."""
        return CommandLists(self, limit, settled)


class CommandLists:
    """What sessions(limit=, settled=) gives of the commands, without holding them: each pass reads history.db.

    The time index is walked newest first (`+settled`: not the index on
    settled, whose order would have SQLite sort every command list it holds).
    """

    def __init__(self, store: HistoryStore, limit: int, settled: Sequence[str]):
        self._store = store
        self._sql = (
            f"SELECT commands FROM history WHERE +settled IN ({','.join('?' * len(settled))}) "
            "ORDER BY last_time DESC, key LIMIT ?"
        )
        self._values = [*settled, limit]

    def __iter__(self) -> Iterator[List[str]]:
        for (commands,) in self._store._rows(self._sql, self._values):
            yield json.loads(commands)


def _where(
    settled: Optional[Sequence[str]], since: Optional[float], until: Optional[float], session_id: Optional[str]
) -> Tuple[str, List[Any]]:
    clauses: List[str] = []
    values: List[Any] = []
    if settled is not None:
        clauses.append(f"settled IN ({','.join('?' * len(settled))})")
        values.extend(settled)
    if since is not None:
        clauses.append("last_time >= ?")
        values.append(since)
    if until is not None:
        clauses.append("last_time < ?")
        values.append(until)
    if session_id is not None:
        clauses.append("session_id = ?")
        values.append(session_id)
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), values


class SentSession(NamedTuple):
    """A learned session as the history keeps it for teaching it again."""

    key: str
    session_id: str
    first_time: float
    last_time: float
    commands: List[str]
    outcome: Optional[str]
    pattern_id: Optional[str]
    quality: Optional[float]
    body: Optional[bytes]  # the JSON body exactly as POSTed; None for sessions recorded before it was kept
    retaught: int


def _pack(body: Optional[bytes]) -> Optional[bytes]:
    # Level 1: the commands' names and contexts repeat; a higher level buys little for its CPU.
    return None if body is None else zlib.compress(body, 1)


def _unpack(packed: Optional[bytes]) -> Optional[bytes]:
    if packed is None:
        return None
    try:
        return zlib.decompress(packed)
    except (zlib.error, TypeError):
        return None  # a damaged body is rebuilt from the names, as for an older row


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    text = str(error).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def settled_entry(
    session: PendingSession, settled: str, pattern_id: Optional[str] = None, unusual: Optional[Tuple[float, str]] = None
) -> Entry:
    """The history entry of an outbox session that settled (sent, rejected, parked or dropped).

    `unusual`: (score, rarest transition "a -> b") when the session was flagged.
    """
    commands = session.commands
    times = [timestamp for _, timestamp, _ in commands]
    return Entry(
        session.content_key,
        session.session_id,
        min(times, default=0.0),
        max(times, default=0.0),
        [command for command, _, _ in commands],
        session.outcome,
        pattern_id,
        session.reason,
        settled,
        session.scored_quality(),
        unusual[0] if unusual else None,
        unusual is not None,
        unusual[1] if unusual else None,
        rule=session.rule,
        rework=session.rework,
    )


def unsent_entry(session: ClosedSession, rule: OutcomeRule) -> Entry:
    """The history entry of a session settled without being sent (too short, below min_quality), judged by `rule`."""
    times = session.times
    names = session.names
    judged = rule.judged(names)
    return Entry(
        session.key,
        session.session_id,
        min(times) if len(times) else 0.0,
        max(times) if len(times) else 0.0,
        names,
        judged.outcome,
        None,
        session.reason,
        Fate.LOW_QUALITY if session.learnable else Fate.TOO_SHORT,
        session.score_quality() if session.quality is None else session.quality,
        rule=judged.rule,
        rework=judged.rework,
    )


def _prune_oldest(db: sqlite3.Connection, where: str, values: Tuple[Any, ...], limit: int) -> int:
    """Delete the `limit` oldest sessions matching `where`, moving the ledger's horizon past them."""
    newest = db.execute(
        f"SELECT max(last_time) FROM (SELECT last_time FROM history {where} ORDER BY last_time LIMIT ?)",
        (*values, limit),
    ).fetchone()[0]
    if newest is None:
        return 0
    removed = db.execute(
        f"DELETE FROM history WHERE key IN (SELECT key FROM history {where} ORDER BY last_time LIMIT ?)",
        (*values, limit),
    ).rowcount
    # In Python, not SQL: a REAL written to a TEXT column keeps only 15 digits.
    row = db.execute("SELECT value FROM meta WHERE key = 'ledger_horizon'").fetchone()
    horizon = max(float(newest), float(row[0])) if row and row[0] is not None else float(newest)
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ledger_horizon', ?)", (repr(horizon),))
    return int(removed)
