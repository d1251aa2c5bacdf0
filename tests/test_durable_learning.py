"""What was learned survives the procedural API's restarts: the service against the original's stand-in.

The API (tests/original_api.py, its own process on 127.0.0.1) counts per
pattern id exactly as the original does and forgets everything when it
restarts; the learner runs as its own process too.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
import urllib.request

import pytest
from helpers import (
    IDLE_MINUTES,
    create_db,
    insert_events,
    learner_env,
    output_of,
    pending,
    run_learner,
    start_learner,
    stop,
)
from original_api import OriginalProcess

from omnimemory_learner.core.reconcile import parse_patterns

TYPES = ["file_open", "code_edit", "file_save", "test_run", "git_commit", "file_delete", "build_start"]


def counts(url):
    with urllib.request.urlopen(url + "/patterns", timeout=10) as answer:
        read = parse_patterns(json.loads(answer.read()))
    assert read.usable and not read.problems
    return read.counts


def healthy(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def sessions(count, seed, start=None, prefix="s"):
    """`count` sessions of 3 to 6 events from a few types (so patterns repeat), an hour apart in event time."""
    rng = random.Random(seed)
    start = start if start is not None else time.time() - count * 3600.0 - 3600.0
    events = []
    for n in range(count):
        length = rng.randint(3, 6)
        for k in range(length):
            events.append((start + n * 3600.0 + k, rng.choice(TYPES[: 3 + n % 4]), f"{prefix}{n}"))
    return events


def history_rows(state_dir, sql):
    db = sqlite3.connect(f"file:{state_dir / 'history.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def learned_in_all(state_dir):
    try:
        return history_rows(state_dir, "SELECT count(*) FROM history WHERE settled = 'learned'")[0][0]
    except sqlite3.OperationalError:  # made, and its table not yet: the service is starting
        return 0


def all_learned(state, api, at_least, timeout=120):
    """Every session read has settled and the API holds exactly what the history says it learned."""

    def done():
        if not (state / "history.db").exists() or pending(state) or learned_in_all(state) < at_least:
            return False
        return sum(s + f for s, f in counts(api.url).values()) == learned_in_all(state)

    # Twice, a second apart: the last session closes on its idle time, after the others.
    return wait_for(done, timeout) and (time.sleep(2.0) or wait_for(done, 30))


def wait_for(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def api(tmp_path):
    served = OriginalProcess(tmp_path)
    yield served
    served.stop()


def learner(tmp_path, api, db, **extra):
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_WATCH="false",
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="0.2",
        **extra,
    )
    return env, start_learner(env, "run")


def test_a_restarted_api_is_taught_again_within_seconds_and_one_that_did_not_restart_is_not(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(200, seed=1))
    env, process = learner(tmp_path, api, db)
    state = tmp_path / "state"
    try:
        assert all_learned(state, api, 150)
        before = counts(api.url)
        assert sum(s + f for s, f in before.values()) == learned_in_all(state) >= 150
        assert {outcome for s, f in before.values() for outcome in ("s" * bool(s) + "f" * bool(f))} >= {"s", "f"}

        api.restart()
        assert counts(api.url) == {}
        answering = time.monotonic()
        assert healthy(api.url)
        assert wait_for(lambda: counts(api.url) == before, 10.0), "not repaired within 10 s of the API answering"
        repaired_in = time.monotonic() - answering

        sql = "SELECT count(*), sum(retaught) FROM history WHERE retaught > 0"
        # Each once (the last one's record follows its POST's answer).
        assert wait_for(lambda: history_rows(state, sql)[0] == (learned_in_all(state),) * 2, 5)
        status = json.loads(run_learner(env, "status", "--json").stdout)
        last = status["reconcile"]
        assert last["sessions_lost"] == learned_in_all(state) and last["taught"] == learned_in_all(state)
        assert last["forgotten_not_in_history"] == 0
        human = run_learner(env, "status").stdout
        assert f"the API had forgotten {learned_in_all(state)} sessions" in human
        assert relearning(env) == [("ok", True)]
        time.sleep(2.0)
        assert counts(api.url) == before  # and nothing more after it
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "has forgotten" in output and "taught again" in output
    print(f"repaired in {repaired_in:.2f} s after the API answered")
    print(output[-3000:])


def test_periodic_reconciles_of_an_api_that_kept_everything_teach_nothing(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(40, seed=2))
    env, process = learner(tmp_path, api, db, OMNIMEMORY_LEARNER_RECONCILE_INTERVAL_MINUTES="0.01")
    state = tmp_path / "state"
    try:
        assert all_learned(state, api, 30)
        before = counts(api.url)
        time.sleep(4.0)  # six periodic reconciles or so
        status = json.loads(run_learner(env, "status", "--json").stdout)
        assert status["reconcile"]["why"] == "periodic" and status["reconcile"]["sessions_lost"] == 0
        assert counts(api.url) == before
        assert history_rows(state, "SELECT count(*) FROM history WHERE retaught > 0")[0][0] == 0
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "has forgotten" not in output


def test_reconcile_off_leaves_a_restarted_api_as_it_is(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(20, seed=3))
    _, process = learner(tmp_path, api, db, OMNIMEMORY_LEARNER_RECONCILE="false")
    state = tmp_path / "state"
    try:
        assert all_learned(state, api, 15)
        api.restart()
        time.sleep(4.0)
        assert counts(api.url) == {}
    finally:
        code, output = stop(process)
    assert code == 0, output


def test_the_learner_killed_while_teaching_again_adds_at_most_one_a_kill(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(200, seed=4))
    env, process = learner(tmp_path, api, db)
    state = tmp_path / "state"
    assert all_learned(state, api, 150)
    code, output = stop(process)
    assert code == 0, output
    before = counts(api.url)
    api.restart()
    rng = random.Random(4)
    kills = 20
    for _ in range(kills):
        process = start_learner(env, "run")
        time.sleep(rng.uniform(0.3, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    process = start_learner(env, "run")
    try:
        assert wait_for(lambda: all(counts(api.url).get(p, (0, 0)) >= c for p, c in before.items()), 60), output_of(
            process
        )
        time.sleep(2.0)
        after = counts(api.url)
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert set(after) == set(before)
    extra = sum(a - b for p in before for a, b in zip(after[p], before[p]))
    assert all(a >= b for p in before for a, b in zip(after[p], before[p]))
    assert extra <= kills, (extra, kills)
    print(f"{extra} counted twice over {kills} kills")


def relearning(env):
    """doctor's relearning checks: (level, whether it says something was taught again)."""
    checks = json.loads(run_learner(env, "doctor", "--json").stdout)
    return [(c["level"], "taught again" in c["message"]) for c in checks if c["name"] == "relearning"]


