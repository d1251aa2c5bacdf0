"""A POST the API took and answered too late (issue 24, 1): not sent again until GET /patterns says if it landed.

The API counts every POST it receives. Before, a session whose answer came
after request_timeout_seconds was sent again at every retry, and counted each
time (8 times in 40 s); now it is held and GET /patterns decides.
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import IDLE_MINUTES, create_db, insert_events, learner_env, pending, start_learner, stop
from original_api import OriginalAPI, pattern_id_of
from test_durable_learning import history_rows, learned_in_all, wait_for

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP

SESSIONS = [
    ["file_open", "code_edit", "file_save"],
    ["test_run", "code_edit", "git_commit"],
    ["file_open", "file_delete", "code_edit"],
]


def events(start):
    return [
        (start + n * 3600.0 + k, event_type, f"slow{n}")
        for n, types in enumerate(SESSIONS)
        for k, event_type in enumerate(types)
    ]


def expected_counts():
    counts = {}
    for types in SESSIONS:
        names = [DEFAULT_EVENT_MAP[t] for t in types]
        outcome = (
            "failure" if "delete_file" in names[-3:] and not {"save_file", "commit_changes"} & set(names) else "success"
        )
        pair = list(counts.get(pattern_id_of(names), (0, 0)))
        pair[0 if outcome == "success" else 1] += 1
        counts[pattern_id_of(names)] = tuple(pair)
    return counts


@pytest.mark.parametrize("reconcile", ["true", "false"])
def test_a_slow_api_counts_each_session_once(tmp_path, reconcile):
    api = OriginalAPI().start()
    api.engine.answer_delay = 3.0
    db = create_db(tmp_path / "events.db")
    insert_events(db, events(time.time() - 10 * 3600.0))
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_REQUEST_TIMEOUT_SECONDS="2",
        OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS="1",
        OMNIMEMORY_LEARNER_RECONCILE=reconcile,
    )
    process = start_learner(env, "run")
    state = tmp_path / "state"
    try:
        assert wait_for(lambda: (state / "history.db").exists() and learned_in_all(state) == 3, 60)
        assert pending(state) == 0
        time.sleep(8.0)  # long enough for several retries, had the sessions been sent again
        assert api.counts() == expected_counts()
        learned = history_rows(state, "SELECT pattern_id FROM history WHERE settled = 'learned' ORDER BY pattern_id")
        assert sorted(pid for (pid,) in learned) == sorted(
            pattern_id_of([DEFAULT_EVENT_MAP[t] for t in s]) for s in SESSIONS
        )
    finally:
        code, output = stop(process)
        api.stop()
    assert code == 0, output
    assert "was learned" in output  # said by GET /patterns, not by the late answer


def test_without_get_patterns_an_unanswered_post_goes_again_only_once_the_api_answers(tmp_path):
    api = OriginalAPI().start()
    api.engine.without_patterns = True
    api.engine.answer_delay = 3.0
    db = create_db(tmp_path / "events.db")
    insert_events(db, events(time.time() - 10 * 3600.0)[:3])  # one session
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_REQUEST_TIMEOUT_SECONDS="2",
        OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS="1",
    )
    process = start_learner(env, "run")
    state = tmp_path / "state"
    try:
        assert wait_for(lambda: sum(s + f for s, f in api.counts().values()) >= 1, 30)
        time.sleep(6.0)  # still slow: GET /patterns answers 404, which releases it; sent again, timed out again
        slow = sum(s + f for s, f in api.counts().values())
        api.engine.answer_delay = 0.0
        assert wait_for(lambda: pending(state) == 0, 30)
        time.sleep(2.0)
        final = sum(s + f for s, f in api.counts().values())
    finally:
        code, output = stop(process)
        api.stop()
    assert code == 0, output
    # Sent once, and once more each time the API answered anything (its 404): bounded, not once a retry.
    assert final <= slow + 1 and slow <= 4, (slow, final)
    print(json.dumps({"while_slow": slow, "final": final}))
