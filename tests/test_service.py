"""The service end to end: a subprocess, a writer process, a recording API."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import (
    IDLE_MINUTES,
    WRITER,
    RecordingAPI,
    create_db,
    insert_events,
    learner_env,
    pending,
    received,
    run_learner,
    start_learner,
    stop,
    true_sessions,
    wait_until,
)


def test_live_writer_and_backlog_give_the_same_sessions(tmp_path, api):
    db = tmp_path / "live" / "memory_data.db"
    db.parent.mkdir()
    env = learner_env(tmp_path / "a", api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env)
    writer = subprocess.run([sys.executable, WRITER, str(db), "1", "30"], capture_output=True, text=True, timeout=120)
    assert writer.returncode == 0, writer.stderr
    truth = true_sessions(db)
    assert len(truth) >= 5
    assert wait_until(lambda: len(api.sessions()) >= len(truth) and pending(tmp_path / "a" / "state") == 0)
    time.sleep(IDLE_MINUTES * 60 + 0.5)
    code, out = stop(learner)
    assert code == 0, out
    live = received(api)
    assert live == truth

    # The same rows, already in a database when the learner starts.
    backlog_api = RecordingAPI().start()
    try:
        env = learner_env(tmp_path / "b", backlog_api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
        result = run_learner(env, "backfill", "--until-delivered-timeout", "30")
        assert result.returncode == 0, result.stderr + result.stdout
        assert received(backlog_api) == live
    finally:
        backlog_api.stop()


def test_sigterm_commits_and_a_restart_sends_nothing_again(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    base = time.time() - 7200
    insert_events(
        db,
        [
            (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(base + s * 1000 + i)), t, f"s{s}")
            for s in range(20)
            for i, t in enumerate(["file_open", "code_edit", "file_save"])
        ],
    )
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env)
    assert api.wait_for(20)
    code, out = stop(learner)
    assert code == 0 and "Workflow learner stopped" in out
    learner = start_learner(env)
    time.sleep(3)
    code, out = stop(learner, signal.SIGINT)
    assert code == 0
    assert len(api.sessions()) == 20
    status = json.loads(run_learner(env, "status", "--json").stdout)
    assert status["running"] is False
    assert status["stats"]["patterns_learned"] == 20 and status["stats"]["events_processed"] == 60


@pytest.mark.parametrize("seed", [int(os.environ.get("KILL_SEED", "7"))])
def test_sigkill_at_random_moments_loses_nothing_and_sends_nothing_twice(tmp_path, api, seed):
    rng = random.Random(seed)
    db = tmp_path / "db" / "memory_data.db"
    db.parent.mkdir()
    env = learner_env(
        tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES, OMNIMEMORY_LEARNER_BATCH_SIZE=7
    )
    writer = subprocess.Popen([sys.executable, WRITER, str(db), str(seed), "80"], stdout=subprocess.PIPE, text=True)
    kills = 0
    while writer.poll() is None and kills < 12:
        learner = start_learner(env, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        learner.kill()
        learner.wait()
        kills += 1
    assert writer.wait(180) == 0
    learner = start_learner(env)
    truth = true_sessions(db)
    wait_until(
        lambda: len({k for k, _ in api.sessions()}) >= len(truth) and pending(tmp_path / "state") == 0, timeout=60
    )
    time.sleep(IDLE_MINUTES * 60 + 1)
    code, out = stop(learner)
    assert code == 0, out
    by_key = {}
    for key, body in api.sessions():
        by_key.setdefault(key, []).append(body)
    # A session sent more than once was in flight at a kill: same key, same body.
    for bodies in by_key.values():
        assert all(body == bodies[0] for body in bodies)
    unique = sorted(
        (b[0]["session_id"], tuple(c["command"] for c in b[0]["session_commands"]), b[0]["session_outcome"])
        for b in by_key.values()
    )
    print(f"kills={kills} sessions={len(truth)} posts={len(api.sessions())} keys={len(by_key)}")
    missing = [s for s in truth if s not in unique]
    extra = [s for s in unique if s not in truth]
    assert unique == truth, f"missing {missing}\nextra {extra}"


def test_database_created_after_start_and_then_replaced(tmp_path, api):
    db = tmp_path / "db" / "memory_data.db"
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env)
    time.sleep(1.0)
    create_db(db)
    now = time.time()
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
    insert_events(
        db, [(stamp(now), "file_open", "first"), (stamp(now), "code_edit", "first"), (stamp(now), "file_save", "first")]
    )
    assert api.wait_for(1, timeout=30)
    # The memory daemon starts over with a new file (new inode, rowids from 1).
    new = create_db(tmp_path / "db" / "fresh.db")
    insert_events(
        new,
        [
            (stamp(now + 10), "file_open", "second"),
            (stamp(now + 10), "git_commit", "second"),
            (stamp(now + 10), "git_push", "second"),
        ],
    )
    os.replace(new, db)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(new) + suffix):
            os.replace(str(new) + suffix, str(db) + suffix)
    assert api.wait_for(2, timeout=40)
    code, out = stop(learner)
    assert code == 0
    assert "waiting for the memory daemon to create it" in out
    assert "was replaced" in out
    assert [b["session_id"] for _, b in api.sessions()] == ["first", "second"]


def test_sighup_reloads_and_a_bad_file_keeps_the_old_configuration(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    config = tmp_path / "learner.toml"
    config.write_text("min_commands_for_learning = 3\n")
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env, "--config", str(config))
    time.sleep(1.0)
    config.write_text("min_commands_for_learning = 2\n")
    learner.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    insert_events(db, [(now, "file_open", "pair"), (now, "file_save", "pair")])
    assert api.wait_for(1, timeout=20)
    config.write_text("min_commands_for_learning = -4\n")
    learner.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    insert_events(db, [(now, "file_open", "pair2"), (now, "file_save", "pair2")])
    assert api.wait_for(2, timeout=20)
    code, out = stop(learner)
    assert code == 0
    assert "Configuration reloaded" in out
    assert "The new configuration is invalid and was not applied" in out and "-4" in out


def test_second_instance_on_the_same_state_refuses(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, api.url, db)
    first = start_learner(env)
    time.sleep(1.0)
    second = run_learner(env, "run", timeout=30)
    assert second.returncode == 75
    assert "not starting a second instance" in second.stdout + second.stderr
    backfill = run_learner(env, "backfill", timeout=30)
    assert backfill.returncode == 75 and "the service is running" in backfill.stderr
    assert stop(first)[0] == 0
