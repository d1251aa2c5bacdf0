"""status, doctor, backfill, outbox, --version, --help: real state, real processes."""

import json
import random
import signal
import sqlite3
import time
from pathlib import Path

from helpers import (
    RecordingAPI,
    create_db,
    free_port,
    insert_events,
    learner_env,
    run_learner,
    start_learner,
    wait_until,
)

from omnimemory_learner import __version__


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def history(db, sessions=20, per=3, start=None):
    start = start or time.time() - 86400
    kinds = ["file_open", "code_edit", "file_save", "git_commit", "test_run"]
    insert_events(
        db, [(stamp(start + s * 1000 + i), kinds[i % len(kinds)], f"h{s}") for s in range(sessions) for i in range(per)]
    )


def wait_for(predicate, timeout=20.0):
    return wait_until(predicate, timeout, step=0.1)


def test_version_and_help():
    env = learner_env(Path("/tmp"), "http://127.0.0.1:1", "/nonexistent.db")
    result = run_learner(env, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"omnimemory-learner {__version__}"
    for command in ("status", "doctor", "backfill", "check-config", "outbox", "run"):
        result = run_learner(env, command, "--help")
        assert result.returncode == 0 and f"omnimemory-learner {command}" in result.stdout
        assert "--db" in result.stdout  # global options on every command


def test_status_never_ran_not_running_and_running(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.02")
    never = run_learner(env, "status")
    assert never.returncode == 4 and "never run" in never.stdout
    assert json.loads(run_learner(env, "status", "--json").stdout)["running"] is False

    history(db, sessions=5)
    learner = start_learner(env)
    assert api.wait_for(5)
    assert wait_for(lambda: json.loads(run_learner(env, "status", "--json").stdout)["stats"]["outbox_pending"] == 0)
    running = run_learner(env, "status")
    assert running.returncode == 0, running.stdout
    assert "active (running)" in running.stdout and "watch mode" in running.stdout
    report = json.loads(run_learner(env, "status", "--json").stdout)
    assert report["running"] is True and report["pid"] == learner.pid
    assert report["mode"] == "watch" and report["db_head"] == 15 and report["behind"] == 0
    assert list(report["stats"])[:4] == ["events_processed", "sessions_created", "patterns_learned", "errors"]
    assert report["stats"]["events_processed"] == 15 and report["stats"]["patterns_learned"] == 5

    learner.send_signal(signal.SIGTERM)
    assert learner.wait(10) == 0
    stopped = run_learner(env, "status")
    assert stopped.returncode == 3 and "inactive (not running)" in stopped.stdout
    assert "5 learned" in stopped.stdout and "0 pending" in stopped.stdout


def test_status_with_database_missing_and_api_down_and_answering_500(tmp_path):
    port = free_port()
    db = tmp_path / "db" / "memory_data.db"
    env = learner_env(tmp_path, f"http://127.0.0.1:{port}", db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.02")
    learner = start_learner(env)
    try:
        assert wait_for(lambda: run_learner(env, "status").returncode == 0)
        out = run_learner(env, "status").stdout
        assert "database not readable" in out and "does not exist" in out
        create_db(db)
        history(db, sessions=2)
        assert wait_for(lambda: json.loads(run_learner(env, "status", "--json").stdout)["stats"]["outbox_pending"] == 2)
        # The API is down: status says so once the snapshot catches up.
        assert wait_for(lambda: "down since" in run_learner(env, "status").stdout, timeout=15)
        report = json.loads(run_learner(env, "status", "--json").stdout)
        assert report["stats"]["last_error"]["message"].startswith("ConnectError")
        api = RecordingAPI(port)
        api.default = 500
        api.start()
        try:
            assert wait_for(
                lambda: (
                    "HTTP 500"
                    in (json.loads(run_learner(env, "status", "--json").stdout)["stats"]["last_error"] or {}).get(
                        "message", ""
                    )
                ),
                timeout=20,
            )
            assert json.loads(run_learner(env, "status", "--json").stdout)["stats"]["outbox_pending"] == 2
        finally:
            api.stop()
    finally:
        learner.send_signal(signal.SIGTERM)
        learner.wait(10)


def doctor(env):
    result = run_learner(env, "doctor", "--json")
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)}


def test_doctor_on_each_broken_set_up(tmp_path, api):
    db = tmp_path / "db" / "memory_data.db"
    env = learner_env(tmp_path, api.url, db)
    # Database missing.
    code, checks = doctor(env)
    assert code == 1 and checks["database"]["level"] == "problem" and "does not exist" in checks["database"]["message"]
    assert "memory daemon" in checks["database"]["fix"]
    # Database without an events table.
    db.parent.mkdir()
    sqlite3.connect(str(db)).close()
    code, checks = doctor(env)
    assert code == 1 and "no events table" in checks["database"]["message"]
    # Wrong schema.
    conn = sqlite3.connect(str(db))
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT)")
    conn.commit()
    conn.close()
    code, checks = doctor(env)
    assert code == 1 and "lacks columns timestamp, event_type, session_id" in checks["database"]["message"]
    db.unlink()
    # A healthy database; the API answers.
    create_db(db)
    history(db, sessions=3)
    code, checks = doctor(env)
    assert checks["database"]["level"] == "ok" and "9 events" in checks["database"]["message"]
    assert "journal mode wal" in checks["database"]["message"]
    assert checks["api"]["level"] == "ok" and checks["api contract"]["level"] == "ok"
    assert api.sessions() == []  # the contract check taught nothing
    assert checks["position"]["level"] == "warning"  # never ran
    # API down.
    down = learner_env(tmp_path, f"http://127.0.0.1:{free_port()}", db)
    code, checks = doctor(down)
    assert code == 1 and checks["api"]["level"] == "problem" and "curl" in checks["api"]["fix"]
    # Something else answers on the API's port.
    api.default = 404
    wrong = RecordingAPI().start()
    try:
        wrong.default = 500
        code, checks = doctor(learner_env(tmp_path, wrong.url, db))
        assert code == 1 and checks["api contract"]["level"] == "problem"
    finally:
        wrong.stop()
    # Human output: one line per check with the fix.
    human = run_learner(down, "doctor")
    assert (
        human.returncode == 1
        and "problem  api:" in human.stdout
        and "fix: start the procedural service" in human.stdout
    )
    # Invalid configuration.
    bad = run_learner(dict(env, OMNIMEMORY_LEARNER_BATCH_SIZE="lots"), "doctor")
    assert bad.returncode == 1 and "problem  configuration" in bad.stdout


