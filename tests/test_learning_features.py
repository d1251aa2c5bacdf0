"""Real-time learning (close_on), repeat folding, quality, and the history the service keeps,
end to end: a real SQLite file, the real learner process, the recording API on 127.0.0.1."""

from __future__ import annotations

import json
import random
import sqlite3
import time

from helpers import (
    create_db,
    insert_events,
    learner_env,
    output_of,
    run_learner,
    start_learner,
    stop,
    wait_until,
)

IDLE_MINUTES = 0.5  # 30 s: anything that arrives well before it was not closed by idleness


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1e6) % 1_000_000:06d}"


def history_json(env):
    result = run_learner(env, "history", "--json")
    assert result.returncode in (0, 4), result.stderr
    return json.loads(result.stdout) if result.returncode == 0 else []


def test_a_session_ending_in_push_changes_is_learned_at_once_and_the_id_goes_on(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_CLOSE_ON="push_changes",
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=60,
    )
    learner = start_learner(env, "run")
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20), output_of(learner)
        now = time.time()
        insert_events(
            db,
            [
                (stamp(now), "file_open", "dev"),
                (stamp(now + 0.1), "code_edit", "dev"),
                (stamp(now + 0.2), "git_commit", "dev"),
            ],
        )
        written = time.monotonic()
        insert_events(db, [(stamp(now + 0.3), "git_push", "dev")])
        assert api.wait_for(1, timeout=10), output_of(learner)
        arrived = api.tried[0][2] - written
        assert arrived < 0.2 * IDLE_MINUTES * 60, arrived  # long before the idle threshold
        body = api.sessions()[0][1]
        assert [c["command"] for c in body["session_commands"]] == [
            "open_file",
            "edit_code",
            "commit_changes",
            "push_changes",
        ]
        # The id's next events form a new session (closed later by idleness, or by the next push).
        insert_events(
            db,
            [
                (stamp(now + 1), "file_open", "dev"),
                (stamp(now + 1.1), "code_edit", "dev"),
                (stamp(now + 1.2), "git_push", "dev"),
            ],
        )
        assert api.wait_for(2, timeout=10)
        second = api.sessions()[1][1]
        assert [c["command"] for c in second["session_commands"]] == ["open_file", "edit_code", "push_changes"]
        code, _ = stop(learner)
        assert code == 0
    finally:
        if learner.poll() is None:
            learner.kill()
    assert len(api.sessions()) == 2 and len({key for key, _ in api.sessions()}) == 2
    settled = history_json(env)
    assert sorted(entry["closed_reason"] for entry in settled) == ["close_on", "close_on"]
    assert {entry["settled"] for entry in settled} == {"learned"}


def test_a_crash_right_after_the_closing_event_loses_nothing_and_sends_nothing_twice(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_CLOSE_ON="push_changes",
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
    )
    now = time.time()
    for round_number in range(3):
        learner = start_learner(env, "run")
        assert wait_until(lambda: "Watching" in output_of(learner), 20), output_of(learner)
        base = now + round_number * 10
        insert_events(
            db,
            [
                (stamp(base), "file_open", "dev"),
                (stamp(base + 0.1), "code_edit", "dev"),
                (stamp(base + 0.2), "git_push", "dev"),
                (stamp(base + 0.3), "file_open", "dev"),
            ],
        )
        assert api.wait_for(round_number + 1, timeout=10)
        # SIGKILL right after the learner recorded the delivery.  (Between the API's answer and
        # that record a kill makes the session go again with the same Idempotency-Key, for an
        # API that honours it: no learner can know whether an unanswered POST arrived.)
        assert wait_until(lambda: "Successfully learned pattern" in output_of(learner), 10), output_of(learner)
        stop(learner, sig=9)
    learner = start_learner(env, "run")
    try:
        time.sleep(2)
        code, _ = stop(learner)
        assert code == 0
    finally:
        if learner.poll() is None:
            learner.kill()
    keys = [key for key, _ in api.sessions()]
    # Three sessions closed by the push; the trailing file_open of each round joined the next round's
    # session (under the idle threshold): nothing lost, no key twice.
    assert len(keys) == len(set(keys)) == 3
    commands = [[c["command"] for c in body["session_commands"]] for _, body in api.sessions()]
    assert commands[0] == ["open_file", "edit_code", "push_changes"]
    assert commands[1] == commands[2] == ["open_file", "open_file", "edit_code", "push_changes"]


