"""The state store's file: one SQLite connection in WAL mode, kept on the file at its path and its schema.

Guarantees: the file is created 0600 (with its -wal and -shm); opening it
brings it to this build's schema (migrations.py) or refuses it (a newer
one); a write (`transaction()`) reaches the file now at the path, never one
deleted or replaced under the connection: a deleted store is written back
from the connection, a restored one is reopened and prepared again, and a
file there that is not a state store is never adopted nor overwritten.  One
connection of the process repairs at a time.

How many sessions have each status is kept in the transactions that change
them (table status_counts): the status snapshot every few seconds reads a
few rows instead of counting the outbox.  Deletes and status changes are
counted by triggers, so that no code path can forget one; inserts happen in
one place, StateStore.commit(), which adds its batch's tally per status (a
trigger's upsert per inserted row slowed a catch-up's commit).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Optional, Tuple

from . import migrations
from .files import ensure_private_dir
from .migrations import STATUS_COUNT_STATEMENTS, STATUS_RECOUNT, SchemaTooNew

log = logging.getLogger(__name__)


class StateError(Exception):
    """The state store cannot be used (permissions, disk, corruption, a newer schema)."""


class StateNotMade(StateError):
    """A reader found the file the service has just created, before its first migration made the tables."""


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
_COUNTING_TRIGGERS = {statement.split()[5] for statement in STATUS_COUNT_STATEMENTS[1:]}


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


def connect_wal(path: Path, timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection to `path` in WAL mode, autocommit (isolation_level=None), usable from any thread."""
    db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        # Turning a new file to WAL needs it to itself, and SQLite does not
        # wait for that: two connections opening a new store at once (the
        # reader and the delivery thread) would see "database is locked".
        for attempt in range(200):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 199:
                    raise
                time.sleep(0.05)
        db.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.Error:
        db.close()
        raise
    return db


class StoreFile:
    """The connection to one state.db, its schema and its repair.

    `create`: the service's stores, which create, migrate and count.  A
    command that only reads (False) needs no write access to a current
    store; one that needs migrating and cannot be written (permissions,
    another writer) is read as it is: version 0 (0.1.0) has every table and
    column of version 1.
    """

    def __init__(self, path: Path, create: bool, synchronous: str):
        self.path = path
        self._create = create
        self._synchronous = "NORMAL" if synchronous == "NORMAL" else "FULL"
        self._identity: Optional[Tuple[int, int]] = None
        self.counted = False  # whether status_counts is kept (the triggers are there)
        try:
            if create:
                ensure_private_dir(path.parent)
                _create_private(path)
            self._connect()
        except (OSError, sqlite3.Error) as error:
            raise StateError(f"cannot use state store {self.path}: {error}") from None
        try:
            self._prepare()
        except (OSError, sqlite3.Error, StateError) as error:
            self._db.close()
            if isinstance(error, StateError):
                raise
            raise StateError(f"cannot use state store {self.path}: {error}") from None
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(str(self.path) + suffix, 0o600)
            except OSError:
                pass

    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    def _connect(self) -> None:
        self._db = connect_wal(self.path, 30.0, self._synchronous)
        status = os.stat(self.path)
        self._identity = (status.st_dev, status.st_ino)

    def _prepare(self) -> None:
        """Bring the file at our path to this build's schema: when opened, and when it was replaced under us."""
        try:
            found = migrations.version(self._db, migrations.STATE_MIGRATIONS)
            # A reader (create=False: status, outbox) never writes: an older schema is read as it is
            # (0.1.0's has every table and column), and the service migrates it when it starts.
            if found < migrations.latest(migrations.STATE_MIGRATIONS) and self._create:
                migrations.migrate(self._db, migrations.STATE_MIGRATIONS)
            elif found == 0 and not self._has_table("sessions"):
                raise StateNotMade(f"the state store {self.path} is being made (the service is starting)")
        except SchemaTooNew as newer:
            raise StateError(
                f"the state store {self.path} was made by a newer version of omnimemory-learner ({newer}); "
                "run that version or a newer one"
            ) from None
        if self._create:
            self._count_statuses()
        self.counted = self._counting()

    def _has_table(self, name: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
            is not None
        )

    def _count_statuses(self) -> None:
        """Install the counting triggers where they are missing, and count the store once, in one transaction.

        A released store can lose them: rebuilding the sessions table by hand
        (a dump edited and loaded, a table recreated) drops its triggers, and
        the counts would then drift unseen.
        """
        if self._counting():
            return
        with Transaction(self._db) as db:  # not transaction(): this runs inside a repair too
            if self._counting():
                return  # another connection did it meanwhile
            for statement in STATUS_COUNT_STATEMENTS + STATUS_RECOUNT:
                db.execute(statement)

    def _counting(self) -> bool:
        """Whether the counting triggers, and only they, are there (the table they keep is then right)."""
        found = {
            name
            for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'sessions_counted_%'"
            )
        }
        return found == _COUNTING_TRIGGERS

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> Transaction:
        """A write transaction on the file at the path (repaired first if it was deleted or replaced)."""
        self.ensure()
        return Transaction(self._db)

    def ensure(self) -> None:
        """Writes must reach the file at our path, not one deleted or replaced under us.

        If state.db was deleted while we run, our connection still holds the
        whole state: write it back with VACUUM INTO.  If the file at the path
        is not a state store (an empty file, another database, junk), it is
        left alone and every write says so (StateError) until it is moved
        away.  Otherwise (a restored backup, or another connection wrote it
        back) reopen the one at the path and prepare it.  One connection of
        this process at a time does this (the reader and the delivery thread
        would race: two VACUUM INTOs into one new file empty it).
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
            # A file put there by hand (a restored backup) may be of another schema version.
            self._prepare()
        except (sqlite3.Error, StateError) as error:
            self._identity = None  # not ready (or refused): the next write tries again
            if isinstance(error, StateError):
                raise
            raise StateError(f"cannot use state store {self.path}: {error}") from None

    def _write_back(self, what: str) -> None:
        """Our connection's state into a new file at the path."""
        try:
            ensure_private_dir(self.path.parent)
            self._db.execute("VACUUM INTO ?", (str(self.path),))
            os.chmod(self.path, 0o600)
        except (sqlite3.Error, OSError) as error:
            if not self.path.exists():
                raise StateError(f"the state store {self.path} {what} and cannot be restored: {error}") from None
            return  # written back by another process meanwhile: reopened below
        log.warning("The state store %s %s; restored it from the open connection", self.path, what)


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a COMMIT failing with "disk
        # full" does): then there is no transaction left to roll back.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

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
