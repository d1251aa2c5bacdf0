"""Opening the daemon's database: one escaped read-only URI for every reader,
schemas without a usable row id, and numbers stored as text."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import create_db, insert_events, learner_env, output_of, run_learner, start_learner, stop, wait_until
from hypothesis import example, given, settings
from hypothesis import strategies as st

from omnimemory_learner.events import (
    MAX_TIMESTAMP,
    EventReader,
    Unavailable,
    open_read_only,
    parse_timestamp,
    read_only_uri,
)


def tree(path: Path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


HOSTILE_NAMES = ["we#ird?dir/memory#data?.db", "100%/mem%20ory.db", "sp ace/a&b=c;d.db", "q?mode=rwc/x.db"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_read_only_uri_opens_the_named_file_and_never_creates_one(tmp_path, name):
    # Rollback-journal mode: in WAL mode SQLite itself adds the -wal and -shm a reader needs.
    db = create_db(tmp_path / name, wal=False)
    insert_events(db, [("2025-11-08T05:00:00", "file_open", "s")])
    before = tree(tmp_path)
    connection = open_read_only(db, timeout=1)
    try:
        assert connection.execute("SELECT count(*) FROM events").fetchone() == (1,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            connection.execute("INSERT INTO events (timestamp) VALUES ('x')")
    finally:
        connection.close()
    missing = tmp_path / name.replace(".db", "-missing.db")
    with pytest.raises(sqlite3.OperationalError):
        open_read_only(missing, timeout=1).execute("SELECT 1 FROM events")
    assert tree(tmp_path) == before  # nothing created where the path was cut, nor the missing file
    assert "?mode=ro" in read_only_uri(db) and read_only_uri(db).count("?") == 1 and "#" not in read_only_uri(db)


def test_doctor_status_and_service_read_a_path_with_hash_and_question_mark(tmp_path, api):
    db = create_db(tmp_path / "data#1" / "memory?data.db", wal=False)
    insert_events(db, [(time.strftime("%Y-%m-%dT%H:%M:%S"), kind, "s") for kind in ("file_open", "code_edit")])
    env = learner_env(tmp_path, api.url, db)
    before = tree(tmp_path / "data#1") + tree(tmp_path)
    doctor = run_learner(env, "doctor", "--json")
    checks = {check["name"]: check for check in json.loads(doctor.stdout)}
    assert checks["database"]["level"] == "ok" and ": 2 events" in checks["database"]["message"], checks["database"]
    assert tree(tmp_path / "data#1") + tree(tmp_path) == before, "doctor created a file beside the database"
    learner = start_learner(env)
    try:
        assert wait_until(
            lambda: (
                (json.loads(run_learner(env, "status", "--json").stdout)["stats"] or {}).get("events_processed") == 2
            ),
            20,
        ), output_of(learner)
        assert json.loads(run_learner(env, "status", "--json").stdout)["db_head"] == 2
        assert stop(learner)[0] == 0
    finally:
        if learner.poll() is None:
            learner.kill()
    assert sorted(os.listdir(db.parent)) == ["memory?data.db"]  # WAL files are the writer's, gone at its close


UNUSABLE = {
    "view": (
        "CREATE TABLE raw (timestamp TEXT, event_type TEXT, session_id TEXT)",
        "CREATE VIEW events AS SELECT timestamp, event_type, session_id FROM raw",
        "INSERT INTO raw VALUES ('2025-11-08T05:00:00', 'file_open', 's')",
        "events is a view",
    ),
    "rowid column": (
        "CREATE TABLE events (rowid TEXT, timestamp TEXT, event_type TEXT, session_id TEXT)",
        None,
        "INSERT INTO events VALUES ('abc', '2025-11-08T05:00:00', 'file_open', 's')",
        "has a column named rowid",
    ),
    "without rowid": (
        "CREATE TABLE events (id TEXT PRIMARY KEY, timestamp TEXT, event_type TEXT, session_id TEXT) WITHOUT ROWID",
        None,
        "INSERT INTO events VALUES ('a', '2025-11-08T05:00:00', 'file_open', 's')",
        "WITHOUT ROWID table",
    ),
}


def make_unusable(path: Path, kind: str) -> str:
    create, view, insert, said = UNUSABLE[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path))
    for statement in (create, view, insert):
        if statement:
            db.execute(statement)
    db.commit()
    db.close()
    return said


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_events_without_a_usable_rowid_is_a_clear_problem(tmp_path, kind):
    db = tmp_path / "db" / "memory_data.db"
    said = make_unusable(db, kind)
    reader = EventReader(db)
    with pytest.raises(Unavailable) as raised:
        reader.read_batch(0, 10)
    assert raised.value.kind == "no-rowid" and said in str(raised.value)
    env = learner_env(tmp_path, "http://127.0.0.1:9", db)
    doctor = run_learner(env, "doctor", "--json")
    assert doctor.returncode == 1
    check = {c["name"]: c for c in json.loads(doctor.stdout)}["database"]
    assert check["level"] == "problem" and said in check["message"], check
    assert "Traceback" not in doctor.stderr


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_service_logs_an_unusable_events_table_once_and_keeps_running(tmp_path, api, kind):
    db = tmp_path / "db" / "memory_data.db"
    said = make_unusable(db, kind)
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=0.3)
    learner = start_learner(env)
    try:
        assert wait_until(lambda: said in output_of(learner), 20), output_of(learner)
        time.sleep(2)  # several polls
        assert learner.poll() is None
        out = output_of(learner)
        assert out.count(said) == 1 and "ERROR" in out and "Traceback" not in out, out
        report = json.loads(run_learner(env, "status", "--json").stdout)
        assert said in report["database_problem"] and report["stats"]["events_processed"] == 0
        assert stop(learner)[0] == 0
    finally:
        if learner.poll() is None:
            learner.kill()


def test_every_reader_of_the_daemons_database_opens_it_through_open_read_only():
    """Only events.py opens the daemon's database; storage/sqlite_file.py opens our own."""
    package = Path(__file__).resolve().parent.parent / "omnimemory_learner"
    opening = {
        str(path.relative_to(package)) for path in package.rglob("*.py") if "sqlite3.connect(" in path.read_text()
    }
    # state.db and history.db are the learner's own (storage/sqlite_file.py opens both); only events.py the daemon's.
    assert opening == {"events.py", "storage/sqlite_file.py"}, opening
    assert "file:" not in (package / "cli" / "doctor.py").read_text()


