"""Under the real systemd user manager: a held instance lock is waited for.

Started while a backfill holds the lock, the unit used to exit 75, be
restarted every 5 s and be left failed after five tries.  Now it becomes
active, says in STATUS= whose lock it waits for, keeps the watchdog fed,
stops cleanly on SIGTERM while waiting, and takes over when the backfill ends.
Run under `flock /tmp/omnimemory-systemd.lock`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, RecordingAPI, create_db, free_port, insert_events
from test_systemd import UNIT, manager, write_config  # noqa: F401 - the fixture

pytestmark = pytest.mark.systemd


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def install_unit(um, tmp_path):
    """The packaged unit, its executable this checkout run by this Python; a 2 s watchdog."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    executable = bindir / "omnimemory-learner"
    executable.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m omnimemory_learner "$@"\n')
    executable.chmod(0o755)
    unit_dir = um.home / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    template = (ROOT / "packaging" / "systemd" / UNIT).read_text()
    (unit_dir / UNIT).write_text(template.replace("@BINDIR@", str(bindir)))
    dropin = unit_dir / (UNIT + ".d")
    dropin.mkdir()
    # Far shorter than the backfill holds the lock: an unfed watchdog would kill the wait.
    (dropin / "test.conf").write_text("[Service]\nWatchdogSec=2\nRestartSec=1\nWorkingDirectory=%h\n")
    um.systemctl("daemon-reload", check=True)


def start_backfill(um, timeout_seconds):
    env = dict(um.env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "omnimemory_learner", "backfill", "--until-delivered-timeout", str(timeout_seconds)],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def lock_holder(um):
    path = um.home / ".local" / "state" / "omnimemory-learner" / "lock"
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def test_unit_started_while_a_backfill_holds_the_lock_waits_and_becomes_active(manager, tmp_path):  # noqa: F811
    um = manager
    db = create_db(tmp_path / "db" / "memory_data.db")
    start = time.time() - 86400
    insert_events(
        db,
        [
            (stamp(start + s * 1000 + i), kind, f"b{s}")
            for s in range(3)
            for i, kind in enumerate(["file_open", "code_edit", "file_save"])
        ],
    )
    port = free_port()  # the API is down while the backfill runs: it holds the lock until its timeout
    write_config(um, db, f"http://127.0.0.1:{port}", retry_max_seconds=1)
    install_unit(um, tmp_path)
    api = None
    backfill = start_backfill(um, 40)
    try:
        assert um.wait(lambda: lock_holder(um) == backfill.pid, 30)

        # -- started while the lock is held: active (READY=1), waiting, the holder named.
        started = um.systemctl("start", UNIT, timeout=60)
        assert started.returncode == 0, started.stderr + um.journal()[-2000:]
        props = um.show("ActiveState", "StatusText", "MainPID", "NRestarts")
        assert props["ActiveState"] == "active", props
        assert f"pid {backfill.pid}" in props["StatusText"] and "Waiting" in props["StatusText"], props
        first_pid = props["MainPID"]
        time.sleep(5)  # more than two watchdog periods
        props = um.show("ActiveState", "MainPID", "NRestarts", "Result")
        assert props["ActiveState"] == "active" and props["MainPID"] == first_pid and props["NRestarts"] == "0", (
            props,
            um.journal()[-3000:],
        )

        # -- SIGTERM while waiting: a clean stop.
        um.systemctl("stop", UNIT, check=True)
        props = um.show("ActiveState", "Result", "ExecMainStatus")
        assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
        assert backfill.poll() is None and lock_holder(um) == backfill.pid

        # -- started again, it takes over when the backfill ends, and delivers what the backfill left.
        assert um.systemctl("start", UNIT, timeout=60).returncode == 0
        assert um.show("ActiveState")["ActiveState"] == "active"
        backfill.terminate()
        assert backfill.wait(30) in (0, 69, -15)
        api = RecordingAPI(port).start()
        assert api.wait_for(3, timeout=40), um.journal()[-3000:]
        assert um.wait(lambda: "Learning" in um.show("StatusText")["StatusText"], 20)
        props = um.show("ActiveState", "NRestarts", "MainPID")
        assert props["ActiveState"] == "active" and props["NRestarts"] == "0", props
        assert lock_holder(um) == int(props["MainPID"])
        assert sorted(body["session_id"] for _, body in api.sessions()) == ["b0", "b1", "b2"]
        um.systemctl("stop", UNIT, check=True)
        assert um.show("Result")["Result"] == "success"
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.wait()
        if api is not None:
            api.stop()


def test_by_hand_a_second_instance_still_exits_75(tmp_path):
    """No service manager: the held lock is an exit 75 with a clear message."""
    from helpers import learner_env, run_learner, start_learner, stop, wait_until

    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, "http://127.0.0.1:9", db)
    first = start_learner(env)
    try:
        assert wait_until(lambda: run_learner(env, "status").returncode == 0, 20)
        second = run_learner(env, "run", timeout=30)
        assert second.returncode == 75
        assert f"another omnimemory-learner (pid {first.pid}) holds" in second.stdout + second.stderr
        assert "not starting a second instance" in second.stdout + second.stderr
        assert stop(first)[0] == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert os.path.exists(tmp_path / "state" / "lock")
