"""The outbox's counts, kept by triggers, equal a plain count after any sequence of operations."""

from __future__ import annotations

import os
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimemory_learner.core.evidence import OutcomeRule
from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery.learn_api import learn_body
from omnimemory_learner.storage.migrations import STATE_MIGRATIONS, latest
from omnimemory_learner.storage.sqlite_file import StoreFile
from omnimemory_learner.storage.state import Position, StateError, StateStore

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(0, 4), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("deliver"), st.integers(0, 20), st.booleans()),
        st.tuples(st.just("reject"), st.integers(0, 20)),
        st.tuples(st.just("retry"), st.booleans()),
        st.tuples(st.just("drop"), st.integers(0, 20)),
        st.tuples(st.just("forget")),
    ),
    max_size=25,
)


def plain_counts(path):
    connection = sqlite3.connect(str(path))
    try:
        return dict(connection.execute("SELECT status, count(*) FROM sessions GROUP BY status"))
    finally:
        connection.close()


def session(number, length):
    commands = [("open_file", 1000.0 + number + i, "file_open") for i in range(length)]
    return ClosedSession.from_commands(
        f"s{number}", commands, number * 10 + 1, number * 10 + length, learnable=length >= 3
    )


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
            store.commit(Position(position, number * 10 + 10), closed, {})
        else:
            ids = [row[0] for row in sqlite3.connect(str(directory / "state.db")).execute("SELECT id FROM sessions")]
            target = (
                ids[operation[1] % len(ids)] if ids and len(operation) > 1 and isinstance(operation[1], int) else None
            )
            if kind == "deliver" and target is not None:
                store.outbox.mark_delivered(target, "p1" if operation[2] else None)
            elif kind == "reject" and target is not None:
                store.outbox.mark_rejected(target, "HTTP 422")
            elif kind == "retry":
                store.outbox.retry_rejected([target] if operation[1] and target else None)
            elif kind == "drop" and target is not None:
                store.outbox.drop(target)
            elif kind == "forget":
                store.forget_database()
        assert store.status_counts() == plain_counts(directory / "state.db")
    store.close()


def test_a_store_that_lost_its_counting_triggers_is_counted_once_when_opened(tmp_path):
    store = StateStore(tmp_path)
    store.commit(Position(10, 10), [session(1, 4), session(2, 4), session(3, 1)], {})
    store.close()
    # As a table rebuilt by hand leaves it: no counting table, no triggers (the schema version unchanged).
    connection = sqlite3.connect(str(tmp_path / "state.db"))
    for name in ("sessions_counted_out", "sessions_counted_moved"):
        connection.execute(f"DROP TRIGGER IF EXISTS {name}")
    connection.execute("DROP TABLE status_counts")
    connection.execute(
        "INSERT INTO sessions (idempotency_key, session_id, first_rowid, last_rowid, status,"
        " n_commands, closed_at) VALUES ('k', 'old', 50, 60, 'rejected', 3, 0)"
    )
    connection.commit()
    connection.close()
    reader = StateStore(tmp_path, create=False)  # a command that only reads counts the plain way
    assert reader.status_counts() == {"pending": 2, "rejected": 1, "too_short": 1}
    reader.close()
    store = StateStore(tmp_path)
    assert store.status_counts() == {"pending": 2, "rejected": 1, "too_short": 1} == plain_counts(tmp_path / "state.db")
    store.outbox.mark_delivered(store.outbox.pending()[0].id, "p")
    assert store.status_counts() == plain_counts(tmp_path / "state.db")
    store.close()


NAMES = st.sampled_from(
    [
        ("open_file", "file_open"),
        ("edit_code", "code_edit"),
        ("save_file", "file_save"),
        ("commit_changes", "git_commit"),
        ("delete_file", "file_delete"),
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(NAMES, st.floats(1e9, 2e9)), min_size=1, max_size=30), st.integers(0, 50))
def test_the_quality_scored_when_sent_equals_the_quality_at_close(tmp_path_factory, events, unmapped):
    # min_quality = 0: the reading thread leaves the score to the delivery thread (PendingSession.scored_quality).
    from array import array

    closed = ClosedSession(
        "s",
        [pair for pair, _ in events],
        array("d", [time for _, time in events]),
        1,
        len(events),
        "idle",
        True,
        unmapped,
    )
    at_close = closed.score_quality()
    store = StateStore(tmp_path_factory.mktemp("state"))
    store.commit(Position(0, len(events)), [closed], {})
    (pending,) = store.outbox.pending()
    assert pending.quality is None and pending.scored_quality() == at_close
    assert learn_body(pending.judged(OutcomeRule()))["quality"] == at_close
    store.close()


