"""Crashes: SIGKILL at random moments and at the worst ones; nothing lost, nothing twice."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import LONG
from helpers import (
    IDLE_MINUTES,
    WRITER,
    compare,
    create_db,
    delivered_once,
    insert_events,
    learner_env,
    pending,
    start_learner,
    stop,
    true_sessions,
    wait_until,
)


def test_random_sigkills_under_a_supervisor_while_another_process_writes(tmp_path, api):
    # Long form: 100 kills spread over a writer of about 50,000 events (~12 minutes).
    kills_wanted, sessions, longest_gap = (100, 12_500, 14.0) if LONG else (20, 300, 1.2)
    rng = random.Random(11)
    db = tmp_path / "db" / "memory_data.db"
    db.parent.mkdir()
    # Small batches and a short poll: more commits and more moments to be killed in.
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_BATCH_SIZE=5,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=1,
    )
    writer = subprocess.Popen([sys.executable, WRITER, str(db), "11", str(sessions)], stdout=subprocess.PIPE, text=True)
    kills = 0
    while kills < kills_wanted:
        learner = start_learner(env, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, longest_gap))
        learner.kill()
        learner.wait()
        kills += 1
        if writer.poll() is not None and kills >= kills_wanted // 2:
            break
    assert writer.wait(1800) == 0
    learner = start_learner(env)
    truth = true_sessions(db)
    assert wait_until(
        lambda: len(delivered_once(api)[0]) >= len(truth) and pending(tmp_path / "state") == 0, timeout=120
    )
    time.sleep(IDLE_MINUTES * 60 + 1)
    code, out = stop(learner)
    assert code == 0, out
    unique, resent = delivered_once(api)
    figures = compare(truth, unique)
    events = sqlite3.connect(str(db)).execute("SELECT count(*) FROM events").fetchone()[0]
    print(
        f"\nFIGURE crashes: kills={kills} events={events} sessions={figures['sessions']} lost={figures['lost']} "
        f"unexpected={figures['unexpected']} resent_same_key={resent} posts={len(api.sessions())}"
    )
    assert figures["lost"] == 0 and figures["unexpected"] == 0, figures["detail"]
    # Only POSTs in flight at a kill are sent again; there cannot be more of them than kills.
    assert resent <= kills


@pytest.mark.parametrize("moment", ["before", "after"])
def test_kill_between_the_servers_learning_and_our_record(tmp_path, api, moment):
    """The worst moments: the API has learned the session, we have not recorded it."""
    db = create_db(tmp_path / "db" / "memory_data.db")
    start = time.time() - 3600
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
    insert_events(
        db,
        [
            (stamp(start + s * 1000 + i), kind, f"k{s}")
            for s in range(3)
            for i, kind in enumerate(["file_open", "code_edit", "file_save"])
        ],
    )
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env, stdout=subprocess.DEVNULL)
    api.kill_hook = lambda: os.kill(learner.pid, signal.SIGKILL)
    api.script = [200, ("kill", moment)]
    assert learner.wait(30) == -signal.SIGKILL
    learner = start_learner(env)
    assert wait_until(lambda: len(delivered_once(api)[0]) == 3 and pending(tmp_path / "state") == 0, timeout=30)
    code, _ = stop(learner)
    assert code == 0
    unique, resent = delivered_once(api)
    assert [s[0] for s in unique] == ["k0", "k1", "k2"]
    keys = [k for k, _ in api.sessions()]
    if moment == "before":
        # It never heard the answer: resent once, with the same key.
        assert resent == 1 and len(keys) == 4
    else:
        # It may have recorded the answer before dying; if not, the resend carries the same key.
        assert resent <= 1
    assert len(set(keys)) == 3
