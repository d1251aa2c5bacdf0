"""The watcher watches where SQLite really writes, and says "poll" when it cannot.

Latency is measured commit to delivery with a 30 s poll interval and a 1.2 s
idle threshold: a session read by the watch reaches the API about 1.3 s after
its commit; one found by the poll, 0 to 30 s after.  Three sessions in a row
all under 6 s cannot come from polling by chance (about 1 in 200).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time

import pytest
from helpers import (
    IDLE_MINUTES,
    cpu_seconds,
    create_db,
    insert_events,
    learner_env,
    output_of,
    run_learner,
    start_learner,
    stop,
    wait_until,
)

WATCH_SPEED_SECONDS = 6.0  # idle threshold 1.2 s + reading + POST, with room for a noisy machine


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())


def delivery_latencies(api, db, label, count=3):
    """Commit a live session `count` times; seconds from each commit to its POST."""
    latencies = []
    for n in range(count):
        before = len(api.sessions())
        committed = time.monotonic()
        insert_events(db, [(stamp(), kind, f"{label}{n}") for kind in ("file_open", "code_edit", "file_save")])
        assert api.wait_for(before + 1, timeout=45), f"{label}{n} never delivered"
        latencies.append(time.monotonic() - committed)
        assert api.sessions()[-1][1]["session_id"] == f"{label}{n}"
    return latencies


def env_for(tmp_path, api, db_path, **extra):
    return learner_env(
        tmp_path,
        api.url,
        db_path,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=30,
        **extra,
    )


def status_json(env):
    return json.loads(run_learner(env, "status", "--json").stdout)


def test_symlinked_db_path_is_read_at_watch_speed(tmp_path, api):
    real = create_db(tmp_path / "real" / "memory_data.db")
    links = tmp_path / "dotfiles"
    links.mkdir()
    (links / "memory_data.db").symlink_to(os.path.relpath(real, links))
    # A relative part too: the configured path goes through "..".
    configured = tmp_path / "dotfiles" / ".." / "dotfiles" / "memory_data.db"
    env = env_for(tmp_path, api, configured)
    learner = start_learner(env)
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20)
        assert f"Watching {real.parent}" in output_of(learner), output_of(learner)
        latencies = delivery_latencies(api, real, "linked")
        print(f"FIGURE watch latency, symlinked db_path: {', '.join(f'{x:.2f}' for x in latencies)} s")
        assert max(latencies) < WATCH_SPEED_SECONDS, latencies
        assert status_json(env)["mode"] == "watch"
        code, out = stop(learner)
        assert code == 0, out
    finally:
        if learner.poll() is None:
            learner.kill()


def test_repointed_symlink_is_followed(tmp_path, api):
    first = create_db(tmp_path / "first" / "memory_data.db")
    second = create_db(tmp_path / "second" / "memory_data.db")
    link = tmp_path / "memory_data.db"
    link.symlink_to(first)
    env = env_for(tmp_path, api, link)
    learner = start_learner(env)
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20)
        assert max(delivery_latencies(api, first, "first", 1)) < WATCH_SPEED_SECONDS
        replacement = tmp_path / "memory_data.db.new"
        replacement.symlink_to(second)
        os.replace(replacement, link)  # as a dotfiles manager repoints it
        assert wait_until(lambda: f"now points to {second}" in output_of(learner), 10), output_of(learner)
        assert wait_until(lambda: f"Watching {second.parent}" in output_of(learner), 10), output_of(learner)
        latencies = delivery_latencies(api, second, "second")
        print(f"FIGURE watch latency after repointing the link: {', '.join(f'{x:.2f}' for x in latencies)} s")
        assert max(latencies) < WATCH_SPEED_SECONDS, latencies
        code, out = stop(learner)
        assert code == 0, out
    finally:
        if learner.poll() is None:
            learner.kill()


def test_deleted_and_recreated_directory_is_watched_again(tmp_path, api):
    db = create_db(tmp_path / "daemon" / "storage" / "memory_data.db")
    env = env_for(tmp_path, api, db)
    learner = start_learner(env)
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20)
        assert max(delivery_latencies(api, db, "before", 1)) < WATCH_SPEED_SECONDS
        shutil.rmtree(db.parent)
        assert wait_until(lambda: "was removed" in output_of(learner), 10), output_of(learner)
        assert wait_until(lambda: status_json(env)["mode"] == "poll", 10)
        report = status_json(env)
        assert "does not exist" in report["watch_problem"] or "removed" in report["watch_problem"], report
        create_db(db)  # the daemon creates its directory and database again
        assert wait_until(lambda: status_json(env)["mode"] == "watch", 15), output_of(learner)
        latencies = delivery_latencies(api, db, "after")
        print(
            f"FIGURE watch latency after the directory was deleted and created again: "
            f"{', '.join(f'{x:.2f}' for x in latencies)} s"
        )
        assert max(latencies) < WATCH_SPEED_SECONDS, latencies
        # Deleted and created again between two checks: a new inode, a new watch.
        shutil.rmtree(db.parent)
        create_db(db)
        assert wait_until(
            lambda: (
                "was removed and created again" in output_of(learner) or output_of(learner).count("was removed") >= 2
            ),
            10,
        ), output_of(learner)
        assert wait_until(lambda: status_json(env)["mode"] == "watch", 15)
        latencies = delivery_latencies(api, db, "again")
        assert max(latencies) < WATCH_SPEED_SECONDS, latencies
        code, out = stop(learner)
        assert code == 0, out
    finally:
        if learner.poll() is None:
            learner.kill()


def test_poll_is_said_in_status_line_status_and_doctor_while_not_watching(tmp_path, api):
    db = tmp_path / "not-yet" / "memory_data.db"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    env = env_for(tmp_path, api, db, NOTIFY_SOCKET=str(tmp_path / "notify"))
    doctor_env = dict(env)
    del doctor_env["NOTIFY_SOCKET"]
    # Before it runs, doctor says what it would do.
    doctor = run_learner(doctor_env, "doctor", "--json")
    watching = [c for c in json.loads(doctor.stdout) if c["name"] == "watching"]
    assert watching and watching[0]["message"].startswith("poll mode") and "does not exist" in watching[0]["message"]
    learner = start_learner(env)

    def status_lines():
        lines = []
        while True:
            try:
                message = notify.recv(4096).decode()
            except OSError:
                return lines
            lines += [line for line in message.splitlines() if line.startswith("STATUS=")]

    try:
        assert wait_until(lambda: any("poll mode" in line for line in status_lines()), 20)
        report = status_json(doctor_env)
        assert report["mode"] == "poll" and "does not exist" in report["watch_problem"], report
        human = run_learner(doctor_env, "status").stdout
        assert "poll mode (directory" in human, human
        checks = {c["name"]: c for c in json.loads(run_learner(doctor_env, "doctor", "--json").stdout)}
        assert checks["watching"]["level"] == "warning"
        assert "the running service is not watching" in checks["watching"]["message"]
        create_db(db)
        assert wait_until(lambda: any("watch mode" in line for line in status_lines()), 20)
        assert status_json(doctor_env)["mode"] == "watch"
        checks = {c["name"]: c for c in json.loads(run_learner(doctor_env, "doctor", "--json").stdout)}
        assert checks["watching"]["level"] == "ok" and "watch mode" in checks["watching"]["message"]
        code, out = stop(learner)
        assert code == 0, out
    finally:
        notify.close()
        if learner.poll() is None:
            learner.kill()


def test_check_notices_repointing_and_a_recreated_directory_in_process(tmp_path):
    from omnimemory_learner.watching import DatabaseWatcher

    first = create_db(tmp_path / "a" / "memory_data.db")
    second = create_db(tmp_path / "b" / "memory_data.db")
    link = tmp_path / "link.db"
    link.symlink_to(first)
    watcher = DatabaseWatcher(link, lambda: None)
    try:
        assert watcher.start() and watcher.directory == first.parent and watcher.check()
        link.unlink()
        link.symlink_to(second)
        assert not watcher.check() and "now points to" in watcher.reason and not watcher.active
        assert watcher.start() and watcher.directory == second.parent and watcher.check()
        shutil.rmtree(second.parent)
        create_db(second)  # the same path, a new directory (often with the same inode number)
        assert wait_until(lambda: not watcher.check(), 5) and "was removed" in watcher.reason
        assert watcher.start() and watcher.check()
        shutil.rmtree(second.parent)
        assert wait_until(lambda: not watcher.check(), 5) and "was removed" in watcher.reason
        assert not watcher.start() and "does not exist yet" in watcher.reason
    finally:
        watcher.stop()


@pytest.mark.parametrize("problem", ["no table", "a view", "corrupt"])
def test_a_database_with_a_problem_does_not_wake_the_watcher_with_our_own_reads(tmp_path, problem):
    """Hostile review: each read-only opening made inotify 'opened'/'closed_no_write' events, which
    woke the loop to read again: a core spun while the database had no events table."""
    directory = tmp_path / "db"
    directory.mkdir()
    db = directory / "memory_data.db"
    connection = sqlite3.connect(str(db))
    if problem == "a view":
        connection.execute("CREATE TABLE other (x)")
        connection.execute("CREATE VIEW events AS SELECT x AS timestamp, x AS event_type, x AS session_id FROM other")
    elif problem == "no table":
        connection.execute("CREATE TABLE other (x)")
    connection.commit()
    connection.close()
    if problem == "corrupt":
        db.write_bytes(b"not a database at all" * 100)
    env = learner_env(tmp_path, "http://127.0.0.1:9", db, OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=30)
    learner = start_learner(env, "run")
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20), output_of(learner)
        time.sleep(1.0)
        before = cpu_seconds(learner.pid)
        time.sleep(5.0)
        used = cpu_seconds(learner.pid) - before
        assert used < 0.5, f"{used:.2f} CPU s in 5 s"
    finally:
        stop(learner)
