"""What a hostile review of durable learning found, each against real parts.

The learner is its own process; the API is the original's stand-in
(tests/original_api.py) on 127.0.0.1, in this process so that a test can make
it slow or list only its first page.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import ROOT, create_db, insert_events, learner_env, run_learner, start_learner, stop, wait_until
from original_api import OriginalAPI
from test_durable_learning import all_learned, learned_in_all, sessions

from omnimemory_learner.cli.exits import EX_TEMPFAIL


@pytest.fixture
def api():
    served = OriginalAPI().start()
    yield served
    served.stop()


def total(api):
    return sum(s + f for s, f in api.counts().values())


def env_for(tmp_path, api, db, **extra):
    return learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.02",
        OMNIMEMORY_LEARNER_WATCH="false",
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="0.2",
        **extra,
    )


def test_a_post_in_doubt_at_a_stop_is_asked_about_after_the_start_not_sent_again(tmp_path, api):
    # Learned at once, answered after 4 s (deadline 1 s); GET /patterns too slow to settle it before the stop.
    api.engine.answer_delay, api.engine.patterns_delay = 4.0, 30.0
    db = create_db(tmp_path / "events.db")
    env = env_for(tmp_path, api, db, OMNIMEMORY_LEARNER_REQUEST_TIMEOUT_SECONDS="1")
    learner = start_learner(env)
    insert_events(db, sessions(1, seed=1))
    assert wait_until(lambda: total(api) == 1, 30)
    time.sleep(2.0)  # the POST timed out: in doubt
    code, out = stop(learner)
    assert code == 0, out[-2000:]
    assert learned_in_all(tmp_path / "state") == 0

    api.engine.answer_delay, api.engine.patterns_delay = 0.0, 0.0
    learner = start_learner(env)
    try:
        assert wait_until(lambda: learned_in_all(tmp_path / "state") == 1, 30)
    finally:
        code, out = stop(learner)
    assert "left unanswered, was learned" in out, out[-3000:]
    assert total(api) == 1  # the earlier build sent it again at the start: 2


def test_a_slow_get_patterns_never_holds_up_a_live_session(tmp_path, api):
    api.engine.patterns_delay = 20.0  # every reconcile's GET takes 20 s
    db = create_db(tmp_path / "events.db")
    env = env_for(tmp_path, api, db)
    learner = start_learner(env)
    try:
        time.sleep(2.0)  # the start's reconcile is in flight
        delays = []
        for n in range(3):
            insert_events(db, sessions(1, seed=n, start=time.time() - 10, prefix=f"live{n}-"))
            written = time.monotonic()
            assert wait_until(lambda n=n: total(api) == n + 1, 40)
            delays.append(time.monotonic() - written)
    finally:
        code, out = stop(learner)
    assert code == 0, out[-2000:]
    print(f"\nFIGURE live sessions behind a 20 s GET /patterns: delivered after {[round(d, 1) for d in delays]} s")
    # Idle close 1.2 s after the last event; the earlier build waited out the GET (27-31 s).
    assert max(delays) < 8.0, delays


def test_a_listing_of_its_first_page_only_costs_one_teaching_at_most_never_a_loop(tmp_path, api):
    api.engine.list_limit = 3  # a paginated API whose total is the page's
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(12, seed=3))
    env = env_for(tmp_path, api, db, OMNIMEMORY_LEARNER_RECONCILE_INTERVAL_MINUTES="0.03")
    learner = start_learner(env)
    try:
        assert wait_until(lambda: learned_in_all(tmp_path / "state") >= 10, 60)
        time.sleep(6.0)  # a few periodic reconciles
        settled = dict(api.counts())
        time.sleep(8.0)  # four more
        later = dict(api.counts())
    finally:
        code, out = stop(learner)
    assert code == 0, out[-2000:]
    assert later == settled, (settled, later)  # the earlier build grew at every reconcile
    learned = learned_in_all(tmp_path / "state")
    assert learned <= total(api) <= 2 * learned
    assert "does not show what was taught again" in out


def test_reconcile_never_signals_a_lock_holder_that_does_not_listen(tmp_path, api):
    # backfill, another reconcile, or a service of an earlier version: SIGUSR1 would kill it.
    db = create_db(tmp_path / "events.db")
    env = env_for(tmp_path, api, db)
    insert_events(db, sessions(5, seed=5))
    assert run_learner(env, "backfill").returncode == 0 and total(api) > 0
    api.restart()  # forgotten: there is something to teach
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from omnimemory_learner.storage.lock import InstanceLock; "
            "lock = InstanceLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "state"),
        ],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_learner(env, "reconcile")
        assert result.returncode == EX_TEMPFAIL, result.stderr
        assert "does not reconcile when asked" in result.stderr
        time.sleep(0.5)
        assert holder.poll() is None  # alive: the earlier build killed it (-10)
    finally:
        holder.kill()
        holder.wait()


def test_reconcile_json_teaching_in_this_process_prints_json_alone(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    insert_events(db, sessions(20, seed=4))
    env = env_for(tmp_path, api, db)
    learner = start_learner(env)
    assert all_learned(tmp_path / "state", api, 15)
    assert stop(learner)[0] == 0
    before = api.counts()
    api.restart()
    result = run_learner(env, "reconcile", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # the earlier build printed its log lines first
    assert report["taught"] == report["sessions_lost"] > 0 and api.counts() == before
    assert "teaching them again" in result.stderr


def test_a_reconcile_interval_of_zero_is_accepted_and_turns_the_periodic_check_off(tmp_path, api):
    db = create_db(tmp_path / "events.db")
    env = env_for(tmp_path, api, db, OMNIMEMORY_LEARNER_RECONCILE_INTERVAL_MINUTES="0")
    result = run_learner(env, "check-config")
    assert result.returncode == 0, result.stderr + result.stdout
    negative = run_learner({**env, "OMNIMEMORY_LEARNER_RECONCILE_INTERVAL_MINUTES": "-1"}, "check-config")
    assert negative.returncode == 78 and "at least 0" in negative.stderr