def test_folding_quality_and_min_quality_in_a_backfill(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    base = time.time() - 3600
    rows = (
        [(stamp(base), "file_open", "long")]
        + [(stamp(base + 1 + i), "code_edit", "long") for i in range(37)]
        + [
            (stamp(base + 40), "file_save", "long"),
            (stamp(base + 41), "test_run", "long"),
            (stamp(base + 42), "git_commit", "long"),
        ]
    )
    # Twelve edits: the same workflow once folded.
    rows += (
        [(stamp(base + 100), "file_open", "short")]
        + [(stamp(base + 101 + i), "code_edit", "short") for i in range(12)]
        + [
            (stamp(base + 120), "file_save", "short"),
            (stamp(base + 121), "test_run", "short"),
            (stamp(base + 122), "git_commit", "short"),
        ]
    )
    # One run of edits only: four commands, one folded; min_commands 3 counts it after folding.
    rows += [(stamp(base + 200 + i), "code_edit", "edits-only") for i in range(4)]
    # Poor quality: over two seconds, no outcome indicator, mostly rows of types the map does not know.
    rows += [(stamp(base + 300), "file_open", "noisy"), (stamp(base + 300.5), "code_edit", "noisy")]
    rows += [(stamp(base + 301 + i * 0.01), "window_focus", "noisy") for i in range(40)]
    rows += [(stamp(base + 302), "test_run", "noisy")]
    insert_events(db, rows)
    env = learner_env(
        tmp_path, api.url, db, OMNIMEMORY_LEARNER_FOLD_REPEATS="true", OMNIMEMORY_LEARNER_MIN_QUALITY="0.5"
    )
    result = run_learner(env, "backfill", "--until-delivered-timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    bodies = {body["session_id"]: body for _, body in api.sessions()}
    assert set(bodies) == {"long", "short"}
    long_commands = bodies["long"]["session_commands"]
    assert [c["command"] for c in long_commands] == [
        "open_file",
        "edit_code",
        "save_file",
        "run_tests",
        "commit_changes",
    ]
    assert long_commands[1]["context"] == {
        "event_type": "code_edit",
        "repeat": 37,
        "last_timestamp": long_commands[1]["context"]["last_timestamp"],
    }
    assert long_commands[1]["context"]["last_timestamp"] - long_commands[1]["timestamp"] == 36.0
    assert "repeat" not in long_commands[0]["context"]
    assert [c["command"] for c in bodies["short"]["session_commands"]] == [c["command"] for c in long_commands]
    assert bodies["long"]["session_outcome"] == "success"
    assert 0.5 <= bodies["long"]["quality"] <= 1.0
    settled = {entry["session_id"]: entry for entry in history_json(env)}
    assert settled["edits-only"]["settled"] == "too_short"
    assert settled["noisy"]["settled"] == "low_quality" and settled["noisy"]["quality"] < 0.5
    assert settled["long"]["settled"] == "learned" and settled["long"]["pattern_id"]
    assert len(settled["long"]["commands"]) == 41  # the history keeps the commands before folding
    status = json.loads(run_learner(env, "status", "--json").stdout)
    assert status["stats"]["sessions_low_quality"] == 1


def test_history_after_a_backfill_and_unusual_sessions_flagged(tmp_path, api):
    rng = random.Random(5)
    usual = [
        ["file_open", "code_edit", "file_save", "test_run", "git_commit"],
        ["git_pull", "file_open", "code_edit", "file_save", "git_push"],
        ["file_open", "code_edit", "test_run", "code_edit", "file_save"],
    ]
    rare = ["git_commit", "file_delete", "build_start", "git_pull", "file_delete"]
    db = create_db(tmp_path / "events.db")
    base = time.time() - 86400
    rows, plan = [], []
    for number in range(260):
        kind = "rare" if number in (230, 245) else "usual"
        types = rare if kind == "rare" else usual[rng.randrange(3)]
        plan.append((f"s{number}", kind))
        start = base + number * 600
        rows += [(stamp(start + i), event_type, f"s{number}") for i, event_type in enumerate(types)]
    insert_events(db, rows)
    env = learner_env(tmp_path, api.url, db)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "60", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    settled = history_json(env)
    assert len(settled) == 260 == len(api.sessions())
    by_id = {entry["session_id"]: entry for entry in settled}
    for _, body in api.sessions():
        entry = by_id[body["session_id"]]
        assert entry["settled"] == "learned" and entry["pattern_id"]
        assert entry["outcome"] == body["session_outcome"]
        assert entry["commands"] == [c["command"] for c in body["session_commands"]]
        assert entry["first_time"] == min(c["timestamp"] for c in body["session_commands"])
        assert entry["quality"] == body["quality"]
    flagged = sorted(entry["session_id"] for entry in settled if entry["unusual"])
    assert flagged == ["s230", "s245"], flagged
    assert by_id["s230"]["rarest"] and " -> " in by_id["s230"]["rarest"]
    log = (tmp_path / "learner.log").read_text()
    assert log.count("NOTICE - Unusual session s230") == 1
    report = json.loads(run_learner(env, "report", "--json").stdout)
    assert sorted(item["session_id"] for item in report["unusual"]) == ["s230", "s245"]
    # The false-positive rate on the ordinary sessions after the model was ready: none flagged.
    assert not any(by_id[sid]["unusual"] for sid, kind in plan[200:] if kind == "usual")


def test_a_corrupt_history_never_stops_delivery(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    base = time.time() - 600
    insert_events(db, [(stamp(base + i), t, "a") for i, t in enumerate(["file_open", "code_edit", "file_save"])])
    env = learner_env(tmp_path, api.url, db)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "history.db").write_bytes(b"garbage, not SQLite" * 200)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(api.sessions()) == 1
    assert [entry["session_id"] for entry in history_json(env)] == ["a"]
    assert any(path.name.startswith("history.db.corrupt-") for path in (tmp_path / "state").iterdir())


def test_history_retention_prunes_old_sessions(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    old = time.time() - 10 * 86400
    rows = []
    for number in range(30):
        rows += [
            (stamp(old + number * 600 + i), t, f"old{number}")
            for i, t in enumerate(["file_open", "code_edit", "file_save"])
        ]
    insert_events(db, rows)
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_HISTORY_DAYS="2")
    assert run_learner(env, "backfill", "--until-delivered-timeout", "30").returncode == 0
    assert len(api.sessions()) == 30
    # The running service prunes in the background while idle.
    learner = start_learner(env, "run")
    try:
        assert wait_until(lambda: history_json(env) == [], 20), len(history_json(env))
    finally:
        stop(learner)
    connection = sqlite3.connect(str(tmp_path / "state" / "history.db"))
    assert connection.execute("SELECT count(*) FROM history").fetchone()[0] == 0
    connection.close()


def test_sessions_settled_without_sending_reach_the_history_through_the_delivery_thread(tmp_path, api):
    # The reading thread hands too-short sessions to the delivery thread, which records them; a
    # delivery thread that is not running (or whose queue is full) leaves them to the reading thread.
    from omnimemory_learner.config import load_config
    from omnimemory_learner.delivery import Deliverer
    from omnimemory_learner.pipeline import Pipeline
    from omnimemory_learner.storage.history import HistoryStore

    db = create_db(tmp_path / "events.db")
    base = time.time() - 7200
    insert_events(
        db,
        [
            (stamp(base), "file_open", "short"),
            (stamp(base + 1), "file_open", "long"),
            (stamp(base + 2), "code_edit", "long"),
            (stamp(base + 3), "file_save", "long"),
            (stamp(base + 4000), "file_open", "late"),
        ],
    )
    config = load_config(env=learner_env(tmp_path, api.url, db))
    deliverer = Deliverer.from_config(config)
    handed = []

    def hand_over(sessions):
        # Deliverer.hand_over, told apart: queued for the thread, or recorded at once here.
        queued = deliverer._offer(sessions)
        if not queued:
            deliverer.handover.record_now(sessions)
        handed.append((len(sessions), queued))

    pipeline = Pipeline(config, on_unsent=hand_over)
    pipeline.drain()
    pipeline.close_all()
    pipeline.commit()  # the delivery thread is not running: hand_over records them at once
    assert handed == [(2, False)]
    history = HistoryStore(config.state_dir)
    assert sorted(entry.session_id for entry in history.sessions()) == ["late", "short"]
    insert_events(db, [(stamp(base + 9000), "file_open", "later")])
    deliverer.start()
    try:
        pipeline.drain()
        pipeline.close_all()
        pipeline.commit()
        assert handed == [(2, False), (1, True)]
        assert wait_until(lambda: len(history.sessions()) == 4, 10)  # "long" learned, "later" too short
        assert {entry.session_id: entry.settled for entry in history.sessions()} == {
            "short": "too_short",
            "late": "too_short",
            "later": "too_short",
            "long": "learned",
        }
    finally:
        deliverer.stop(2)
        pipeline.close()
        history.close()


def test_a_too_short_session_handed_over_reaches_the_history_though_a_post_outlives_the_stop(tmp_path, api):
    # SIGTERM while a POST hangs past the stop's grace: the delivery thread never gets to record
    # what the reading thread handed it; the service records it itself before it exits.
    api.default = ("silent", 30)  # takes the POST and never answers
    db = create_db(tmp_path / "events.db")
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=0.02)
    base = time.time()
    insert_events(
        db,
        [
            (stamp(base), "file_open", "long"),
            (stamp(base + 0.1), "code_edit", "long"),
            (stamp(base + 0.2), "file_save", "long"),
        ],
    )
    learner = start_learner(env, "run")
    try:
        assert wait_until(lambda: len(api.tried) >= 1, 20), output_of(learner)
        insert_events(db, [(stamp(time.time()), "file_open", "short")])  # one event: too short
        state = sqlite3.connect(str(tmp_path / "state" / "state.db"))
        assert wait_until(
            lambda: state.execute("SELECT value FROM counters WHERE name = 'sessions_too_short'").fetchone()[0] == 1, 20
        )
        state.close()
        code, output = stop(learner, timeout=30)
        assert code == 0 and "still in flight" in output
    finally:
        if learner.poll() is None:
            learner.kill()
    history = sqlite3.connect(str(tmp_path / "state" / "history.db"))
    assert history.execute("SELECT session_id, settled FROM history").fetchall() == [("short", "too_short")]
    history.close()


def test_during_an_api_outage_the_reading_thread_records_what_it_would_hand_over(tmp_path):
    # The delivery thread waits out the outage without looking at its queue: handed over, sessions
    # would sit in memory for minutes, so hand_over records them at once in the caller's thread.
    from helpers import free_port

    from omnimemory_learner.config import load_config
    from omnimemory_learner.core.sessions import ClosedSession
    from omnimemory_learner.delivery import Deliverer
    from omnimemory_learner.storage.state import Position, StateStore

    db = create_db(tmp_path / "events.db")
    config = load_config(env=learner_env(tmp_path, f"http://127.0.0.1:{free_port()}", db))  # nothing listens
    store = StateStore(config.state_dir)
    store.commit(
        Position(0, 3),
        [
            ClosedSession.from_commands(
                "waiting",
                [
                    ("open_file", 1e9, "file_open"),
                    ("edit_code", 1e9 + 1, "code_edit"),
                    ("save_file", 1e9 + 2, "file_save"),
                ],
                1,
                3,
            )
        ],
        {},
    )
    store.close()
    deliverer = Deliverer.from_config(config)
    deliverer.start()
    try:
        assert wait_until(lambda: deliverer.health.retry_at is not None, 20)
        short = ClosedSession.from_commands("short", [("open_file", 1e9 + 10, "file_open")], 4, 4, learnable=False)
        deliverer.hand_over([short])
        assert deliverer.handover.take_back() == []  # not queued: recorded at once
    finally:
        deliverer.stop(2)
