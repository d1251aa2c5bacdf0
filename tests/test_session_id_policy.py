"""Issue 26, item 3: send_session_id = plain | hashed | omit, on every path that sends a body.

Real parts: the learner in its own processes, a real SQLite writer, the
original API's stand-in (every body it reads recorded) on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest
from helpers import create_db, insert_events, learner_env, run_learner
from original_api import OriginalAPI
from test_privacy_paths import IDLE_SECONDS, stamp

from omnimemory_learner.config import ConfigError, load_config
from omnimemory_learner.delivery.learn_api import SessionIds
from omnimemory_learner.storage.secret import SECRET_FILE, SecretError, session_id_secret

HASH = re.compile(r"^[0-9a-f]{32}$")


def sessions_of(ids, start, count=2):
    """Rows: `count` sessions of four events per id, 100 s apart."""
    rows = []
    for slot in range(count):
        for number, session_id in enumerate(ids):
            base = start + (slot * len(ids) + number) * 100.0
            rows += [
                (stamp(base + 0.3 * i), kind, session_id)
                for i, kind in enumerate(["file_open", "code_edit", "file_save", "git_commit"])
            ]
    return sorted(rows)


def env_for(tmp_path, api, db, policy):
    return learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=str(IDLE_SECONDS / 60),
        OMNIMEMORY_LEARNER_SEND_SESSION_ID=policy,
    )


def test_hashed_sends_one_stable_hash_per_id_across_sessions_and_restarts_never_the_id(tmp_path, bodies):
    ids = ["alice-laptop", "bob-desktop"]
    with OriginalAPI() as api:
        db = create_db(tmp_path / "events.db")
        env = env_for(tmp_path, api, db, "hashed")
        start = time.time() - 86400
        for part in range(2):  # two runs of the learner: the secret is read back, not made again
            insert_events(db, sessions_of(ids, start + part * 10_000))
            result = run_learner(env, "backfill", "--until-delivered-timeout", "30")
            assert result.returncode == 0, result.stdout + result.stderr
        assert len(bodies) == 8
        told = {body["session_id"] for body in bodies}
        assert len(told) == 2 and all(HASH.match(value) for value in told)
        raw = json.dumps(bodies)
        assert not any(session_id in raw for session_id in ids)
        secret = tmp_path / "state" / SECRET_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.stat().st_size == 32
        expected = SessionIds(SessionIds.HASHED, tmp_path / "state")
        assert told == {expected.told(session_id) for session_id in ids}
        # The history keeps the real id (it is the user's own), and teaching again sends the hash.
        history = json.loads(run_learner(env, "history", "--json").stdout)
        assert {entry["session_id"] for entry in history} == set(ids)
        before = len(bodies)
        api.restart()
        result = run_learner(env, "reconcile")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(bodies) > before and {body["session_id"] for body in bodies[before:]} <= told


def test_a_policy_changed_later_applies_to_what_is_taught_again(tmp_path, bodies):
    with OriginalAPI() as api:
        db = create_db(tmp_path / "events.db")
        insert_events(db, sessions_of(["carol"], time.time() - 86400))
        assert (
            run_learner(env_for(tmp_path, api, db, "plain"), "backfill", "--until-delivered-timeout", "30").returncode
            == 0
        )
        assert {body["session_id"] for body in bodies} == {"carol"}  # as the original service sends it
        before = len(bodies)
        api.restart()
        result = run_learner(env_for(tmp_path, api, db, "omit"), "reconcile")
        assert result.returncode == 0, result.stdout + result.stderr
        retaught = bodies[before:]
        assert retaught and all("session_id" not in body for body in retaught)
        first_sent = [body["session_commands"] for body in bodies[:before]]
        assert all(body["session_commands"] in first_sent for body in retaught)  # only the id changed


def test_omit_sends_no_session_id_and_makes_no_secret(tmp_path, bodies):
    with OriginalAPI() as api:
        db = create_db(tmp_path / "events.db")
        insert_events(db, sessions_of(["dave"], time.time() - 86400, 1))
        result = run_learner(env_for(tmp_path, api, db, "omit"), "backfill", "--until-delivered-timeout", "30")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(bodies) == 1 and "session_id" not in bodies[0] and bodies[0]["tool_id"] == "omnimemory-learner"
        assert not (tmp_path / "state" / SECRET_FILE).exists()


def test_the_secret_is_never_read_through_a_symlink_nor_when_others_can_read_it(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 32)
    os.symlink(target, state / SECRET_FILE)
    with pytest.raises(SecretError):
        session_id_secret(state)
    (state / SECRET_FILE).unlink()
    first = session_id_secret(state)
    assert session_id_secret(state) == first and len(first) == 32
    os.chmod(state / SECRET_FILE, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        session_id_secret(state)


def test_an_unknown_policy_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="send_session_id.*plain, hashed, omit"):
        load_config(None, {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_SEND_SESSION_ID": "sha1"})
    assert (
        load_config(None, {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_SEND_SESSION_ID": "Hashed"}).send_session_id
        == "hashed"
    )
