"""The learner's own state: disk full, deleted while running.

Disk full uses a real tmpfs mounted for the test (root only; elsewhere it is
skipped, with the reason shown).  A read-only state directory takes the same
path (every write fails with a StateError); it cannot be staged the same way,
as a tmpfs with files open for writing refuses to be remounted read-only.
"""

import os
import subprocess
import time

import pytest

from helpers import (IDLE_MINUTES, RecordingAPI, create_db, delivered_once, free_port, insert_events, learner_env,
                     pending, start_learner, stop, wait_until)


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def history(db, sessions, prefix):
    start = time.time() - 86400
    insert_events(db, [(stamp(start + s * 1000 + i), kind, f"{prefix}{s}") for s in range(sessions)
                       for i, kind in enumerate(["file_open", "code_edit", "file_save"])])


@pytest.fixture
def small_filesystem(tmp_path):
    mount_point = tmp_path / "state"
    mount_point.mkdir(mode=0o700)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def remount(mount_point, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)


def test_disk_full_pauses_reading_and_loses_nothing(tmp_path, small_filesystem):
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, 6000, "f")  # 6,000 sessions do not fit in 512 KB of outbox
    port = free_port()
    env = learner_env(tmp_path, f"http://127.0.0.1:{port}", db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
                      OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS=2)
    learner = start_learner(env)
    time.sleep(4)
    assert learner.poll() is None  # no crash
    remount(small_filesystem, "size=32m")
    api = RecordingAPI(port).start()
    try:
        assert wait_until(lambda: len(delivered_once(api)[0]) == 6000 and pending(small_filesystem) == 0, 90)
        code, out = stop(learner)
        assert code == 0
        assert "full" in out and "reading pauses until the state can be written" in out
        assert "The state store is writable again" in out
        unique, resent = delivered_once(api)
        assert len(unique) == 6000 and resent == 0
    finally:
        api.stop()


def test_state_store_deleted_while_running(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    api = RecordingAPI().start()
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env)
    try:
        history(db, 5, "a")
        assert api.wait_for(5, timeout=20)
        for name in os.listdir(tmp_path / "state"):
            if name.startswith("state.db"):
                os.unlink(tmp_path / "state" / name)
        history(db, 5, "b")
        assert api.wait_for(10, timeout=20)
        code, out = stop(learner)
        assert code == 0 and "was deleted while running; restored it" in out
        # Restarted on the restored state: nothing is sent again.
        learner = start_learner(env)
        time.sleep(3)
        assert stop(learner)[0] == 0
        unique, resent = delivered_once(api)
        assert len(unique) == 10 and resent == 0 and len(api.sessions()) == 10
    finally:
        api.stop()
