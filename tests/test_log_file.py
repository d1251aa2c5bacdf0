"""The log file holds session ids and commands: it is 0600 however it comes to be made."""

import os
import stat
import time

from helpers import IDLE_MINUTES, create_db, insert_events, learner_env, output_of, start_learner, stop, wait_until


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_log_file_removed_under_the_service_comes_back_0600(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES)
    log_file = tmp_path / "learner.log"
    # umask 022, as by hand or under launchd (the agent sets none): a plain open() would make it 0644.
    learner = start_learner(env, preexec_fn=lambda: os.umask(0o022))
    try:
        assert wait_until(lambda: log_file.exists() and "Procedural API" in log_file.read_text(), timeout=30)
        assert _mode(log_file) == 0o600
        log_file.unlink()  # by hand, or a logrotate without `create`
        # A session to learn: its log lines make the file again (a reload would also chmod it).
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        insert_events(db, [(now, "file_open", "s"), (now, "code_edit", "s"), (now, "file_save", "s")])
        assert api.wait_for(1, timeout=30)
        assert wait_until(lambda: log_file.exists() and "Learning from session" in log_file.read_text()), output_of(
            learner
        )
        assert _mode(log_file) == 0o600
    finally:
        code, out = stop(learner)
    assert code == 0, out
