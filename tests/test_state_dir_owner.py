"""A state directory another user made, or that others may write to, is refused: nothing is written through it.

Whoever can write in the state directory can plant symlinks named like the
learner's files (lock, state.db) pointing at the user's own files; the
learner would truncate or rewrite them.  Needs root (to make a directory of
another uid).
"""

import os
import signal
import sqlite3

import pytest
from helpers import create_db, learner_env, output_of, run_learner, start_learner, stop, wait_until

from omnimemory_learner.cli.exits import EX_CANTCREAT

OTHER_UID = 65534  # nobody
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's directory")


def _victims(tmp_path):
    """The user's own files that a planted symlink points at."""
    bashrc = tmp_path / "victim" / ".bashrc"
    bashrc.parent.mkdir()
    bashrc.write_text("export EDITOR=vi\n" * 20)
    database = tmp_path / "victim" / "own.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    return bashrc, database


def _planted(directory, bashrc, database, uid, mode):
    directory.mkdir()
    (directory / "lock").symlink_to(bashrc)
    (directory / "state.db").symlink_to(database)
    (directory / "history.db").symlink_to(database)
    os.chown(directory, uid, uid)
    directory.chmod(mode)


def _untouched(bashrc, database):
    assert bashrc.read_text() == "export EDITOR=vi\n" * 20
    with sqlite3.connect(database) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert tables == ["notes"] and mode == "delete"


@pytest.mark.parametrize(
    ("uid", "mode", "said"),
    [(OTHER_UID, 0o777, "belongs to uid 65534"), (OTHER_UID, 0o755, "belongs to uid 65534"), (0, 0o777, "mode 777")],
)
def test_backfill_refuses_and_follows_no_planted_symlink(tmp_path, uid, mode, said):
    bashrc, database = _victims(tmp_path)
    shared = tmp_path / "shared"
    _planted(shared, bashrc, database, uid, mode)
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, "http://127.0.0.1:9", db, OMNIMEMORY_LEARNER_STATE_DIR=shared)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "5")
    assert result.returncode == EX_CANTCREAT, result.stdout + result.stderr
    assert said in result.stderr and "refusing" in result.stderr
    _untouched(bashrc, database)


def test_the_service_waits_with_a_clear_error_and_writes_nothing(tmp_path):
    bashrc, database = _victims(tmp_path)
    shared = tmp_path / "shared"
    _planted(shared, bashrc, database, OTHER_UID, 0o1777)  # like /tmp
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, "http://127.0.0.1:9", db, OMNIMEMORY_LEARNER_STATE_DIR=shared)
    service = start_learner(env)
    try:
        assert wait_until(lambda: "refusing to use it" in output_of(service), timeout=30), output_of(service)
        assert service.poll() is None
    finally:
        code, out = stop(service, signal.SIGTERM)
    assert code == 0, out
    _untouched(bashrc, database)


def test_a_lock_that_is_a_symlink_in_the_users_own_directory_is_not_followed(tmp_path):
    bashrc, database = _victims(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "lock").symlink_to(bashrc)
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, "http://127.0.0.1:9", db, OMNIMEMORY_LEARNER_STATE_DIR=state)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "5")
    assert result.returncode == EX_CANTCREAT, result.stdout + result.stderr
    assert "lock" in result.stderr
    _untouched(bashrc, database)
