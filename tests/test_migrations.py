"""The versioned schema: a store made by 0.1.0's code opens, is migrated once and loses nothing; a newer one is refused.

The 0.1.0 stores are SQL in tests/fixtures/, written by make_0_1_0_stores.py
run against the release's own code (commit on their first line).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from helpers import create_db, learner_env, load_0_1_0, run_learner

from omnimemory_learner.core.fates import Fate
from omnimemory_learner.storage import migrations
from omnimemory_learner.storage.history import HistoryStore
from omnimemory_learner.storage.migrations import COUNTERS, HISTORY_MIGRATIONS, STATE_MIGRATIONS
from omnimemory_learner.storage.state import Fingerprint, StateError, StateStore

CURRENT = migrations.latest(STATE_MIGRATIONS)
HISTORY_CURRENT = migrations.latest(HISTORY_MIGRATIONS)
LATEST = {"state.db": CURRENT, "history.db": HISTORY_CURRENT}


def rows(path: Path, sql: str) -> list:
    connection = sqlite3.connect(str(path))
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def user_version(path: Path) -> int:
    return rows(path, "PRAGMA user_version")[0][0]


def test_the_migrations_are_numbered_one_by_one_and_a_new_store_is_current(tmp_path):
    for listed in (STATE_MIGRATIONS, HISTORY_MIGRATIONS):
        assert [migration.version for migration in listed] == list(range(1, len(listed) + 1))
    StateStore(tmp_path).close()
    HistoryStore(tmp_path).close()
    assert user_version(tmp_path / "state.db") == CURRENT
    assert user_version(tmp_path / "history.db") == migrations.latest(HISTORY_MIGRATIONS)
    assert dict(rows(tmp_path / "state.db", "SELECT name, value FROM counters")) == dict.fromkeys(COUNTERS, 0)


def test_a_0_1_0_store_is_migrated_once_and_keeps_every_row_and_counter(tmp_path, monkeypatch):
    state = tmp_path / "state"
    load_0_1_0(state)
    assert user_version(state / "state.db") == 0 and user_version(state / "history.db") == 0
    before = {
        table: rows(state / "state.db", f"SELECT * FROM {table} ORDER BY 1")
        for table in ("sessions", "counters", "meta", "status_counts")
    }
    history_before = rows(state / "history.db", "SELECT * FROM history ORDER BY key")
    assert {row[5] for row in before["sessions"]} == {
        Fate.PENDING,
        Fate.REJECTED,
        Fate.LEARNED,
        Fate.NOT_LEARNED,
        Fate.TOO_SHORT,
        Fate.ALREADY_DELIVERED,
    }

    store = StateStore(state)
    assert user_version(state / "state.db") == CURRENT
    after = {table: rows(state / "state.db", f"SELECT * FROM {table} ORDER BY 1") for table in before}
    # Migration 2 adds a counter (events_excluded, issue 26), at 0.
    assert after.pop("counters") == sorted([*before.pop("counters"), ("events_excluded", 0)])
    assert after == before  # 0.1.0's counts were right: recounting changed nothing either
    assert store.status_counts() == dict(rows(state / "state.db", "SELECT status, count(*) FROM sessions GROUP BY 1"))
    assert store.counters()["events_processed"] == 90 and store.counters()["patterns_learned"] == 1
    assert store.position().fingerprint == Fingerprint([1, "first row"], [90, "last row"])
    assert store.replaced()["verdict"] == "copy"
    # The outbox read back whole: its empty stored key is the content key.
    pending = store.outbox.pending()
    assert [session.session_id for session in pending] == ["session-1", "session-2", "session-6"]
    for session in pending:
        assert session.idempotency_key == session.content_key and len(session.commands) >= 3
    assert [session.failures for session in pending] == [0, 0, 1]
    assert store.outbox.undelivered(before["sessions"][4][0]).session_id == "session-5"  # the rejected one
    store.close()

    history = HistoryStore(state)
    assert history.problem is None and user_version(state / "history.db") == migrations.latest(HISTORY_MIGRATIONS)
    # Every row as it was, with version 3's columns after it (no body kept, never taught again) and
    # version 4's (no workflow key: the report folds its commands) and version 5's (no rule, no rework).
    assert rows(state / "history.db", "SELECT * FROM history ORDER BY key") == [
        (*row, None, 0, None, None, None, None, None) for row in history_before
    ]
    assert {entry.session_id: entry.settled for entry in history.sessions()} == {
        "session-3": Fate.TOO_SHORT,
        "session-4": Fate.LEARNED,
        "session-5": Fate.REJECTED,
        "session-8": Fate.NOT_LEARNED,
    }
    history.close()

    # A second open migrates nothing.
    applied = []
    migrate = migrations.migrate
    monkeypatch.setattr(migrations, "migrate", lambda *args: applied.append(migrate(*args)) or applied[-1])
    StateStore(state).close()
    HistoryStore(state).close()
    StateStore(state, create=False).close()
    assert applied == []
    connection = sqlite3.connect(str(state / "state.db"), isolation_level=None)
    assert migrate(connection, STATE_MIGRATIONS) == 0
    connection.close()


def test_read_only_commands_on_a_0_1_0_store_before_the_service_ran(tmp_path, api):
    load_0_1_0(tmp_path / "state")
    env = learner_env(tmp_path, api.url, create_db(tmp_path / "events.db"))
    outbox = run_learner(env, "outbox", "--json")
    assert outbox.returncode == 0, outbox.stderr
    listed = json.loads(outbox.stdout)
    assert [(entry["session_id"], entry["status"]) for entry in listed] == [
        ("session-1", Fate.PENDING),
        ("session-2", Fate.PENDING),
        ("session-5", Fate.REJECTED),
        ("session-6", Fate.PENDING),
    ]
    assert listed[3]["failures"] == 1 and listed[3]["next_attempt_at"] is not None
    status = run_learner(env, "status", "--json")
    assert status.returncode in (0, 3), status.stderr
    stats = json.loads(status.stdout)["stats"]
    assert stats["outbox_pending"] == 3 and stats["events_processed"] == 90
    history = run_learner(env, "history", "--json")
    assert history.returncode == 0, history.stderr
    assert len(json.loads(history.stdout)) == 4
    # Read-only commands write nothing, even with the right to (an old service may still hold the store):
    # the service migrates the files when it starts.
    before = {name: (tmp_path / "state" / name).read_bytes() for name in ("state.db", "history.db")}
    for command in (["status"], ["outbox"], ["history"], ["report", "--json"]):
        assert run_learner(env, *command).returncode in (0, 3), command
    assert {name: (tmp_path / "state" / name).read_bytes() for name in before} == before
    assert user_version(tmp_path / "state" / "state.db") == 0 == user_version(tmp_path / "state" / "history.db")


def test_a_reader_without_write_access_reads_a_0_1_0_store_as_it_is(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anyway")
    load_0_1_0(tmp_path)
    for name in ("state.db", "history.db"):
        os.chmod(tmp_path / name, 0o400)
    os.chmod(tmp_path, 0o500)
    try:
        store = StateStore(tmp_path, create=False)
        assert [row["session_id"] for row in store.outbox.entries()] == [
            "session-1",
            "session-2",
            "session-5",
            "session-6",
        ]
        assert store.status_counts()[Fate.PENDING] == 3
        store.close()
        history = HistoryStore(tmp_path, create=False)
        assert history.problem is None and history.count() == 4
        history.close()
    finally:
        os.chmod(tmp_path, 0o700)
    assert user_version(tmp_path / "state.db") == 0  # left for the service to migrate


def test_the_pending_sessions_of_a_0_1_0_store_are_delivered_once(tmp_path, api):
    load_0_1_0(tmp_path / "state")
    store = StateStore(tmp_path / "state", create=False)
    keys = {session.session_id: session.content_key for session in store.outbox.pending()}
    # 0.1.0 judged them by the original rule when it committed them (and may have sent them): told as it judged.
    judged = {session.session_id: session.outcome for session in store.outbox.pending()}
    assert None not in judged.values()
    store.close()
    # The fixture's sessions are older than the history keeps by default.
    env = learner_env(tmp_path, api.url, create_db(tmp_path / "events.db"), OMNIMEMORY_LEARNER_HISTORY_DAYS="100000")
    result = run_learner(env, "backfill", "--until-delivered-timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    sent = sorted((body["session_id"], key) for key, body in api.sessions())
    assert sent == sorted(keys.items())  # each once, with its content key as the Idempotency-Key
    assert {body["session_id"]: body["session_outcome"] for _, body in api.sessions()} == judged
    store = StateStore(tmp_path / "state", create=False)
    counts = store.status_counts()
    store.close()
    assert counts.get(Fate.PENDING, 0) == 0 and counts[Fate.REJECTED] == 1
    history = HistoryStore(tmp_path / "state", create=False)
    settled = {entry.key: entry.settled for entry in history.sessions()}
    history.close()
    assert len(settled) == 4 + 3 and {settled[key] for key in keys.values()} == {Fate.LEARNED}


def test_a_store_of_a_newer_schema_is_refused_and_left_as_it_is(tmp_path):
    StateStore(tmp_path).close()
    HistoryStore(tmp_path).close()
    for name in ("state.db", "history.db"):
        connection = sqlite3.connect(str(tmp_path / name))
        connection.execute(f"PRAGMA user_version = {LATEST[name] + 1}")
        connection.close()
    contents = {name: (tmp_path / name).read_bytes() for name in ("state.db", "history.db")}

    def said(latest):
        return f"made by a newer version of omnimemory-learner (schema {latest + 1}, this build knows up to {latest})"

    for create in (True, False):
        with pytest.raises(StateError, match=said(CURRENT).replace("(", r"\(").replace(")", r"\)")):
            StateStore(tmp_path, create=create)
        history = HistoryStore(tmp_path, create=create)
        assert history.problem is not None and said(HISTORY_CURRENT) in history.problem
        assert history.record([]) and history.sessions() == [] and history.delivered(["k"]) == set()
        history.close()
    assert {name: (tmp_path / name).read_bytes() for name in contents} == contents
    assert sorted(path.name for path in tmp_path.iterdir() if "corrupt" in path.name) == []  # never moved aside


def test_a_newer_state_store_is_refused_by_a_command_with_the_clear_error(tmp_path, api):
    StateStore(tmp_path / "state").close()
    HistoryStore(tmp_path / "state").close()
    for name in ("state.db", "history.db"):
        connection = sqlite3.connect(str(tmp_path / "state" / name))
        connection.execute(f"PRAGMA user_version = {LATEST[name] + 1}")
        connection.close()
    env = learner_env(tmp_path, api.url, create_db(tmp_path / "events.db"))
    for command in ("outbox", "status"):
        result = run_learner(env, command)
        assert result.returncode != 0
        assert "made by a newer version of omnimemory-learner" in result.stdout + result.stderr
    result = run_learner(env, "history")  # nothing to show, and why
    assert result.returncode == 4 and "made by a newer version of omnimemory-learner" in result.stderr


@pytest.mark.parametrize("kind", ["new", "0.1.0"])
def test_connections_opening_one_store_at_once_all_succeed_and_it_is_migrated_once(tmp_path, kind, monkeypatch):
    applied = []
    migrate = migrations.migrate
    monkeypatch.setattr(migrations, "migrate", lambda *args: applied.append(migrate(*args)) or applied[-1])
    for round_ in range(10):
        state_dir = tmp_path / f"r{round_}"
        if kind == "0.1.0":
            load_0_1_0(state_dir)
        barrier = threading.Barrier(4)
        problems = []

        def open_stores():
            barrier.wait()
            try:
                StateStore(state_dir).close()
                history = HistoryStore(state_dir)
                assert history.problem is None, history.problem
                history.close()
            except Exception as error:  # the test reports any
                problems.append(repr(error))

        threads = [threading.Thread(target=open_stores) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert problems == []
        assert user_version(state_dir / "state.db") == CURRENT
        counted = dict(rows(state_dir / "state.db", "SELECT status, n FROM status_counts WHERE n"))
        assert counted == dict(rows(state_dir / "state.db", "SELECT status, count(*) FROM sessions GROUP BY 1"))
    # Per round one open migrated state.db (1 step) and one history.db (all its steps); the others found it done.
    assert sorted(step for step in applied if step) == [CURRENT] * 10 + [HISTORY_CURRENT] * 10
