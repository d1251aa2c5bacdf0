"""Outcomes with evidence (issue 27), end to end: what the API is told, what the history and report keep, doctor.

Real SQLite files, the real learner process (`backfill`), the recording API on
127.0.0.1.  The outcome told is checked against tests/reference.py's plain
restatement of the rules, from the sequence the generator wrote (not from
anything the learner read back).
"""

from __future__ import annotations

import json
import random
import time

import pytest
from helpers import RecordingAPI, create_db, free_port, insert_events, learner_env, run_learner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_outcome, reference_verdict

from omnimemory_learner.core.evidence import reason_of
from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP

EVENT_OF = {command: event_type for event_type, command in DEFAULT_EVENT_MAP.items()}
COMMANDS = sorted(EVENT_OF)
# Ten days ago, whole seconds: within history_days (30), so retention prunes nothing the test reads back.
T0 = float(int(time.time()) - 10 * 86400)


def stamp(seconds: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def write_sessions(db, sequences):
    """One session id per sequence, a second between rows, sessions an hour apart (idle 5 min cuts them)."""
    rows = []
    for number, names in enumerate(sequences):
        start = T0 + number * 3600
        rows += [(stamp(start + i), EVENT_OF[name], f"s{number}") for i, name in enumerate(names)]
    insert_events(db, rows)


def history(env):
    result = run_learner(env, "history", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["session_id"]: entry for entry in json.loads(result.stdout)}


def distinct_runs(names):
    """Folding, restated: a run of one command counts once."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def told(api):
    return {body["session_id"]: body["session_outcome"] for _, body in api.sessions()}


sequences = st.lists(st.lists(st.sampled_from(COMMANDS), min_size=3, max_size=14), min_size=1, max_size=12)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    sequences=sequences,
    batch_size=st.sampled_from([1, 2, 7, 1000]),
    fold=st.booleans(),
    rule=st.sampled_from(["evidence", "last3"]),
    inconclusive=st.sampled_from(["success", "failure"]),
)
def test_the_outcome_told_depends_only_on_the_commands(
    tmp_path_factory, sequences, batch_size, fold, rule, inconclusive
):
    """Batch boundaries, folding, and a stop between commit and delivery (API down, then up) change nothing."""
    tmp_path = tmp_path_factory.mktemp("outcomes")
    db = create_db(tmp_path / "events.db")
    write_sessions(db, sequences)
    api = RecordingAPI(free_port())
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_BATCH_SIZE=batch_size,
        OMNIMEMORY_LEARNER_FOLD_REPEATS=str(fold).lower(),
        OMNIMEMORY_LEARNER_OUTCOME_RULE=rule,
        OMNIMEMORY_LEARNER_INCONCLUSIVE_OUTCOME=inconclusive,
    )
    # The API down: every session is committed to the outbox, none judged yet; then a new process delivers them.
    down = run_learner(env, "backfill", "--until-delivered-timeout", "1")
    assert down.returncode == 69, down.stderr
    api.start()
    try:
        up = run_learner(env, "backfill", "--until-delivered-timeout", "30")
        assert up.returncode == 0, up.stderr
        expected = {f"s{n}": reference_outcome(names, rule, inconclusive) for n, names in enumerate(sequences)}
        # min_commands_for_learning (3) counts a folded session's commands: a shorter one is kept, never sent.
        learnable = {f"s{n}" for n, names in enumerate(sequences) if len(distinct_runs(names) if fold else names) >= 3}
        assert told(api) == {session: outcome for session, outcome in expected.items() if session in learnable}
        assert len(api.sessions()) == len(learnable)
        kept = history(env)
        for number, names in enumerate(sequences):
            entry = kept[f"s{number}"]
            assert entry["commands"] == names  # before folding, whatever was sent
            assert entry["outcome"] == expected[f"s{number}"]
            name, rework = reference_verdict(names)
            assert entry["rework"] == rework
            if rule == "evidence":
                assert entry["rule"] == name and entry["reason"] == reason_of(name)
            else:
                assert entry["rule"] in ("last3", "last3-default") and entry["reason"]
    finally:
        api.stop()


def test_history_and_report_keep_the_rule_the_reason_and_the_rework(tmp_path, api):
    tdd = ["run_tests", "edit_code", "run_tests", "edit_code", "run_tests", "commit_changes"]  # rework 2, committed
    given_up = ["open_file", "run_tests", "edit_code", "save_file"]  # abandoned
    db = create_db(tmp_path / "events.db")
    write_sessions(db, [tdd, tdd, given_up])
    env = learner_env(tmp_path, api.url, db)
    assert run_learner(env, "backfill", "--until-delivered-timeout", "30").returncode == 0
    assert sorted(told(api).values()) == ["failure", "success", "success"]
    kept = history(env)
    assert {(entry["rule"], entry["rework"], entry["outcome"]) for entry in kept.values()} == {
        ("committed", 2, "success"),
        ("abandoned", 0, "failure"),
    }
    assert kept["s2"]["reason"] == reason_of("abandoned")
    text = run_learner(env, "history").stdout
    assert "abandoned" in text and "committed" in text and "BY RULE" in text
    report = json.loads(run_learner(env, "report", "--json").stdout)
    by_rule = {item["rule"]: item for item in report["outcome_rules"]}
    assert by_rule["committed"]["sessions"] == 2 and by_rule["committed"]["rework"] == 4
    assert by_rule["abandoned"]["successes"] == 0
    top = report["workflows"][0]
    assert top["count"] == 2 and top["rework_per_session"] == 2.0 and top["success_rate"] == 1.0
    human = run_learner(env, "report").stdout
    assert "Outcomes by the rule that judged them:" in human and "2.00 rework" in human


def test_the_outbox_shows_how_a_pending_session_would_be_judged(tmp_path):
    db = create_db(tmp_path / "events.db")
    write_sessions(db, [["run_tests", "edit_code", "save_file"]])
    env = learner_env(tmp_path, f"http://127.0.0.1:{free_port()}", db)
    assert run_learner(env, "backfill", "--until-delivered-timeout", "1").returncode == 69
    listed = json.loads(run_learner(env, "outbox", "--json").stdout)
    assert [entry["outcome"] for entry in listed] == ["failure"]
    listed = json.loads(run_learner({**env, "OMNIMEMORY_LEARNER_OUTCOME_RULE": "last3"}, "outbox", "--json").stdout)
    assert [entry["outcome"] for entry in listed] == ["success"]


def doctor_outcomes(env):
    result = run_learner(env, "doctor", "--json")
    return [check for check in json.loads(result.stdout) if check["name"] == "outcomes"]


def test_doctor_warns_when_nearly_every_session_sent_has_one_outcome(tmp_path, api):
    rng = random.Random(5)
    edits = [["open_file", *["edit_code"] * rng.randint(1, 4), "save_file"] for _ in range(60)]
    db = create_db(tmp_path / "events.db")
    write_sessions(db, edits)
    env = learner_env(tmp_path, api.url, db)
    assert run_learner(env, "backfill", "--until-delivered-timeout", "60", timeout=180).returncode == 0
    [check] = doctor_outcomes(env)
    assert check["level"] == "warning", check
    assert "60 of the newest 60 sessions sent were success" in check["message"]
    assert "inconclusive 60" in check["message"] and "event_map" in check["fix"]


def test_doctor_says_ok_when_the_outcomes_differ(tmp_path, api):
    mixed = [["edit_code", "run_tests", "commit_changes"]] * 40 + [["run_tests", "edit_code", "save_file"]] * 20
    db = create_db(tmp_path / "events.db")
    write_sessions(db, mixed)
    env = learner_env(tmp_path, api.url, db)
    assert run_learner(env, "backfill", "--until-delivered-timeout", "60", timeout=180).returncode == 0
    [check] = doctor_outcomes(env)
    assert check["level"] == "ok", check


@pytest.mark.parametrize(
    "key, value", [("outcome_rule", "smart"), ("inconclusive_outcome", "inconclusive"), ("outcome_rule", "")]
)
def test_an_unknown_rule_or_inconclusive_outcome_is_refused_naming_it(tmp_path, key, value):
    config = tmp_path / "learner.toml"
    config.write_text(f'{key} = "{value}"\n')
    env = learner_env(tmp_path, "http://127.0.0.1:1", tmp_path / "events.db")
    result = run_learner(env, "--config", str(config), "check-config")
    assert result.returncode == 78
    assert key in result.stderr and repr(value) in result.stderr
