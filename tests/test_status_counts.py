"""The outbox's counts, kept by triggers, equal a plain count after any sequence of operations."""

from __future__ import annotations

import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.storage.state import StateStore

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("commit"), st.integers(0, 4), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("deliver"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("reject"), st.integers(0, 20)),
    st.tuples(st.just("retry"), st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("forget")),
), max_size=25)


def plain_counts(path):
    connection = sqlite3.connect(str(path))
    try:
        return dict(connection.execute("SELECT status, count(*) FROM sessions GROUP BY status"))
    finally:
        connection.close()


def session(number, length):
    commands = [("open_file", 1000.0 + number + i, "file_open") for i in range(length)]
    return ClosedSession.from_commands(f"s{number}", commands, number * 10 + 1, number * 10 + length,
                                       learnable=length >= 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPERATIONS)
def test_counts_follow_every_operation(tmp_path_factory, operations):
    directory = tmp_path_factory.mktemp("state")
    store = StateStore(directory)
    number = position = 0
    for operation in operations:
        kind = operation[0]
        if kind == "commit":
            _, learnable, short, advance = operation
            closed = []
            for _ in range(learnable):
                number += 1
                closed.append(session(number, 4))
            for _ in range(short):
                number += 1
                closed.append(session(number, 1))
            position = number * 10 if advance else position
            store.commit(position, number * 10 + 10, None, closed, {})
        else:
            ids = [row[0] for row in sqlite3.connect(str(directory / "state.db")).execute("SELECT id FROM sessions")]
            target = ids[operation[1] % len(ids)] if ids and len(operation) > 1 and isinstance(operation[1], int) \
                else None
            if kind == "deliver" and target is not None:
                store.mark_delivered(target, "p1" if operation[2] else None)
            elif kind == "reject" and target is not None:
                store.mark_rejected(target, "HTTP 422")
            elif kind == "retry":
                store.retry_rejected([target] if operation[1] and target else None)
            elif kind == "drop" and target is not None:
                store.drop(target)
            elif kind == "forget":
                store.forget_database()
        assert store.status_counts() == plain_counts(directory / "state.db")
    store.close()


def test_a_store_of_an_earlier_version_is_counted_once_when_opened(tmp_path):
    store = StateStore(tmp_path)
    store.commit(10, 10, None, [session(1, 4), session(2, 4), session(3, 1)], {})
    store.close()
    # As an earlier version left it: no counting table, no triggers, no mark.
    connection = sqlite3.connect(str(tmp_path / "state.db"))
    for name in ("sessions_counted_in", "sessions_counted_out", "sessions_counted_moved"):
        connection.execute(f"DROP TRIGGER IF EXISTS {name}")
    connection.execute("DROP TABLE status_counts")
    connection.execute("INSERT INTO sessions (idempotency_key, session_id, first_rowid, last_rowid, status,"
                       " n_commands, closed_at) VALUES ('k', 'old', 50, 60, 'rejected', 3, 0)")
    connection.commit()
    connection.close()
    reader = StateStore(tmp_path, create=False)  # a command that only reads counts the plain way
    assert reader.status_counts() == {"pending": 2, "rejected": 1, "too_short": 1}
    reader.close()
    store = StateStore(tmp_path)
    assert store.status_counts() == {"pending": 2, "rejected": 1, "too_short": 1} == plain_counts(
        tmp_path / "state.db")
    store.mark_delivered(store.pending()[0].id, "p")
    assert store.status_counts() == plain_counts(tmp_path / "state.db")
    store.close()


def test_the_insert_trigger_of_the_previous_build_is_dropped_not_counted_twice(tmp_path):
    store = StateStore(tmp_path)
    store.commit(10, 10, None, [session(1, 4), session(2, 1)], {})
    store.close()
    # As the previous build left it: its counts right, and a trigger counting each insert.
    connection = sqlite3.connect(str(tmp_path / "state.db"))
    connection.execute("""CREATE TRIGGER sessions_counted_in AFTER INSERT ON sessions BEGIN
        INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END""")
    connection.commit()
    connection.close()
    reader = StateStore(tmp_path, create=False)  # it cannot tell which counts are kept: counts the plain way
    assert reader.status_counts() == {"pending": 1, "too_short": 1}
    reader.close()
    store = StateStore(tmp_path)
    store.commit(40, 40, None, [session(3, 4), session(4, 4), session(5, 1)], {})
    assert store.status_counts() == {"pending": 3, "too_short": 1} == plain_counts(tmp_path / "state.db")
    triggers = {name for (name,) in sqlite3.connect(str(tmp_path / "state.db")).execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert "sessions_counted_in" not in triggers
    store.close()