def backfill_rejected(tmp_path, api, sessions):
    """A backfill of `sessions` sessions that the API rejects (422): all parked as rejected."""
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, sessions=sessions)
    env = learner_env(tmp_path, api.url, db)
    api.default = 422
    assert run_learner(env, "backfill", "--until-delivered-timeout", "20").returncode == 0
    return env


def test_doctor_flags_rejected_sessions_and_loose_permissions(tmp_path, api):
    env = backfill_rejected(tmp_path, api, 2)
    (tmp_path / "state").chmod(0o755)
    code, checks = doctor(env)
    assert code == 1
    assert checks["outbox"]["level"] == "problem" and "2 session(s) rejected" in checks["outbox"]["message"]
    assert checks["state directory"]["level"] == "warning" and "chmod 700" in checks["state directory"]["fix"]


def test_outbox_list_retry_and_drop(tmp_path, api):
    env = backfill_rejected(tmp_path, api, 3)
    listing = json.loads(run_learner(env, "outbox", "--json").stdout)
    assert [e["status"] for e in listing] == ["rejected"] * 3 and "422" in listing[0]["last_error"]
    human = run_learner(env, "outbox").stdout
    assert "rejected" in human and "h0" in human
    refused = run_learner(env, "outbox", "drop", str(listing[0]["id"]))
    assert refused.returncode == 1 and "--yes" in refused.stderr
    dropped = run_learner(env, "outbox", "drop", str(listing[0]["id"]), "--yes")
    assert dropped.returncode == 0
    assert run_learner(env, "outbox", "drop", "99999", "--yes").returncode == 1
    api.default = 200
    retried = run_learner(env, "outbox", "retry")
    assert retried.returncode == 0 and "2 rejected session(s) moved back to pending" in retried.stdout
    assert run_learner(env, "backfill", "--until-delivered-timeout", "20").returncode == 0
    assert sorted(b["session_id"] for _, b in api.sessions()) == ["h1", "h2"]
    assert "outbox is empty" in run_learner(env, "outbox").stdout


def test_backfill_100k_events_exactly_once_then_the_service_sends_nothing(tmp_path, api):
    rng = random.Random(3)
    db = create_db(tmp_path / "db" / "memory_data.db")
    start = time.time() - 30 * 86400
    kinds = ["file_open", "code_edit", "file_save", "git_commit", "test_run", "mouse_move", "file_delete"]
    rows, t, expected = [], start, 0
    for s in range(10_000):
        n = rng.randint(1, 19)
        sid = f"b{s % 400}"
        mapped = 0
        for i in range(n):
            kind = rng.choice(kinds)
            mapped += kind != "mouse_move"
            rows.append((stamp(t + i), kind, sid))
        t += 400  # every session of an id is far past the idle threshold from the next
        expected += mapped >= 3
    while len(rows) < 100_000:
        rows.append(("not a time", "file_open", "junk"))
    insert_events(db, rows)
    env = learner_env(tmp_path, api.url, db)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "120", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Backfill done" in result.stdout
    keys = [k for k, _ in api.sessions()]
    assert len(keys) == expected == len(set(keys))
    report = json.loads(run_learner(env, "status", "--json").stdout)
    assert report["stats"]["read_position"] == len(rows) and report["stats"]["patterns_learned"] == expected
    # The service on the same state sends nothing again.
    learner = start_learner(env)
    time.sleep(3)
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(10) == 0
    assert len(api.sessions()) == expected
    # Nor does a second backfill.
    assert run_learner(env, "backfill").returncode == 0 and len(api.sessions()) == expected


def test_backfill_with_the_api_down_times_out_and_keeps_everything(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, sessions=4)
    port = free_port()
    env = learner_env(tmp_path, f"http://127.0.0.1:{port}", db)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "2")
    assert result.returncode == 69
    assert "4 session(s) stay pending" in result.stderr
    assert json.loads(run_learner(env, "status", "--json").stdout)["stats"]["outbox_pending"] == 4
    api = RecordingAPI(port).start()
    try:
        assert run_learner(env, "backfill", "--until-delivered-timeout", "20").returncode == 0
        assert sorted(b["session_id"] for _, b in api.sessions()) == ["h0", "h1", "h2", "h3"]
    finally:
        api.stop()
