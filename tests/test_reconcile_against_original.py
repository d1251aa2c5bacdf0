"""core/reconcile.py against tests/original_api.py run as its own process: restart, reconcile, teach again.

Stands in for the learner's side (a list of what it sent and what the API
answered) so that the rule is checked against real counting, pattern ids and
restarts before the service is wired to it.
"""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import pytest
from original_api import OriginalProcess

from omnimemory_learner.core.reconcile import Taught, parse_patterns, reconcile

SCRIPT = Path(__file__).resolve().parent / "original_api.py"
NAMES = ["open_file", "edit_code", "save_file", "run_tests", "commit_changes", "push_changes"]


def post(url, names, outcome):
    body = json.dumps({"session_commands": [{"command": n} for n in names], "session_outcome": outcome}).encode()
    request = urllib.request.Request(
        url + "/learn", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["pattern_id"]


def held(url):
    with urllib.request.urlopen(url + "/patterns", timeout=10) as answer:
        parsed = parse_patterns(json.loads(answer.read()))
    assert parsed.usable and not parsed.problems
    return parsed


@pytest.fixture
def api(tmp_path):
    running = [OriginalProcess(tmp_path)]

    def restart():
        running[0].restart()
        return running[0].url

    yield running, restart
    running[0].stop()


def test_a_restart_is_repaired_exactly_and_a_repair_cut_short_is_finished_once(api):
    running, restart = api
    rng = random.Random(5)
    sequences = [[rng.choice(NAMES) for _ in range(rng.randint(3, 5))] for _ in range(6)]
    history, sent = [], {}
    for n in range(60):
        names, outcome = rng.choice(sequences), rng.choice(["success", "success", "failure"])
        pattern_id = post(running[0].url, names, outcome)
        history.append(Taught(pattern_id, outcome, 1.7e9 + n // 2, f"k{n:02d}"))  # pairs share a time
        sent[f"k{n:02d}"] = names
    before = held(running[0].url).counts
    assert post(running[0].url, ["open_file", "save_file"], "success") is None  # never counted

    url = restart()
    for names, outcome in [(sequences[0], "success")] * 3 + [(["other", "client", "only"], "failure")]:
        post(url, names, outcome)  # another client after the restart: only adds
    for n in range(60, 70):  # the learner goes on after the restart
        names, outcome = rng.choice(sequences), "success"
        history.append(Taught(post(url, names, outcome), outcome, 1.7e9 + n, f"k{n:02d}"))
        sent[f"k{n:02d}"] = names

    after_restart = held(url).counts
    first = reconcile(history, after_restart, learned_ever=len(history))
    assert first.loss_seen and first.sessions_lost > 0 and first.forgotten_not_in_history == 0
    # The 60 sent before the restart are lost; the other client's three successes can hide up to three.
    assert 57 <= first.sessions_lost <= 60
    for s in first.teach[: len(first.teach) // 2]:  # a stop half way through the repair
        assert post(url, sent[s.key], s.outcome) == s.pattern_id
    second = reconcile(history, held(url).counts)
    assert second.sessions_lost == first.sessions_lost - len(first.teach) // 2
    for s in second.teach:
        post(url, sent[s.key], s.outcome)
    now = held(url).counts
    assert not reconcile(history, now).teach
    # Each count of ours is back to what the history gave it, or stays where the other client's
    # additions already put it higher (a loss they hide is not seen): never more.
    ours = {}
    for s in history:
        success, failure = ours.get(s.pattern_id, (0, 0))
        ours[s.pattern_id] = (success + 1, failure) if s.outcome == "success" else (success, failure + 1)
    for pattern_id, (success, failure) in ours.items():
        was = after_restart.get(pattern_id, (0, 0))
        assert now[pattern_id] == (max(success, was[0]), max(failure, was[1]))
    assert {p: c for p, c in now.items() if p not in ours} == {p: c for p, c in after_restart.items() if p not in ours}
    assert sum(s + f for s, f in before.values()) == 60


def test_a_lost_history_counts_what_cannot_be_taught_again(api):
    running, restart = api
    for n in range(5):
        post(running[0].url, ["open_file", "edit_code", f"save_file {n}"], "success")
    url = restart()
    result = reconcile([], held(url).counts, learned_ever=5)  # history.db gone, the API restarted
    assert result.loss_seen and result.teach == () and result.forgotten_not_in_history == 5