# -- numbers as text ---------------------------------------------------------------------------


def reference_unix_time(value):
    """A string of digits or a number is Unix time: seconds, or ms above 1e11."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not a number"
    seconds = value / 1000 if value > 1e11 else value
    return seconds if 0 < seconds <= MAX_TIMESTAMP else None


NOW = 1_764_000_000
recent_seconds = st.integers(NOW - 5 * 365 * 86400, NOW + 86400)
recent_milliseconds = st.integers((NOW - 5 * 365 * 86400) * 1000, (NOW + 86400) * 1000)
odd = st.sampled_from(
    [
        0,
        1,
        19700101,
        20231127,
        17010112,
        170101121000,
        99_999_999_999,
        100_000_000_000,
        100_000_000_001,
        253_402_300_799,
        253_402_300_800,
        253_402_300_799_000,
        253_402_300_800_000,
        10**25,
    ]
)
numbers = st.one_of(
    recent_seconds,
    recent_milliseconds,
    odd,
    st.integers(0, 10**16),
    recent_seconds.map(lambda s: s + 0.25),
    recent_milliseconds.map(lambda s: s + 0.5),
)


def as_forms(number):
    """The number as the writer might store it: a number, or text, padded or not."""
    text = str(number) if not isinstance(number, float) else repr(number)
    return st.sampled_from([number, text, f" {text} ", "000" + text, text + "\n"])


@settings(max_examples=3000, deadline=None)
@given(numbers.flatmap(as_forms))
@example("1701011210000")
@example("20231127")
@example("1701011210")
def test_digits_are_unix_time_never_an_iso_basic_date(value):
    expected = reference_unix_time(value)
    assert expected != "not a number"
    got = parse_timestamp(value)
    if expected is None:
        assert got is None, (value, got)
    else:
        assert got == pytest.approx(expected, rel=1e-12), (value, got, expected)


def test_iso_text_still_reads_as_a_date():
    assert parse_timestamp("2023-11-27T10:00:00+00:00") == 1701079200.0
    assert parse_timestamp("2023-11-27") is not None  # extended date form: a date, not digits
