"""The schema of state.db and history.db: `PRAGMA user_version` and one ordered list of migrations per file.

A migration is a version and the statements that bring a file from the
version before to it.  Version 0 is the format 0.1.0 released (user_version
0, every table there) and also a new, empty file: migration 1 makes both
this build's format, which is why its statements are all "IF NOT EXISTS".
A change of format is one more entry at the end of a list, never an edit of
an entry a release shipped.

Guarantees: `migrate` applies the missing migrations in one write
transaction and reads the version again inside it, so two connections
opening one store at once (the reading and the delivery thread) migrate it
once; a file whose version is higher than this build knows is never
changed (SchemaTooNew), the caller decides what that means for its file.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple, Sequence, Tuple


class Migration(NamedTuple):
    version: int  # user_version once applied
    statements: Tuple[str, ...]  # one SQL statement each, run in order, in the migration's transaction


class SchemaTooNew(Exception):
    """The file was written by a newer build: its schema is `found`, this build knows up to `known`."""

    def __init__(self, found: int, known: int):
        super().__init__(f"schema {found}, this build knows up to {known}")
        self.found = found
        self.known = known


# -- state.db ------------------------------------------------------------------

_STATE_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0)",
    """CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    -- The session's content key (core/identity.py), or '' (the same key, made when the session is read back).
    idempotency_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_rowid INTEGER NOT NULL,
    last_rowid INTEGER NOT NULL,
    status TEXT NOT NULL,
    outcome TEXT,
    n_commands INTEGER NOT NULL,
    commands BLOB,  -- state.encode_commands(); NULL once settled
    reason TEXT,
    closed_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    pattern_id TEXT,
    delivered_at REAL,
    next_attempt_at REAL,  -- the session's own schedule after a failure (NULL: due now)
    failures INTEGER NOT NULL DEFAULT 0,  -- failures that were its own, and when the first was: they park it
    first_failed_at REAL,
    quality REAL,  -- NULL: scored when sent, from the commands and `unmapped`
    unmapped INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_last_rowid ON sessions (last_rowid)",
)

# How many sessions have each status (state.py: commit() adds its inserts, the
# triggers count deletes and moves).  Also what state.py installs again when
# someone rebuilt the sessions table by hand and its triggers went with it.
STATUS_COUNT_STATEMENTS = (
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
STATUS_RECOUNT = (
    "DELETE FROM status_counts",
    "INSERT INTO status_counts (status, n) SELECT status, count(*) FROM sessions GROUP BY status",
)

_COUNTERS_V1 = (
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

# Rows the exclusion rules dropped (core/privacy.py), counted only: migration 2.
_COUNTERS_V2 = ("events_excluded",)

# Every counter state.db keeps: a counter added later comes with the migration that inserts it.
COUNTERS = _COUNTERS_V1 + _COUNTERS_V2

STATE_MIGRATIONS: Tuple[Migration, ...] = (
    # 0.1.0's format (or nothing) -> the tables, every counter, the status counts made right once.
    Migration(
        1,
        _STATE_V1
        + tuple(f"INSERT OR IGNORE INTO counters (name, value) VALUES ('{name}', 0)" for name in _COUNTERS_V1)
        + STATUS_COUNT_STATEMENTS
        + STATUS_RECOUNT,
    ),
    # Counters for the exclusion rules; and from here the sessions' `outcome` is NULL until the delivery
    # thread judges it (outcome_rule), so a build that would send a NULL outcome must not read this file.
    Migration(2, tuple(f"INSERT OR IGNORE INTO counters (name, value) VALUES ('{name}', 0)" for name in _COUNTERS_V2)),
)

# -- history.db ----------------------------------------------------------------

_HISTORY_V1 = (
    """CREATE TABLE IF NOT EXISTS history (
    key TEXT PRIMARY KEY,          -- the content key: the delivered ledger's index
    session_id TEXT NOT NULL,
    first_time REAL NOT NULL,      -- event time of the first and last command (Unix seconds)
    last_time REAL NOT NULL,
    commands TEXT NOT NULL,        -- JSON list of command names, before folding
    outcome TEXT,
    pattern_id TEXT,
    closed_reason TEXT,            -- a CloseReason (core/fates.py)
    settled TEXT NOT NULL,         -- a Fate (core/fates.py) other than pending, already_delivered
    quality REAL,
    unusual_score REAL,
    unusual INTEGER NOT NULL DEFAULT 0,
    rarest TEXT,                   -- the rarest transition of an unusual session, "a -> b"
    settled_at REAL NOT NULL
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS history_by_time ON history (last_time)",
)

HISTORY_MIGRATIONS: Tuple[Migration, ...] = (
    Migration(1, _HISTORY_V1),  # 0.1.0's table as it is (or a new file)
    # The ledger's horizon (HistoryStore.ledger_horizon): unknown for a 0.1.0 file, kept from here on.
    Migration(2, ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",)),
    # What teaches a forgetful API again (HistoryStore.sent_session): the body exactly as
    # POSTed, zlib-compressed; how often and when it was taught again. NULL for older rows.
    Migration(
        3,
        (
            "ALTER TABLE history ADD COLUMN sent BLOB",
            "ALTER TABLE history ADD COLUMN retaught INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE history ADD COLUMN retaught_at REAL",
            # What a reconcile reads of every learned session, without the rows' commands and bodies.
            "CREATE INDEX IF NOT EXISTS history_taught ON history (settled, pattern_id, outcome, last_time)",
        ),
    ),
    # What the report counts of a session, made once when it is recorded (core/graph.py workflow_of):
    # its folded workflow as a key of name ids (the names table: each command name's JSON token, an
    # id) and a digest of its exact sequence. NULL for older rows (the report folds their commands).
    Migration(
        4,
        (
            "CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, token BLOB UNIQUE NOT NULL)",
            "ALTER TABLE history ADD COLUMN workflow BLOB",
            "ALTER TABLE history ADD COLUMN exact BLOB",
        ),
    ),
    # How the outcome was judged (core/evidence.py): the rule's name and the session's rework count.
    # NULL for older rows.
    Migration(5, ("ALTER TABLE history ADD COLUMN rule TEXT", "ALTER TABLE history ADD COLUMN rework INTEGER")),
)


# -- applying them ---------------------------------------------------------------


def latest(migrations: Sequence[Migration]) -> int:
    """The version this build writes."""
    return migrations[-1].version


def version(db: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """The file's schema version (a read, no write access needed); SchemaTooNew past `latest`."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > latest(migrations):
        raise SchemaTooNew(found, latest(migrations))
    return found


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Apply the migrations the file lacks, in one write transaction; how many (0: it was current).

    `db` in autocommit mode (isolation_level=None) and not in a transaction.
    sqlite3.Error on failure, with nothing applied.
    """
    if version(db, migrations) == latest(migrations):
        return 0  # no write, no write lock: a reader of a current store needs neither
    db.execute("BEGIN IMMEDIATE")
    try:
        found = version(db, migrations)  # again: another connection may have migrated it meanwhile
        missing = [migration for migration in migrations if migration.version > found]
        for migration in missing:
            for statement in migration.statements:
                db.execute(statement)
        # The header field is written in this transaction: the version and the tables change together.
        db.execute(f"PRAGMA user_version = {latest(migrations)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    return len(missing)
