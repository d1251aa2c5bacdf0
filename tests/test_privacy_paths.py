"""Issue 26: what the exclusion rules exclude reaches no request body, history, report or log, on every path.

Real parts: the learner in its own processes (`backfill`, `reconcile`, `history`,
`report`, the service), a real SQLite writer, and the original API's stand-in
(tests/original_api.py) on 127.0.0.1, which forgets on restart; every body it
is sent is recorded, re-taught ones included.
"""

from __future__ import annotations

import fnmatch
import json
import random
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

from helpers import create_db, insert_events, learner_env, run_learner, start_learner, stop, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from original_api import OriginalAPI

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.core.sessions import ClosedSession, SessionTracker
from omnimemory_learner.events import validate_rows
from omnimemory_learner.storage.state import StateStore

IDLE_SECONDS = 1.2
TYPES = ["file_open", "code_edit", "file_save", "test_run", "git_commit", "git_push"]
# Ids of fixed length ending in "z": none is a part of another, so a search for one finds only it.
FAMILIES = ("keep", "secret", "tmp")
PATTERNS = ["secret-*", "tmp-0?z", "*-1[0-3]z", "keep-04z"]


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1e6) % 1_000_000:06d}"


def stream(rng: random.Random, ids, base: float, sessions_each: int):
    """Rows (timestamp, event_type, session_id): sessions of 3 to 6 events, 0.3 s apart, 100 s between."""
    rows = []
    for slot in range(sessions_each):
        for number, session_id in enumerate(ids):
            start = base + (slot * len(ids) + number) * 100.0
            rows += [(stamp(start + 0.3 * i), rng.choice(TYPES), session_id) for i in range(rng.randrange(3, 7))]
    rng.shuffle(rows)  # interleaved ids; each id's rows stay in time order below
    rows.sort(key=lambda row: row[0])
    return rows


def expected(rows, patterns, types):
    """The sessions learned under these rules: the pure core over the rows no rule excludes."""
    kept = [
        (rowid, stamp_, event_type, sid)
        for rowid, (stamp_, event_type, sid) in enumerate(rows, 1)
        if event_type not in types and not any(fnmatch.fnmatchcase(sid, pattern) for pattern in patterns)
    ]
    mapped, _, _ = validate_rows(kept, command_pairs(DEFAULT_EVENT_MAP))
    tracker = SessionTracker(IDLE_SECONDS, 3)
    closed = tracker.feed(mapped, 0.0) + tracker.close_all()
    return sorted((c.session_id, tuple(name for name, _, _ in c.commands)) for c in closed if c.learnable)


def sent(bodies):
    return sorted((body["session_id"], tuple(c["command"] for c in body["session_commands"])) for body in bodies)


def everything_shown(env, tmp_path, outputs):
    """history --json, history, report --json and the log: where an excluded id must not be."""
    history_json = run_learner(env, "history", "--json")
    history_text = run_learner(env, "history")
    report = run_learner(env, "report", "--json")
    log = (tmp_path / "learner.log").read_text() if (tmp_path / "learner.log").exists() else ""
    texts = [history_json.stdout, history_text.stdout, report.stdout, log, *outputs]
    history = json.loads(history_json.stdout) if history_json.returncode == 0 else []
    return history, json.loads(report.stdout) if report.returncode == 0 else {}, texts


def assert_nothing_excluded(excluded_ids, excluded_names, bodies, history, report, texts):
    for body in bodies:
        assert body["session_id"] not in excluded_ids
        names = {c["command"] for c in body["session_commands"]}
        assert not names & excluded_names, body
    for session_id in excluded_ids:
        assert not any(session_id in text for text in texts), session_id
    for entry in history:
        assert not set(entry["commands"]) & excluded_names, entry
    for item in report.get("workflows", []):
        assert not set(item["commands"]) & excluded_names
    for item in report.get("transitions", []):
        assert not {item["from"], item["to"]} & excluded_names


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    patterns=st.lists(st.sampled_from(PATTERNS), unique=True, max_size=3),
    types=st.lists(st.sampled_from(["git_push", "test_run"]), unique=True, max_size=1),
)
@example(seed=1, patterns=["secret-*", "*-1[0-3]z"], types=["git_push"])  # every kind of rule, always tried
def test_no_excluded_row_reaches_a_body_the_history_the_report_or_the_log(bodies, seed, patterns, types):
    rng = random.Random(seed)
    ids = [f"{family}-{number:02d}z" for family in FAMILIES for number in rng.sample(range(20), 3)]
    base = time.time() - 2 * 86400
    first, second = stream(rng, ids, base, 2), stream(rng, ids, base + 10_000, 1)
    bodies.clear()
    with tempfile.TemporaryDirectory() as directory, OriginalAPI() as api:
        tmp_path = Path(directory)
        db = create_db(tmp_path / "events.db")
        env = learner_env(
            tmp_path,
            api.url,
            db,
            OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=str(IDLE_SECONDS / 60),
            OMNIMEMORY_LEARNER_LOG_LEVEL="DEBUG",
            OMNIMEMORY_LEARNER_EXCLUDE_SESSION_IDS=",".join(patterns),
            OMNIMEMORY_LEARNER_EXCLUDE_EVENT_TYPES=",".join(types),
        )
        outputs = []
        for part in (first, second):  # two runs: the second starts from the first's state
            insert_events(db, part)
            result = run_learner(env, "backfill", "--until-delivered-timeout", "30")
            assert result.returncode == 0, result.stdout + result.stderr
            outputs += [result.stdout, result.stderr]
        truth = expected(first + second, patterns, types)
        assert sent(bodies) == truth  # each session not excluded, exactly once
        taught_before = len(bodies)
        api.restart()  # it forgets everything: reconcile teaches it again from the history
        result = run_learner(env, "reconcile")
        assert result.returncode == 0, result.stdout + result.stderr
        outputs += [result.stdout, result.stderr]
        assert sorted(set(sent(bodies[taught_before:]))) == sorted(set(truth))
        history, report, texts = everything_shown(env, tmp_path, outputs)
        excluded_ids = {sid for sid in ids if any(fnmatch.fnmatchcase(sid, pattern) for pattern in patterns)}
        excluded_names = {DEFAULT_EVENT_MAP[event_type] for event_type in types}
        assert_nothing_excluded(excluded_ids, excluded_names, bodies, history, report, texts)
        learned = sorted(
            (entry["session_id"], tuple(entry["commands"])) for entry in history if entry["settled"] == "learned"
        )
        assert learned == truth
        status = json.loads(run_learner(env, "status", "--json").stdout)
        rows_excluded = len(first + second) - sum(
            1
            for _, event_type, sid in first + second
            if event_type not in types and not any(fnmatch.fnmatchcase(sid, pattern) for pattern in patterns)
        )
        assert status["stats"]["events_excluded"] == rows_excluded
    # Sessions no rule touches are exactly those learned without rules.
    untouched = [
        session
        for session in expected(first + second, [], [])
        if session[0] not in excluded_ids and not set(session[1]) & excluded_names
    ]
    assert set(untouched) <= set(truth)


