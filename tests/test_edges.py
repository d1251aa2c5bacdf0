"""The OS edges: sd_notify over real AF_UNIX sockets, journald formatting,
the file watcher and its fallback, signals."""

import io
import logging
import os
import socket
import sys
import threading
import time

import pytest
from helpers import create_db, insert_events, learner_env, start_learner, stop

from omnimemory_learner.logs import JournaldFormatter, print_error, setup_logging, under_journald
from omnimemory_learner.system.notify import Notifier, ascii_text
from omnimemory_learner.watching import RECHECK_OFFSETS, DatabaseWatcher, RecheckSchedule

# -- notify ---------------------------------------------------------------------------

def datagram_socket(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_outside_systemd_notify_is_a_silent_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    assert notifier.failures == 0 and notifier.watchdog_interval is None


def test_notify_on_a_path_socket_sends_ascii_status(tmp_path):
    path = str(tmp_path / "notify")
    sock = datagram_socket(path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("starting")
    assert sock.recv(4096).decode() == f"READY=1\nSTATUS=starting\nMAINPID={os.getpid()}"
    assert notifier.status("caf\u00e9 \u2603 learned\n3")
    assert sock.recv(4096) == b"STATUS=caf? ? learned 3"
    for call, expected in ((notifier.reloading, b"RELOADING=1"), (notifier.stopping, b"STOPPING=1"),
                           (notifier.watchdog, b"WATCHDOG=1")):
        assert call()
        assert sock.recv(4096) == expected
    sock.close()


def test_notify_on_an_abstract_socket():
    name = f"omnimemory-learner-test-{os.getpid()}"
    sock = datagram_socket("\0" + name)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert notifier.watchdog()
    assert sock.recv(64) == b"WATCHDOG=1"
    sock.close()


def test_notify_failures_are_counted_and_it_reconnects(tmp_path, caplog):
    path = str(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    with caplog.at_level(logging.WARNING):
        assert notifier.watchdog() is False  # nobody listens yet
    assert notifier.failures == 1 and "Cannot notify the service manager" in caplog.text
    sock = datagram_socket(path)
    assert notifier.watchdog() and sock.recv(64) == b"WATCHDOG=1"
    # The manager's socket goes away and comes back (a new inode at the same path).
    sock.close()
    os.unlink(path)
    sock = datagram_socket(path)
    assert notifier.watchdog() and sock.recv(64) == b"WATCHDOG=1"
    sock.close()


def test_watchdog_interval_is_half_and_only_for_our_pid():
    base = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "20000000"}
    assert Notifier(base).watchdog_interval == 10.0
    assert Notifier(dict(base, WATCHDOG_PID=str(os.getpid()))).watchdog_interval == 10.0
    assert Notifier(dict(base, WATCHDOG_PID="1")).watchdog_interval is None
    assert Notifier(dict(base, WATCHDOG_USEC="bogus")).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "20000000"}).watchdog_interval is None


def test_ascii_text_is_bounded():
    assert ascii_text("x" * 1000) == "x" * 200


# -- logging ----------------------------------------------------------------------------