def test_outbox_rows_of_earlier_builds_keep_their_quality_or_have_none(tmp_path):
    store = StateStore(tmp_path)
    store.commit(Position(0, 20), [session(1, 4), session(2, 4)], {})
    connection = sqlite3.connect(str(tmp_path / "state.db"))
    first, second = [row[0] for row in connection.execute("SELECT id FROM sessions ORDER BY id")]
    connection.execute("UPDATE sessions SET quality = 0.42, unmapped = NULL WHERE id = ?", (first,))  # scored then
    connection.execute("UPDATE sessions SET quality = NULL, unmapped = NULL WHERE id = ?", (second,))  # before quality
    connection.commit()
    connection.close()
    by_id = {row.id: row for row in store.outbox.pending()}
    assert learn_body(by_id[first].judged(OutcomeRule()))["quality"] == 0.42
    assert "quality" not in learn_body(by_id[second].judged(OutcomeRule()))
    store.close()


def test_a_store_of_0_1_0_or_rebuilt_by_hand_put_in_place_under_a_running_service_is_brought_up_to_date(tmp_path):
    # A backup restored by hand while the service runs: its connection reopens the file at the
    # path and must migrate and count as this build does (its triggers, a counting table).
    store = StateStore(tmp_path / "live")
    store.commit(Position(10, 10), [session(1, 4)], {})
    for kind in ("0.1.0", "rebuilt by hand"):
        older = StateStore(tmp_path / kind)
        older.commit(Position(10, 10), [session(2, 4), session(3, 1)], {})
        older.close()
        connection = sqlite3.connect(str(tmp_path / kind / "state.db"))
        if kind == "0.1.0":
            connection.execute("PRAGMA user_version = 0")  # its format is version 1's, unnumbered
        else:
            for name in ("sessions_counted_out", "sessions_counted_moved"):
                connection.execute(f"DROP TRIGGER {name}")
            connection.execute("DROP TABLE status_counts")
        connection.commit()
        connection.execute("VACUUM INTO ?", (str(tmp_path / "live" / "state.db.restored"),))  # the backup, whole
        connection.close()
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a quiet moment: the live WAL holds nothing
        os.replace(tmp_path / "live" / "state.db.restored", tmp_path / "live" / "state.db")
        store.commit(Position(40, 40), [session(4, 4), session(5, 4)], {})
        print(
            kind,
            store.status_counts(),
            plain_counts(tmp_path / "live" / "state.db"),
            [r[0] for r in store._db.execute("select name from sqlite_master where type='trigger'")],
        )
        assert store.status_counts() == plain_counts(tmp_path / "live" / "state.db")
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == latest(STATE_MIGRATIONS)
    store.close()


@pytest.mark.parametrize("kind", ["empty", "junk", "another database", "fifo"])
def test_a_state_store_replaced_by_a_file_that_is_not_one_is_left_alone_and_the_state_kept(tmp_path, kind):
    store = StateStore(tmp_path)
    store.commit(Position(10, 10), [session(1, 4), session(2, 4)], {})
    foreign = tmp_path / "foreign"
    if kind == "fifo":
        os.mkfifo(foreign)
    elif kind == "another database":
        other = sqlite3.connect(str(foreign))
        other.execute("CREATE TABLE users (name TEXT)")
        other.commit()
        other.close()
    else:
        foreign.write_bytes(b"" if kind == "empty" else b"not a database at all " * 100)
    before = None if kind == "fifo" else foreign.read_bytes()
    os.replace(foreign, tmp_path / "state.db")
    for _ in range(2):  # said on every write, never adopted nor overwritten
        with pytest.raises(StateError, match="replaced by a file that is not one"):
            store.commit(Position(40, 40), [session(3, 4)], {})
    if before is not None:
        assert (tmp_path / "state.db").read_bytes() == before
    os.remove(tmp_path / "state.db")  # the user moves it away: the state is written back
    store.commit(Position(40, 40), [session(3, 4)], {})
    assert [row.session_id for row in store.outbox.pending()] == ["s1", "s2", "s3"]
    assert store.status_counts() == {"pending": 3} == plain_counts(tmp_path / "state.db")
    store.close()


def test_a_replaced_store_that_cannot_be_prepared_now_is_prepared_on_the_next_write(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.commit(Position(10, 10), [session(1, 4)], {})
    older = StateStore(tmp_path / "older")
    older.commit(Position(10, 10), [session(2, 4)], {})
    older.close()
    connection = sqlite3.connect(str(tmp_path / "older" / "state.db"))
    connection.execute("PRAGMA user_version = 0")  # as 0.1.0 left it: to be migrated
    connection.execute("VACUUM INTO ?", (str(tmp_path / "restored"),))
    connection.close()
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(tmp_path / "restored", tmp_path / "state.db")
    prepare = StoreFile._prepare

    def locked_once(self):
        monkeypatch.setattr(StoreFile, "_prepare", prepare)
        raise sqlite3.OperationalError("database is locked")  # another process held it past the busy timeout

    monkeypatch.setattr(StoreFile, "_prepare", locked_once)
    with pytest.raises(StateError):
        store.commit(Position(40, 40), [session(4, 4)], {})
    store.commit(Position(40, 40), [session(4, 4)], {})
    assert [row.session_id for row in store.outbox.pending()] == ["s2", "s4"]
    assert store.status_counts() == {"pending": 2} == plain_counts(tmp_path / "state.db")
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == latest(STATE_MIGRATIONS)
    store.close()
