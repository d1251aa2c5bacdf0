"""The learner's own state: disk full, read-only, deleted while running.

Disk full uses a real tmpfs mounted for the test (root only; elsewhere it is
skipped, with the reason shown).  A read-only state directory is a 0500
directory; as root the learner runs without the capabilities that override
file permissions, so it meets the directory as a user's service would.
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import time

import pytest
from helpers import (
    IDLE_MINUTES,
    RecordingAPI,
    cpu_seconds,
    create_db,
    delivered_once,
    free_port,
    insert_events,
    learner_env,
    output_of,
    pending,
    run_learner,
    start_learner,
    stop,
    wait_until,
)


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def history(db, sessions, prefix):
    start = time.time() - 86400
    insert_events(
        db,
        [
            (stamp(start + s * 1000 + i), kind, f"{prefix}{s}")
            for s in range(sessions)
            for i, kind in enumerate(["file_open", "code_edit", "file_save"])
        ],
    )


@pytest.fixture
def small_filesystem(tmp_path):
    mount_point = tmp_path / "state"
    mount_point.mkdir(mode=0o700)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def subject_to_permissions():
    """popen arguments that make the learner obey file modes even as root."""
    if os.geteuid() != 0:
        return {}
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP = 24
    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3

    def drop_overrides():
        # Dropped from the bounding set, root's exec does not get them back.
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return {"preexec_fn": drop_overrides}


STATE_WAIT = "cannot use the state directory"


def assert_each_delivered_once(api, sessions):
    unique, resent = delivered_once(api)
    assert len(unique) == sessions and resent == 0 and len(api.sessions()) == sessions


def assert_restart_sends_nothing_again(env, api, sessions):
    """Restarted on the same state, the learner sends nothing a second time."""
    learner = start_learner(env)
    time.sleep(3)
    assert stop(learner)[0] == 0
    assert_each_delivered_once(api, sessions)


def test_read_only_state_directory_at_start_is_waited_for(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, 5, "r")
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    os.chmod(state, 0o500)
    api = RecordingAPI().start()
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=0.5,
    )
    try:
        # Stopped while waiting: a clean exit, nothing written.
        learner = start_learner(env, **subject_to_permissions())
        assert wait_until(lambda: STATE_WAIT in output_of(learner), 20)
        code, out = stop(learner, timeout=5)
        assert code == 0, out
        assert os.listdir(state) == []
        # Waiting, not crashing or exiting into a restart loop; said once.  To
        # systemd it is started (or it would time the start out and restart
        # it) and alive (the watchdog is fed while it waits).
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        notify.setblocking(False)
        learner = start_learner(
            dict(env, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000"), **subject_to_permissions()
        )
        assert wait_until(lambda: STATE_WAIT in output_of(learner), 20)
        time.sleep(3)  # six retries
        assert learner.poll() is None
        assert output_of(learner).count(STATE_WAIT) == 1
        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        notify.close()
        assert messages[0].startswith("READY=1\nSTATUS=Waiting: " + STATE_WAIT), messages
        assert messages.count("WATCHDOG=1") >= 4, messages
        assert "Permission denied" in output_of(learner) and api.sessions() == []
        os.chmod(state, 0o700)
        assert api.wait_for(5, timeout=20)
        time.sleep(1)
        code, out = stop(learner)
        assert code == 0 and f"The state directory {state} is usable" in out
        assert_each_delivered_once(api, 5)
    finally:
        os.chmod(state, 0o700)
        api.stop()


def test_state_of_an_earlier_run_turned_read_only_is_waited_for_with_the_lock_held(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    state = tmp_path / "state"
    api = RecordingAPI().start()
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=0.5,
    )
    try:
        learner = start_learner(env)
        history(db, 3, "first")
        assert api.wait_for(3, timeout=20)
        assert stop(learner)[0] == 0
        os.chmod(state, 0o500)  # state.db and the lock exist; SQLite cannot create its -wal
        history(db, 3, "second")
        learner = start_learner(env, **subject_to_permissions())
        assert wait_until(lambda: STATE_WAIT in output_of(learner), 20)
        # The lock is held while waiting: a backfill refuses, status sees it running but silent.
        assert run_learner(env, "backfill").returncode == 75
        report = run_learner(env, "status")
        assert report.returncode == 0, report.stdout
        assert f"pid {learner.pid}, but not publishing its status" in report.stdout
        assert json.loads(run_learner(env, "status", "--json").stdout)["snapshot_stale"] is True
        os.chmod(state, 0o700)
        assert api.wait_for(6, timeout=20)
        assert wait_until(
            lambda: json.loads(run_learner(env, "status", "--json").stdout)["snapshot_stale"] is False, 20
        )
        assert stop(learner)[0] == 0
        assert_each_delivered_once(api, 6)
    finally:
        os.chmod(state, 0o700)
        api.stop()


def test_sighup_while_waiting_takes_a_new_state_dir(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, 4, "h")
    read_only, usable = tmp_path / "read-only", tmp_path / "usable"
    read_only.mkdir(mode=0o500)
    os.chmod(read_only, 0o500)
    config = tmp_path / "learner.toml"
    config.write_text(f'state_dir = "{read_only}"\n')
    api = RecordingAPI().start()
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    del env["OMNIMEMORY_LEARNER_STATE_DIR"]  # the file says where the state goes
    learner = start_learner(env, "--config", str(config), **subject_to_permissions())
    try:
        assert wait_until(lambda: STATE_WAIT in output_of(learner), 20)
        config.write_text(f'state_dir = "{usable}"\n')
        learner.send_signal(signal.SIGHUP)
        assert api.wait_for(4, timeout=20)
        code, out = stop(learner)
        assert code == 0 and f"Configuration reloaded (state: {usable})" in out
        assert (usable / "state.db").exists() and os.listdir(read_only) == []
        assert_each_delivered_once(api, 4)
    finally:
        os.chmod(read_only, 0o700)
        api.stop()


def test_state_directory_turning_read_only_while_running(tmp_path):
    db = create_db(tmp_path / "db" / "memory_data.db")
    state = tmp_path / "state"
    api = RecordingAPI().start()
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    learner = start_learner(env, **subject_to_permissions())
    try:
        history(db, 5, "a")
        assert api.wait_for(5, timeout=20)
        os.chmod(state, 0o500)
        # The open state store keeps working; only the snapshot (a new file) cannot be written.
        history(db, 5, "b")
        assert api.wait_for(10, timeout=20)
        assert wait_until(lambda: "Cannot publish the status snapshot" in output_of(learner), 15)
        time.sleep(11)  # two more status periods
        assert output_of(learner).count("Cannot publish the status snapshot") == 1
        os.chmod(state, 0o700)
        assert wait_until(lambda: "The status snapshot is published again" in output_of(learner), 15)
        code, out = stop(learner)
        assert code == 0, out
        assert_restart_sends_nothing_again(env, api, 10)
    finally:
        os.chmod(state, 0o700)
        api.stop()


def remount(mount_point, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)


def test_disk_full_pauses_reading_and_loses_nothing(tmp_path, small_filesystem):
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, 6000, "f")  # 6,000 sessions do not fit in 512 KB of outbox
    port = free_port()
    env = learner_env(
        tmp_path,
        f"http://127.0.0.1:{port}",
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS=2,
    )
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
        assert_each_delivered_once(api, 6000)
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
        assert_restart_sends_nothing_again(env, api, 10)
    finally:
        api.stop()


def test_state_store_failing_mid_catch_up_does_not_spin(tmp_path, small_filesystem):
    """Reading paused on a full disk with idle deadlines already past: the loop sleeps.

    The old loop kept a passed idle deadline as its next wake-up and waited
    0 s over and over: a whole core until the disk was fixed.
    """
    db = create_db(tmp_path / "db" / "memory_data.db")
    # Enough that the first commit (after a second of reading) fails with most still unread.
    history(db, 100_000, "c")
    port = free_port()
    env = learner_env(
        tmp_path,
        f"http://127.0.0.1:{port}",
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS=2,
    )
    learner = start_learner(env)
    try:
        assert wait_until(lambda: "reading pauses until the state can be written" in output_of(learner), 60), output_of(
            learner
        )[-3000:]
        time.sleep(IDLE_MINUTES * 60 + 1)  # the open sessions' idle deadlines pass
        report = json.loads(run_learner(env, "status", "--json").stdout)
        assert report["behind"] > 0 and report["active_sessions"] >= 1, report  # mid-catch-up
        before, started = cpu_seconds(learner.pid), time.monotonic()
        time.sleep(6)
        used = cpu_seconds(learner.pid) - before
        elapsed = time.monotonic() - started
        print(f"FIGURE no-spin: {used:.2f} s of CPU in {elapsed:.1f} s with the state store full")
        assert learner.poll() is None
        assert used < 0.15 * elapsed, f"{used:.2f} s of CPU in {elapsed:.1f} s: the loop spins"
        # And it takes up reading when space returns.
        remount(small_filesystem, "size=64m")
        assert wait_until(lambda: "The state store is writable again" in output_of(learner), 30)
        assert wait_until(lambda: json.loads(run_learner(env, "status", "--json").stdout)["behind"] == 0, 60)
        code, out = stop(learner)
        assert code == 0, out[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