def test_journald_formatter_prefixes_every_line_including_tracebacks():
    formatter = JournaldFormatter("%(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed\nsecond line", None, sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines)
    assert lines[0] == "<3>failed" and any("ValueError: boom" in line for line in lines)
    for level, prefix in ((logging.WARNING, "<4>"), (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
                          (logging.CRITICAL, "<2>")):
        record = logging.LogRecord("x", level, __file__, 1, "m", None, None)
        assert formatter.format(record) == prefix + "m"


def test_journal_stream_detection_and_modes(tmp_path):
    stream = open(tmp_path / "stderr", "w")
    st = os.fstat(stream.fileno())
    assert under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not under_journald(stream, {"JOURNAL_STREAM": "1:2"})
    assert not under_journald(stream, {})
    assert not under_journald(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    root = logging.getLogger()
    level = root.level
    try:
        out = io.StringIO()
        mode = setup_logging("INFO", tmp_path / "logs" / "l.log", {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                             stderr=stream, stdout=out)
        assert mode == "journald"
        logging.getLogger("t").warning("to the journal")
        stream.flush()
        assert (tmp_path / "stderr").read_text() == "<4>to the journal\n"
        assert out.getvalue() == "" and not (tmp_path / "logs").exists()
        print_error("bad config", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        stream.flush()
        assert (tmp_path / "stderr").read_text().endswith("<3>bad config\n")
        mode = setup_logging("INFO", tmp_path / "logs" / "l.log", {}, stderr=stream, stdout=out)
        assert mode == "file"
        logging.getLogger("t").info("to the file")
        line = (tmp_path / "logs" / "l.log").read_text()
        assert line.endswith(" - INFO - to the file\n") and line[:4].isdigit()
        assert "to the file" in out.getvalue()
        assert oct(os.stat(tmp_path / "logs" / "l.log").st_mode & 0o777) == "0o600"
    finally:
        for handler in list(root.handlers):
            if getattr(handler, "_omnimemory_learner", False):
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        stream.close()


# -- watching ---------------------------------------------------------------------------

def test_recheck_schedule_restarts_with_each_event():
    schedule = RecheckSchedule()
    assert schedule.next_due() is None and not schedule.take_due(100.0)
    schedule.on_event(10.0)
    assert schedule.next_due() == pytest.approx(10.001)
    assert not schedule.take_due(10.0)
    assert schedule.take_due(10.03)  # 1, 5 and 20 ms are due
    assert schedule.next_due() == pytest.approx(10.05)
    schedule.on_event(20.0)
    assert schedule.next_due() == pytest.approx(20.001)
    assert schedule.take_due(25.0) and schedule.next_due() is None
    assert len(RECHECK_OFFSETS) == 7 and RECHECK_OFFSETS[-1] == 1.0


def test_watcher_wakes_only_for_the_database_files(tmp_path):
    db = create_db(tmp_path / "memory_data.db")
    woken = threading.Event()
    watcher = DatabaseWatcher(db, woken.set)
    assert watcher.start() and watcher.active
    try:
        (tmp_path / "unrelated.txt").write_text("x")
        (tmp_path / "memory_data.db.bak").write_text("x")
        assert not woken.wait(0.5)
        insert_events(db, [("2025-11-08T05:00:00", "file_open", "s")])
        assert woken.wait(2)
    finally:
        watcher.stop()
    assert not watcher.active


def test_watcher_falls_back_when_the_directory_is_missing_or_the_observer_dies(tmp_path):
    watcher = DatabaseWatcher(tmp_path / "later" / "memory_data.db", lambda: None)
    assert not watcher.start()
    assert "does not exist yet" in watcher.reason
    (tmp_path / "later").mkdir()
    assert watcher.start()
    watcher._observer.stop()  # the observer thread dies
    watcher._observer.join(2)
    assert watcher.check() is False and watcher.reason == "the file watcher stopped"


def test_network_filesystems_are_polled(tmp_path, monkeypatch):
    import omnimemory_learner.watching as watching
    monkeypatch.setattr(watching, "filesystem_type", lambda path: "nfs4")
    watcher = DatabaseWatcher(tmp_path / "memory_data.db", lambda: None)
    assert not watcher.start() and "network file system (nfs4)" in watcher.reason


def test_poll_only_when_the_watcher_cannot_start(tmp_path):
    """The service says so in its log and still reads on the poll interval."""
    from helpers import RecordingAPI
    api = RecordingAPI().start()
    try:
        db = tmp_path / "missing-dir" / "memory_data.db"
        env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="0.5",
                          OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.01")
        learner = start_learner(env)
        time.sleep(1.0)
        create_db(db)
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        insert_events(db, [(now, "file_open", "p"), (now, "code_edit", "p"), (now, "file_save", "p")])
        assert api.wait_for(1, timeout=20)
        code, out = stop(learner)
        assert code == 0
        assert "polling every 0.5 s instead" in out
        assert "Watching" in out  # watching resumed once the directory appeared
    finally:
        api.stop()


def test_sigterm_during_a_backlog_exits_promptly_and_cleanly(tmp_path):
    from helpers import RecordingAPI
    api = RecordingAPI().start()
    try:
        db = create_db(tmp_path / "db" / "memory_data.db")
        insert_events(db, [("2025-11-08T05:00:00", "file_open", f"s{i % 500}") for i in range(200_000)])
        env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_BATCH_SIZE="100")
        learner = start_learner(env)
        time.sleep(1.5)
        started = time.monotonic()
        code, out = stop(learner, timeout=20)
        assert code == 0, out
        assert time.monotonic() - started < 5
        assert "Workflow learner stopped" in out
    finally:
        api.stop()