def test_a_rule_added_later_hides_what_was_learned_and_stops_what_waits_and_what_would_be_taught_again(
    tmp_path, bodies
):
    rng = random.Random(7)
    ids = ["keep-01z", "secret-02z"]
    rows = stream(rng, ids, time.time() - 86400, 2)
    with OriginalAPI() as api:
        db = create_db(tmp_path / "events.db")
        insert_events(db, rows)
        env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=str(IDLE_SECONDS / 60))
        assert run_learner(env, "backfill", "--until-delivered-timeout", "30").returncode == 0
        assert {body["session_id"] for body in bodies} == set(ids)  # learned before the rule
        # A session of the id waiting in the outbox when the rule comes.
        store = StateStore(tmp_path / "state")
        commands = [("open_file", 1_700_000_000.0 + i, "file_open") for i in range(4)]
        store.commit(store.position(), [ClosedSession.from_commands("secret-02z", commands, len(rows), len(rows))], {})
        store.close()
        ruled = dict(env, OMNIMEMORY_LEARNER_EXCLUDE_SESSION_IDS="secret-*")
        assert [entry["session_id"] for entry in json.loads(run_learner(env, "outbox", "list", "--json").stdout)] == [
            "secret-02z"
        ]
        assert json.loads(run_learner(ruled, "outbox", "list", "--json").stdout) == []  # not shown either
        before = len(bodies)
        api.restart()
        result = run_learner(ruled, "backfill", "--until-delivered-timeout", "30")
        assert result.returncode == 0, result.stdout + result.stderr
        result = run_learner(ruled, "reconcile")
        assert result.returncode == 0, result.stdout + result.stderr
        later = bodies[before:]
        assert later and {body["session_id"] for body in later} == {"keep-01z"}  # taught again: only it
        history, report, texts = everything_shown(ruled, tmp_path, [result.stdout, result.stderr])
        assert {entry["session_id"] for entry in history} == {"keep-01z"}
        assert report["sessions"] == len(history)
        assert not any("secret-02z" in text for text in texts[:3])
        waiting = sqlite3.connect(str(tmp_path / "state" / "state.db"))
        assert (
            waiting.execute("SELECT count(*) FROM sessions WHERE status IN ('pending', 'rejected')").fetchone()[0] == 0
        )
        waiting.close()
        # Without the rule the history shows it all again: hidden, not deleted.
        assert {entry["session_id"] for entry in everything_shown(env, tmp_path, [])[0]} == set(ids)


def test_a_rule_a_reload_brings_applies_to_the_next_rows_and_to_a_session_open_then(tmp_path, bodies):
    with OriginalAPI() as api:
        db = create_db(tmp_path / "events.db")
        config = tmp_path / "learner.toml"
        config.write_text("")
        env = learner_env(
            tmp_path,
            api.url,
            db,
            OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.1",  # 6 s: the open session is seen open
            OMNIMEMORY_LEARNER_CONFIG=str(config),
        )
        process = start_learner(env, "run")
        try:
            assert wait_until(lambda: (tmp_path / "state" / "state.db").exists(), 30)
            now = time.time()
            insert_events(db, [(stamp(now + 0.1 * i), "code_edit", "secret-05z") for i in range(3)])
            assert wait_until(lambda: _status(env)["active_sessions"] == 1, 30)  # open, not yet excluded
            config.write_text('exclude_session_ids = ["secret-*"]\n')
            process.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            now = time.time()
            insert_events(
                db,
                [(stamp(now + 0.1 * i), "code_edit", sid) for sid in ("secret-05z", "keep-06z") for i in range(4)],
            )
            assert wait_until(lambda: len(bodies) >= 1, 30)
            assert wait_until(lambda: _status(env)["stats"]["events_excluded"] == 7, 30)
            time.sleep(1.0)
        finally:
            code, output = stop(process)
        assert code == 0, output
        assert [body["session_id"] for body in bodies] == ["keep-06z"]
        assert "secret-05z" not in (tmp_path / "learner.log").read_text() + output


def _status(env):
    return json.loads(run_learner(env, "status", "--json").stdout)
