"""API faults: down, flapping, failing at random, hanging, answering garbage."""

import random
import subprocess
import sys
import time

from conftest import LONG
from helpers import (
    IDLE_MINUTES,
    WRITER,
    Flapper,
    RecordingAPI,
    compare,
    delivered_once,
    free_port,
    learner_env,
    pending,
    run_learner,
    start_learner,
    stop,
    true_sessions,
    wait_until,
)


def run_with(tmp_path, port, disturb, sessions=None, drain_timeout=120.0, **extra):
    """Write sessions with another process while `disturb(api)` runs; then let everything drain."""
    sessions = sessions or (1500 if LONG else 120)
    db = tmp_path / "db" / "memory_data.db"
    db.parent.mkdir()
    env = learner_env(tmp_path, f"http://127.0.0.1:{port}", db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
                      OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS=2, **extra)
    learner = start_learner(env)
    writer = subprocess.Popen([sys.executable, WRITER, str(db), "21", str(sessions)], stdout=subprocess.PIPE, text=True)
    api = disturb(writer)
    assert writer.wait(900) == 0
    truth = true_sessions(db)
    drained = wait_until(lambda: len(delivered_once(api)[0]) >= len(truth) and pending(tmp_path / "state") == 0,
                         timeout=drain_timeout)
    time.sleep(IDLE_MINUTES * 60 + 0.5)
    code, out = stop(learner)
    api.stop()
    unique, resent = delivered_once(api)
    figures = compare(truth, unique)
    assert drained, f"not all delivered in {drain_timeout:.0f} s: {figures}"
    assert code == 0
    return figures, resent, out, env


def test_api_down_for_the_whole_write_phase_then_up(tmp_path):
    port = free_port()
    stalls = []

    def disturb(writer):
        # Reading never stalls: events are processed while the API is down.
        while writer.poll() is None:
            time.sleep(0.5)
        env_status = run_learner(env_holder[0], "status", "--json")
        stalls.append(env_status.stdout)
        return RecordingAPI(port).start()

    env_holder = [learner_env(tmp_path, f"http://127.0.0.1:{port}", tmp_path / "db" / "memory_data.db")]
    figures, resent, out, _ = run_with(tmp_path, port, disturb)
    print(f"\nFIGURE api-down: {figures['sessions']} sessions, lost={figures['lost']}, resent={resent}")
    assert figures["lost"] == 0 and figures["unexpected"] == 0, figures["detail"]
    assert resent == 0
    assert "Failed to connect to procedural API" in out and "Will retry in" in out
    import json
    snapshot = json.loads(stalls[0])
    assert snapshot["stats"]["events_processed"] > 0 and snapshot["stats"]["outbox_pending"] > 0


def test_api_flapping_every_second(tmp_path):
    port = free_port()
    received = RecordingAPI(port)  # one record across restarts of the server

    def disturb(writer):
        flapper = Flapper(received).start()
        while writer.poll() is None:
            time.sleep(0.2)
        flapper.stop()
        return received

    figures, resent, out, _ = run_with(tmp_path, port, disturb)
    print(f"\nFIGURE api-flapping: {figures['sessions']} sessions, lost={figures['lost']}, resent_same_key={resent}")
    assert figures["lost"] == 0 and figures["unexpected"] == 0, figures["detail"]
    assert "answering again" in out


def test_api_answering_500_503_429_garbage_and_hanging_at_random(tmp_path):
    port = free_port()
    api = RecordingAPI(port)
    rng = random.Random(5)
    faults = [500, 503, 429, ("garbage", "<html>bad gateway</html>"), ("garbage", '{"pattern'),
              ("garbage", "null"), ("delay", 2.5)]
    api.script = [rng.choice(faults) if rng.random() < 0.5 else 200 for _ in range(400)]
    api.start()
    # Each fault costs a retry after up to 2 s of backoff: wait for all of them.
    faults = sum(1 for behaviour in api.script if behaviour != 200)
    figures, resent, out, _ = run_with(tmp_path, port, lambda writer: api, drain_timeout=120 + 3 * faults,
                                       OMNIMEMORY_LEARNER_REQUEST_TIMEOUT_SECONDS=1)
    print(f"\nFIGURE api-faults: {figures['sessions']} sessions, lost={figures['lost']}, "
          f"resent_same_key={resent} (each a POST that hung past the timeout and was learned late)")
    assert figures["lost"] == 0 and figures["unexpected"] == 0, figures["detail"]
    assert "HTTP 500" in out and "HTTP 429" in out and "not JSON" in out and "Will retry in" in out