def post(url, names, outcome):
    body = json.dumps({"session_commands": [{"command": n} for n in names], "session_outcome": outcome}).encode()
    request = urllib.request.Request(
        url + "/learn", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["pattern_id"]


def ours(state):
    """(pattern_id, outcome) -> how many sessions the history says the API learned."""
    taught = {}
    for pattern_id, outcome in history_rows(state, "SELECT pattern_id, outcome FROM history WHERE settled = 'learned'"):
        taught[(pattern_id, outcome)] = taught.get((pattern_id, outcome), 0) + 1
    return taught


def column(outcome):
    return 0 if outcome == "success" else 1


def test_reconcile_command_dry_run_then_teach_then_nothing_left(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(60, seed=5))
    env, process = learner(tmp_path, api, db)
    state = tmp_path / "state"
    assert all_learned(state, api, 50)
    assert stop(process)[0] == 0
    before = counts(api.url)
    api.restart()
    state_before = (state / "state.db").read_bytes(), (state / "history.db").read_bytes()

    dry = run_learner(env, "reconcile", "--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr
    report = json.loads(dry.stdout)
    assert report["sessions_lost"] == learned_in_all(state) and report["taught"] == 0 and report["taught_by"] is None
    missing = [deficit["forgotten"] for deficit in report["deficits"]]
    assert missing == sorted(missing, reverse=True) and sum(missing) == report["sessions_lost"]
    assert {(d["pattern_id"], d["outcome"]): d["forgotten"] for d in report["deficits"]} == ours(state)
    assert counts(api.url) == {}  # nothing taught
    assert ((state / "state.db").read_bytes(), (state / "history.db").read_bytes()) == state_before

    human = run_learner(env, "reconcile", "--dry-run")
    assert human.returncode == 1 and "PATTERN" in human.stdout and "Forgotten:" in human.stdout

    taught = run_learner(env, "reconcile")
    assert taught.returncode == 0, taught.stderr
    assert "Taught again:" in taught.stdout and "by this command" in taught.stdout
    assert counts(api.url) == before

    again = run_learner(env, "reconcile", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["sessions_lost"] == 0
    assert counts(api.url) == before


def test_reconcile_command_asks_the_running_service_even_with_reconcile_off(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(40, seed=6))
    env, process = learner(tmp_path, api, db, OMNIMEMORY_LEARNER_RECONCILE="false")
    state = tmp_path / "state"
    try:
        assert all_learned(state, api, 30)
        before = counts(api.url)
        api.restart()
        time.sleep(2.0)
        assert counts(api.url) == {}  # off: the service does not reconcile by itself
        result = run_learner(env, "reconcile", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["taught_by"].startswith("the service (pid ") and report["taught"] == learned_in_all(state)
        assert counts(api.url) == before
    finally:
        code, output = stop(process)
    assert code == 0, output


def test_another_clients_sessions_are_not_taken_for_ours_and_nothing_of_ours_is_taught_twice(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(80, seed=7))
    env, process = learner(tmp_path, api, db)
    state = tmp_path / "state"
    assert all_learned(state, api, 60)
    assert stop(process)[0] == 0
    taught = ours(state)
    api.restart()
    rng = random.Random(7)
    # The other client teaches some of our patterns (as many as ours or fewer or more) and its own.
    others = {}
    shared = rng.sample(sorted(taught), len(taught) // 2)
    names_of = dict(history_rows(state, "SELECT pattern_id, commands FROM history WHERE settled = 'learned'"))
    for pattern_id, outcome in shared:
        for _ in range(rng.randint(0, taught[(pattern_id, outcome)] + 2)):
            assert post(api.url, json.loads(names_of[pattern_id]), outcome) == pattern_id
            others[(pattern_id, outcome)] = others.get((pattern_id, outcome), 0) + 1
    foreign = post(api.url, ["open_editor", "close_editor", "pull_changes", "build_project"], "failure")
    process = start_learner(env, "run")
    try:
        expected = {}
        for pattern_id, outcome in {**others, **taught}:
            held = max(taught.get((pattern_id, outcome), 0), others.get((pattern_id, outcome), 0))
            pair = list(expected.get(pattern_id, (0, 0)))
            pair[column(outcome)] = held
            expected[pattern_id] = tuple(pair)
        expected[foreign] = (0, 1)
        assert wait_for(lambda: counts(api.url) == expected, 15), (counts(api.url), expected)
        # Afterwards the other client adds; the learner's periodic and later reconciles add nothing.
        post(api.url, json.loads(names_of[shared[0][0]]), shared[0][1])
        pattern_id, outcome = shared[0]
        pair = list(expected[pattern_id])
        pair[column(outcome)] += 1
        expected[pattern_id] = tuple(pair)
        assert run_learner(env, "reconcile").returncode == 0
        time.sleep(1.0)
        assert counts(api.url) == expected
    finally:
        code, output = stop(process)
    assert code == 0, output


def test_sessions_older_than_history_days_are_reported_as_not_repairable(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    now = time.time()
    # 100 sessions an hour apart, the newest ending about 1.5 h ago: history_days 2 keeps the newest 46 or 47.
    start = now - 100 * 3600.0 - 1800.0
    events = sessions(100, seed=8, start=start)
    insert_events(db, events)
    env, process = learner(tmp_path, api, db, OMNIMEMORY_LEARNER_HISTORY_DAYS="2")
    state = tmp_path / "state"
    horizon = time.time() - 2 * 86400.0
    last_of = {}
    for timestamp, _, session in events:
        last_of[session] = max(last_of.get(session, 0.0), timestamp)
    old = sum(1 for last in last_of.values() if last < horizon)
    try:
        assert wait_for(
            lambda: (state / "history.db").exists() and pending(state) == 0 and learned_in_all(state) > 0, 60
        )
        assert wait_for(lambda: sum(s + f for s, f in counts(api.url).values()) == 100, 30)
        api.restart()
        assert wait_for(lambda: sum(s + f for s, f in counts(api.url).values()) == 100 - old, 15)
        time.sleep(1.0)
        report = json.loads(run_learner(env, "status", "--json").stdout)["reconcile"]
        assert report["forgotten_not_in_history"] == old and report["sessions_lost"] == 100 - old
        assert report["taught"] == 100 - old
        assert relearning(env) == [("warning", False)]  # the forgotten beyond the history
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "no longer holds" in output
