"""Database faults, the writer's clock and the learner's own, and a suspend-like pause."""

import glob
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import (
    IDLE_MINUTES,
    SCHEMA_ID,
    SCHEMA_ROWID,
    WRITER,
    RecordingAPI,
    compare,
    create_db,
    delivered_once,
    free_port,
    insert_events,
    learner_env,
    pending,
    received,
    run_learner,
    start_learner,
    stop,
    true_sessions,
    wait_until,
)

from omnimemory_learner.storage.snapshot import read_snapshot


def stamp(offset=0.0):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + offset))


def burst(sid, offset=0.0, kinds=("file_open", "code_edit", "file_save")):
    return [(stamp(offset), kind, sid) for kind in kinds]


def service(tmp_path, api, db, **extra):
    settings = {"OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": IDLE_MINUTES, "OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS": 1}
    env = learner_env(tmp_path, api.url, db, **{**settings, **extra})
    return start_learner(env), env


def test_writer_holding_the_write_lock_for_10_seconds(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db", wal=False)  # rollback journal: the lock blocks readers
    learner, _ = service(tmp_path, api, db)
    insert_events(db, burst("before"))
    assert api.wait_for(1, timeout=20)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys, time\n"
                f"db = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "db.execute('BEGIN EXCLUSIVE')\n"
                "db.executemany('INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)',"
                f" {burst('during')!r})\n"
                "print('locked', flush=True)\n"
                "time.sleep(10)\n"
                "db.execute('COMMIT')\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    time.sleep(3)
    assert learner.poll() is None  # still running while locked out
    assert holder.wait(30) == 0
    assert api.wait_for(2, timeout=20)
    code, out = stop(learner)
    assert code == 0 and "is locked" in out
    assert [s[0] for s in received(api)] == ["before", "during"]


def test_wal_checkpointed_and_truncated_while_reading(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    base = time.time() - 7200
    insert_events(
        db,
        [
            (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(base + s * 1000 + i)), k, f"c{s}")
            for s in range(300)
            for i, k in enumerate(["file_open", "code_edit", "file_save"])
        ],
    )
    learner, _ = service(tmp_path, api, db, OMNIMEMORY_LEARNER_BATCH_SIZE=10)
    writer = sqlite3.connect(str(db), isolation_level=None)
    for _ in range(20):  # checkpoint and truncate the WAL while the learner reads in small batches
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        time.sleep(0.05)
    writer.close()
    assert api.wait_for(300, timeout=60)
    code, _ = stop(learner)
    assert code == 0 and len(api.sessions()) == 300


def test_corrupt_database_then_a_good_one_and_the_directory_deleted_and_recreated(tmp_path, api):
    directory = tmp_path / "db"
    directory.mkdir()
    db = directory / "memory_data.db"
    db.write_bytes(b"garbage, not SQLite" * 500)
    learner, _ = service(tmp_path, api, db)
    time.sleep(3)
    assert learner.poll() is None  # waiting, not crashing or looping
    os.unlink(db)
    create_db(db)
    insert_events(db, burst("good"))
    assert api.wait_for(1, timeout=20)
    shutil.rmtree(directory)
    time.sleep(1.5)
    create_db(db)
    insert_events(db, burst("again", 10))
    assert api.wait_for(2, timeout=30)
    code, out = stop(learner)
    assert code == 0
    assert out.count("is corrupt") == 1  # said once, not every poll
    assert [b["session_id"] for _, b in api.sessions()] == ["good", "again"]


def test_a_step_of_the_writers_clock_back_never_cuts_and_forward_cuts_one_session_per_id(tmp_path, api):
    """The rule, live: a step back never cuts; a step forward past the threshold cuts once."""
    db = create_db(tmp_path / "db" / "memory_data.db")
    learner, _ = service(tmp_path, api, db)
    time.sleep(1)
    steps = [  # (seconds the writer's clock is off, event type, id), committed one at a time
        (0, "file_open", "back"),
        (0, "code_edit", "back"),
        (-5 * 3600, "file_save", "back"),
        (0, "git_commit", "back"),
        (0, "file_open", "forward"),
        (0, "code_edit", "forward"),
        (0, "file_save", "forward"),
        (3 * 3600, "test_run", "forward"),
        (3 * 3600, "code_edit", "forward"),
        (0, "git_commit", "forward"),  # back from three hours ahead: no cut
    ]
    for offset, kind, sid in steps:
        insert_events(db, [(stamp(offset), kind, sid)])
        time.sleep(0.2)
    assert api.wait_for(3, timeout=20)
    time.sleep(2)
    code, _ = stop(learner)
    assert code == 0
    assert received(api) == [
        ("back", ("open_file", "edit_code", "save_file", "commit_changes"), "success"),
        ("forward", ("open_file", "edit_code", "save_file"), "success"),
        ("forward", ("run_tests", "edit_code", "commit_changes"), "success"),
    ]


def libfaketime():
    found = sorted(
        glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
        + glob.glob("/usr/lib/faketime/libfaketime.so.1")
        + glob.glob("/usr/local/lib/faketime/libfaketime.so.1")
    )
    if not found:
        pytest.skip("libfaketime is not installed (Debian: apt-get install faketime)")
    return found[0]


def head_rowid(db):
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute("SELECT max(rowid) FROM events").fetchone()[0] or 0
    finally:
        conn.close()


def test_the_learners_own_wall_clock_jumping_by_hours_neither_cuts_nor_loses(tmp_path):
    """The machine's clock as the learner sees it jumps; the writer keeps true time.

    libfaketime moves only CLOCK_REALTIME (as settimeofday would), reading the
    offset from a file the test rewrites while events are being written.
    """
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    port = free_port()
    api = RecordingAPI(port).start()
    db = tmp_path / "db" / "memory_data.db"
    db.parent.mkdir()
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
        LD_PRELOAD=libfaketime(),
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    learner = start_learner(env)
    try:
        writer = subprocess.Popen([sys.executable, WRITER, str(db), "33", "200"], stdout=subprocess.PIPE, text=True)

        def learners_clock_ahead():
            snapshot = read_snapshot(tmp_path / "state")
            return snapshot and snapshot.get("updated_at", 0) - time.time()

        heads = []
        for jump, seen in (
            ("+3h", lambda ahead: ahead > 3 * 3600 - 60),
            ("-5h", lambda ahead: ahead < -5 * 3600 + 60),
            ("+0", lambda ahead: abs(ahead) < 60),
        ):
            offset.write_text(jump + "\n")
            # The learner's own clock really moved (its snapshot says so), while it went on working.
            assert wait_until(lambda: seen(learners_clock_ahead() or 0), 20), (jump, learners_clock_ahead())
            heads.append(head_rowid(db))
            time.sleep(1.5)
        assert writer.wait(300) == 0
        assert head_rowid(db) > heads[0], "the writer had finished before the clock jumped"
        truth = true_sessions(db)
        assert wait_until(lambda: len(delivered_once(api)[0]) >= len(truth) and pending(tmp_path / "state") == 0, 60)
        time.sleep(IDLE_MINUTES * 60 + 0.5)
        code, _ = stop(learner)
        assert code == 0
        unique, resent = delivered_once(api)
        figures = compare(truth, unique)
        print(
            f"\nFIGURE own-clock: {figures['sessions']} sessions, lost={figures['lost']}, "
            f"unexpected={figures['unexpected']}, resent={resent}"
        )
        assert figures["lost"] == 0 and figures["unexpected"] == 0, figures["detail"]
        assert resent == 0 and len(truth) > 20
    finally:
        if learner.poll() is None:
            learner.kill()
        api.stop()


def test_a_pause_longer_than_the_idle_threshold_neither_loses_nor_cuts(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, burst("paused", kinds=("file_open", "code_edit")))
    # Neither a file event nor a poll may come to the rescue: after the pause,
    # reaching the idle deadline alone must make it read before it closes.
    learner, _ = service(
        tmp_path,
        api,
        db,
        OMNIMEMORY_LEARNER_WATCH="false",
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=60,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=0.1,
    )
    time.sleep(2.5)  # started; its first poll read the session's first two events
    learner.send_signal(signal.SIGSTOP)
    # Suspended for 9 s, past the 6 s idle deadline, while the user goes on (no gap of 6 s).
    for kind in ("file_save", "test_run", "code_edit", "git_commit", "file_save"):
        time.sleep(1.8)
        insert_events(db, [(stamp(), kind, "paused")])
    learner.send_signal(signal.SIGCONT)
    assert api.wait_for(1, timeout=20), "the session was cut in two"
    code, _ = stop(learner)
    assert code == 0
    assert received(api) == [
        (
            "paused",
            ("open_file", "edit_code", "save_file", "run_tests", "edit_code", "commit_changes", "save_file"),
            "success",
        )
    ]


# -- a replaced, restored or wiped database (issue 17): every session reaches the API once ----------


def copy_over_itself(db):
    """What a sync tool or an editor does: a new inode holding the same rows (another process)."""
    subprocess.run(["sh", "-c", 'cp "$0" "$0.t" && mv "$0.t" "$0"', str(db)], check=True)


def each_once(api):
    """Session ids the API got, asserting that no content key and no session arrived twice."""
    keys = [key for key, _ in api.sessions()]
    ids = [body["session_id"] for _, body in api.sessions()]
    assert len(set(keys)) == len(keys), f"a key was sent twice: {ids}"
    assert len(set(ids)) == len(ids), f"a session was sent twice: {ids}"
    return sorted(ids)


def backfill(env):
    return subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "backfill", "--until-delivered-timeout", "20"],
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_database_copied_over_itself_while_stopped_then_a_backfill_sends_nothing_again(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, [event for n in range(5) for event in burst(f"s{n}", -600 + 60 * n)])
    learner, env = service(tmp_path, api, db)
    assert api.wait_for(5, timeout=30)
    assert stop(learner)[0] == 0
    copy_over_itself(db)
    done = backfill(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "was replaced by a copy" in done.stdout + done.stderr
    assert each_once(api) == [f"s{n}" for n in range(5)]


def test_the_database_copied_over_itself_while_running_then_new_activity(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, [event for n in range(5) for event in burst(f"s{n}", -600 + 60 * n)])
    learner, env = service(tmp_path, api, db)
    assert api.wait_for(5, timeout=30)
    copy_over_itself(db)
    time.sleep(3)  # a poll or two on the copy
    insert_events(db, burst("after"))
    assert api.wait_for(6, timeout=30)
    time.sleep(2)  # nothing more comes
    code, out = stop(learner)
    assert code == 0 and "was replaced by a copy" in out and "continuing from rowid 15" in out
    assert "different history" not in out
    assert each_once(api) == ["after"] + [f"s{n}" for n in range(5)]
    shown = run_learner(env, "status").stdout
    assert "Replaced: by a copy with the same rows" in shown and "continued from rowid 15" in shown
    assert "database replaced" in run_learner(env, "doctor").stdout


def test_an_older_backup_restored_while_stopped_then_new_activity(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, [event for n in range(2) for event in burst(f"old{n}", -900 + 60 * n)])
    learner, _ = service(tmp_path, api, db)
    assert api.wait_for(2, timeout=30)
    backup = tmp_path / "backup.db"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; s = sqlite3.connect(sys.argv[1]); "
            "d = sqlite3.connect(sys.argv[2]); s.backup(d); d.close(); s.close()",
            str(db),
            str(backup),
        ],
        check=True,
    )
    insert_events(db, [event for n in range(2, 5) for event in burst(f"old{n}", -900 + 60 * n)])
    assert api.wait_for(5, timeout=30)
    assert stop(learner)[0] == 0
    # The backup restored as one should (without the old file's WAL): rowids are reused from here on.
    subprocess.run(["sh", "-c", 'rm -f "$1-wal" "$1-shm" && mv "$0" "$1"', str(backup), str(db)], check=True)
    insert_events(db, [event for n in range(3) for event in burst(f"new{n}", -300 + 60 * n)])
    learner, env = service(tmp_path, api, db)
    assert api.wait_for(8, timeout=30)
    time.sleep(2)  # nothing more comes
    code, out = stop(learner)
    assert code == 0 and "was replaced by a different history" in out
    assert each_once(api) == [f"new{n}" for n in range(3)] + [f"old{n}" for n in range(5)]
    shown = run_learner(env, "status").stdout
    assert (
        "Replaced: by a different history" in shown and "2 not sent again (delivered before)" in shown
    )  # old0, old1: what the backup held
    doctor = run_learner(env, "doctor").stdout
    assert "database replaced" in doctor and "by a different history" in doctor


