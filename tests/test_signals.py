"""Signals against a real learner process: storms of SIGHUP, then SIGTERM.

The old handlers called threading.Event.set(), which takes the lock the main
thread holds inside Event.wait(): a SIGHUP landing there re-entered the
handler until a RecursionError killed the service.  Now a handler only sets a
flag and the wake-up byte comes from signal.set_wakeup_fd.
"""

from __future__ import annotations

import os
import signal
import time

from helpers import IDLE_MINUTES, create_db, insert_events, learner_env, output_of, start_learner, stop, wait_until

ROUNDS = int(os.environ.get("SIGNAL_ROUNDS", "12"))


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def test_sighup_storms_then_sigterm_exit_0_every_round(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    config = tmp_path / "learner.toml"
    config.write_text("min_commands_for_learning = 3\n")
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=0.2,
    )
    sent_total = 0
    for round_number in range(ROUNDS):
        learner = start_learner(env, "--config", str(config))
        try:
            assert wait_until(lambda: "Watching" in output_of(learner), 20), output_of(learner)
            # A round's events: the service must go on reading between the reloads.
            base = time.time() - 3600 * (round_number + 2)
            insert_events(
                db,
                [
                    (stamp(base + i), kind, f"round{round_number}")
                    for i, kind in enumerate(["file_open", "code_edit", "file_save"])
                ],
            )
            storm_end = time.monotonic() + 1.5
            sent = 0
            while time.monotonic() < storm_end:
                # Bursts as fast as kill(2) goes, with a varying pause: signals
                # land in the wait, in a reload, in a read, in logging.
                for _ in range(50 + round_number * 10):
                    os.kill(learner.pid, signal.SIGHUP)
                    sent += 1
                time.sleep(0.001 * (round_number % 4))
            sent_total += sent
            assert learner.poll() is None, f"died in round {round_number}: {output_of(learner)[-3000:]}"
            # Still reading and delivering after the storm.
            assert api.wait_for(round_number + 1, timeout=20), output_of(learner)[-3000:]
            learner.send_signal(signal.SIGTERM)
            code = learner.wait(20)
            out = output_of(learner)
            assert code == 0, f"round {round_number}: exit {code}\n{out[-3000:]}"
            assert "Traceback" not in out and "RecursionError" not in out, out[-3000:]
            reloads = out.count("Reloading the configuration")
            # Coalesced: at most one reload per pass of the loop, never one per signal.
            assert 1 <= reloads < sent, (reloads, sent)
            assert "Workflow learner stopped" in out
        finally:
            if learner.poll() is None:
                learner.kill()
                learner.wait()
    assert len(api.sessions()) == ROUNDS
    print(f"FIGURE signals: {ROUNDS} rounds, {sent_total} SIGHUPs, every round exit 0")


def test_sigterm_inside_a_sighup_storm_exits_0(tmp_path, api):
    """SIGTERM while SIGHUPs still arrive: it stops, with 0, within the grace."""
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, api.url, db)
    learner = start_learner(env)
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20)
        for _ in range(500):
            os.kill(learner.pid, signal.SIGHUP)
        os.kill(learner.pid, signal.SIGTERM)
        for _ in range(500):
            if learner.poll() is not None:
                break
            try:
                os.kill(learner.pid, signal.SIGHUP)
            except ProcessLookupError:
                break
        assert learner.wait(20) == 0, output_of(learner)[-3000:]
        assert "Traceback" not in output_of(learner)
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()


def test_the_delivery_thread_wakes_the_loop_to_refresh_status(tmp_path, api):
    """STATUS= says "1 learned" about a second after the POST, not at the next 5 s refresh."""
    import socket

    db = create_db(tmp_path / "db" / "memory_data.db")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.05)
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        NOTIFY_SOCKET=str(tmp_path / "notify"),
    )
    learner = start_learner(env)
    learned_after = []
    try:
        assert wait_until(lambda: "Watching" in output_of(learner), 20)
        for n in range(3):
            before = len(api.sessions())
            insert_events(db, [(stamp(time.time()), kind, f"d{n}") for kind in ("file_open", "code_edit", "file_save")])
            assert api.wait_for(before + 1, 20)
            posted = time.monotonic()
            while time.monotonic() - posted < 10:
                try:
                    message = notify.recv(4096).decode()
                except OSError:
                    continue
                if f"{n + 1} learned" in message:
                    learned_after.append(time.monotonic() - posted)
                    break
            time.sleep(5.5 * (n % 2))  # land at different points of the 5 s refresh
        print(f"FIGURE status after delivery: {', '.join(f'{x:.2f}' for x in learned_after)} s")
        assert len(learned_after) == 3 and max(learned_after) < 2.5, learned_after
        assert stop(learner)[0] == 0
    finally:
        notify.close()
        if learner.poll() is None:
            learner.kill()
