"""The commands that read state.db, in the moment of the service's first start when the file exists without its tables.

Found by a test that asked `status --json` while the service started: the
file had been created, its first migration not yet run, and status died with
a traceback ("no such table: counters") and printed nothing.  Here the file
is made as the service makes it, empty, and held that way.
"""

import json
import os

import pytest
from helpers import create_db, learner_env, run_learner


@pytest.fixture
def env(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.close(os.open(state / "state.db", os.O_CREAT | os.O_WRONLY, 0o600))  # as the service's first moment
    return learner_env(tmp_path, "http://127.0.0.1:9", db)


def test_status_says_no_state_yet_instead_of_a_traceback(env):
    result = run_learner(env, "status", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 4, (result.returncode, result.stderr)
    report = json.loads(result.stdout)
    assert report["stats"] is None and report["running"] is False
    human = run_learner(env, "status")
    assert human.returncode == 4 and "never run" in human.stdout and "Traceback" not in human.stderr


@pytest.mark.parametrize("command", [["outbox"], ["doctor"], ["reconcile", "--dry-run"], ["history"], ["report"]])
def test_the_other_readers_say_it_clearly(env, command):
    result = run_learner(env, *command)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0 or result.stdout.strip(), (result.returncode, result.stdout, result.stderr)