@pytest.mark.parametrize("schema", [SCHEMA_ROWID, SCHEMA_ID], ids=["rowid", "autoincrement"])
def test_the_table_wiped_while_stopped_then_new_activity_past_the_old_position(tmp_path, api, schema):
    db = create_db(tmp_path / "db" / "memory_data.db", schema=schema)
    insert_events(db, [event for n in range(5) for event in burst(f"old{n}", -900 + 60 * n)])
    learner, _ = service(tmp_path, api, db)
    assert api.wait_for(5, timeout=30)
    assert stop(learner)[0] == 0
    # Emptied in place (the same inode): rowids start again at 1.
    subprocess.run(["sqlite3", str(db), "DELETE FROM events; VACUUM;"], check=True)
    # 21 rows, past the old position 15: from rowid 1 in a plain rowid table; from 16 with AUTOINCREMENT,
    # where nothing is reused and the rows read before are simply gone.
    insert_events(db, [event for n in range(7) for event in burst(f"new{n}", -300 + 30 * n)])
    learner, _ = service(tmp_path, api, db)
    assert api.wait_for(12, timeout=30)
    time.sleep(2)  # nothing more comes
    code, out = stop(learner)
    assert code == 0
    if schema == SCHEMA_ROWID:
        assert "was replaced by a different history" in out
    else:
        assert "different history" not in out
    assert each_once(api) == [f"new{n}" for n in range(7)] + [f"old{n}" for n in range(5)]
