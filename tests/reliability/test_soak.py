"""Soak: steady writing with the API flapping; resources flat, every session accounted for.

45 s in the default run; `make soak` runs it for an hour (RELIABILITY_LONG=1).
"""

import os
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
    start_learner,
    true_sessions,
    wait_until,
)

SECONDS = float(os.environ.get("RELIABILITY_SOAK_SECONDS", 3600 if LONG else 45))


def resources(pid):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
    }


def test_soak_with_the_api_flapping(tmp_path):
    port = free_port()
    api = RecordingAPI(port)
    db = tmp_path / "db" / "memory_data.db"
    db.parent.mkdir()
    env = learner_env(
        tmp_path,
        f"http://127.0.0.1:{port}",
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS=2,
    )
    learner = start_learner(env)
    # More sessions than it can write in the time: it is stopped at the end.
    writer = subprocess.Popen(
        [sys.executable, WRITER, str(db), "31", str(int(SECONDS * 20))], stdout=subprocess.DEVNULL
    )
    flapper = Flapper(api, period=3.0).start()
    try:
        time.sleep(min(10.0, SECONDS / 4))
        warm = resources(learner.pid)
        samples = [warm]
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(min(5.0, SECONDS / 10))
            samples.append(resources(learner.pid))
        writer.terminate()
        writer.wait(10)
        flapper.stop()
        truth = true_sessions(db)
        assert wait_until(
            lambda: len(delivered_once(api)[0]) >= len(truth) and pending(tmp_path / "state") == 0, timeout=120
        )
        time.sleep(IDLE_MINUTES * 60 + 0.5)
        end = resources(learner.pid)
        learner.terminate()
        assert learner.wait(15) == 0
    finally:
        api.stop()
        if writer.poll() is None:
            writer.kill()
    unique, resent = delivered_once(api)
    figures = compare(truth, unique)
    peak = max(s["rss_mb"] for s in samples)
    print(
        f"\nFIGURE soak {SECONDS:.0f}s: sessions={figures['sessions']} lost={figures['lost']} resent={resent} "
        f"rss {warm['rss_mb']:.1f}->{end['rss_mb']:.1f} MB (peak {peak:.1f}), fds {warm['fds']}->{end['fds']}, "
        f"threads {warm['threads']}->{end['threads']}"
    )
    assert figures["lost"] == 0 and figures["unexpected"] == 0, figures["detail"]
    assert end["threads"] == warm["threads"]
    assert end["fds"] <= warm["fds"] + 2
    assert end["rss_mb"] <= warm["rss_mb"] + 8
