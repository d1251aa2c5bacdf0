"""The OS edges: sd_notify over real AF_UNIX sockets, journald's native and
stream protocols, log lines that untrusted text cannot forge, the file
watcher and its fallback, signals."""

import array
import fcntl
import io
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest
from helpers import create_db, insert_events, learner_env, start_learner, stop

from omnimemory_learner.logs import (
    JournaldFormatter,
    JournalHandler,
    ShownFormatter,
    print_error,
    setup_logging,
    under_journald,
)
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
    for call, expected in (
        (notifier.reloading, b"RELOADING=1"),
        (notifier.stopping, b"STOPPING=1"),
        (notifier.watchdog, b"WATCHDOG=1"),
    ):
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
    for level, prefix in (
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
        (logging.CRITICAL, "<2>"),
    ):
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
        # No journal socket there: the stream protocol, a priority on every line.
        mode = setup_logging(
            "INFO",
            tmp_path / "logs" / "l.log",
            {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stderr=stream,
            stdout=out,
            journal_socket=str(tmp_path / "no-journal"),
        )
        assert mode == "journald"
        logging.getLogger("t").warning("to the journal")
        stream.flush()
        assert (tmp_path / "stderr").read_text() == "<4>to the journal\n"
        assert out.getvalue() == "" and not (tmp_path / "logs").exists()
        logging.getLogger("t").warning("id %s", "evil\n<3>Fake\x1b[31m")
        stream.flush()
        assert (tmp_path / "stderr").read_text().endswith("<4>id evil\\n<3>Fake\\x1b[31m\n")
        print_error("bad config", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        print_error("bad path /tmp/x\n<6>ok", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        stream.flush()
        assert (tmp_path / "stderr").read_text().endswith("<3>bad config\n<3>bad path /tmp/x\\n<6>ok\n")
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


# Ids a tool may write into the daemon's database, and answers anything on the API's port may give.
HOSTILE = [
    "evil\n2026-11-24 07:00:00 - ERROR - Fake: credentials leaked\x1b[31m",
    "nul\x00byte",
    "sep\u2028arator",
    "\u202eright-to-left",
    "<2>\n<3>forged priority",
    "back\\slash\r\n",
    "k" * 10_000,
]
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - ")


def unsafe_characters(text):
    """Characters of `text` that a terminal would not show as themselves (line breaks aside)."""
    return [
        char
        for char in text
        if char != "\n"
        and (
            unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
            or (unicodedata.category(char) == "Zs" and char != " ")
        )
    ]


@pytest.fixture
def own_handlers():
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_omnimemory_learner", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_every_argument_and_exception_message_is_escaped_and_numbers_still_format():
    formatter = ShownFormatter("%(levelname)s %(message)s")
    args = (HOSTILE[0], 3, 1.5, Path("/tmp/a\nb"), None)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "s=%s n=%d f=%.1f p=%s none=%s", args, None)
    text = formatter.format(record)
    assert text == (
        "INFO s=evil\\n2026-11-24 07:00:00 - ERROR - Fake: credentials leaked\\x1b[31m n=3 f=1.5 p=/tmp/a\\nb none=None"
    )
    assert record.args == args and record.getMessage().count("\n") == 2  # other handlers see the record as it was
    mapping = logging.LogRecord("x", logging.INFO, __file__, 1, "%(sid)s/%(n)d", ({"sid": "a\x1bb", "n": 7},), None)
    assert formatter.format(mapping) == "INFO a\\x1bb/7"
    odd = logging.LogRecord("x", logging.INFO, __file__, 1, ValueError("not\na template"), None, None)
    assert formatter.format(odd) == "INFO not\\na template"
    repr_record = logging.LogRecord("x", logging.INFO, __file__, 1, "%r", (Path("a\u202eb"),), None)
    assert "\u202e" not in formatter.format(repr_record)


def test_a_traceback_keeps_its_frames_and_escapes_the_exception_messages():
    formatter = ShownFormatter("%(message)s")
    try:
        try:
            raise KeyError("inner\n2026-11-24 07:00:00 - ERROR - Fake")
        except KeyError as inner:
            raise ValueError(HOSTILE[0]) from inner
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "Delivery failed for %s", ("s\x1b",), sys.exc_info()
        )
    lines = formatter.format(record).splitlines()
    assert lines[0] == "Delivery failed for s\\x1b"
    assert sum(line == "Traceback (most recent call last):" for line in lines) == 2
    assert "The above exception was the direct cause of the following exception:" in lines
    assert any(line.startswith("ValueError: evil\\n2026-11-24 07:00:00 - ERROR - Fake") for line in lines)
    assert any(line.startswith("KeyError: 'inner\\\\n2026") for line in lines)  # KeyError shows its repr
    assert not any(line.startswith("2026-11-24") for line in lines)
    assert any(__file__ in line for line in lines)  # frames are there, as Python prints them
    assert unsafe_characters("\n".join(lines)) == []


def test_log_file_and_console_get_one_line_per_record_whatever_the_text(tmp_path, own_handlers):
    out = io.StringIO()
    assert setup_logging("INFO", tmp_path / "l.log", {}, stderr=io.StringIO(), stdout=out) == "file"
    log = logging.getLogger("omnimemory_learner.delivery")
    for sid in HOSTILE:
        log.info("Learning from session %s: %d commands, outcome=%s", sid, 3, "success")
        log.error("Procedural API rejected session %s; kept as rejected: %s", sid, f"HTTP 422: {sid}")
    for text in ((tmp_path / "l.log").read_text(encoding="utf-8"), out.getvalue()):
        lines = text.splitlines()
        assert len(lines) == 2 * len(HOSTILE)
        assert all(LINE_START.match(line) for line in lines), lines
        assert [line.split(" - ")[1] for line in lines] == ["INFO", "ERROR"] * len(HOSTILE)
        assert unsafe_characters(text) == []
        assert "\r" not in text and "\u2028" not in text
        assert "...[9000 more characters]" in text  # the 10 kB id is cut with a mark


def parse_journal_entry(data):
    """The native protocol read back: {name: [values]}, by the document's rules."""
    fields = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            at = end + 1
        else:
            name = line
            size = struct.unpack("<Q", data[end + 1 : end + 9])[0]
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            at = end + 10 + size
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", name), name
        fields.setdefault(name.decode(), []).append(value)
    return fields


@pytest.fixture
def journal_socket(tmp_path):
    path = str(tmp_path / "journal-socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def receive_entry(sock):
    """One datagram; an empty one carrying a memfd is read from the memfd (with its seals)."""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(16 * 1024 * 1024, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not fds:
        return data, None
    assert data == b"" and len(fds) == 1
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), seals
    finally:
        os.close(fd)


def test_native_journal_protocol_one_datagram_per_record(journal_socket, own_handlers):
    path, sock = journal_socket
    handler = JournalHandler(path)
    handler.setFormatter(ShownFormatter("%(message)s"))
    assert sock.recv(10) == b""  # the probe: journald drops an empty datagram
    logger = logging.getLogger("omnimemory_learner.test_journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.setLevel(logging.DEBUG)
        logger.info("Learning from session %s", HOSTILE[0])
        try:
            raise RuntimeError("boom\n<2>forged")
        except RuntimeError:
            logger.exception("Delivery thread failed for %s", "<3>x\ny")
        logger.warning("multi-line template\nstays one entry")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    info, failure, warning = (parse_journal_entry(sock.recv(1 << 20)) for _ in range(3))
    assert info["MESSAGE"] == [
        b"Learning from session evil\\n2026-11-24 07:00:00 - ERROR - Fake: credentials leaked\\x1b[31m"
    ]
    assert info["PRIORITY"] == [b"6"] and info["SYSLOG_IDENTIFIER"] == [b"omnimemory-learner"]
    assert (
        info["CODE_FILE"] == [os.fsencode(__file__)]
        and info["CODE_FUNC"] == [b"test_native_journal_protocol_one_datagram_per_record"]
        and int(info["CODE_LINE"][0]) > 0
    )
    assert info["LOGGER"] == [b"omnimemory_learner.test_journal"]
    message = failure["MESSAGE"][0].decode()
    assert failure["PRIORITY"] == [b"3"] and message.startswith("Delivery thread failed for <3>x\\ny\nTraceback")
    assert message.endswith("RuntimeError: boom\\n<2>forged")
    assert warning["MESSAGE"] == [b"multi-line template\nstays one entry"] and warning["PRIORITY"] == [b"4"]


def test_an_entry_over_the_datagram_limit_goes_through_a_sealed_memfd(journal_socket):
    path, sock = journal_socket
    handler = JournalHandler(path)
    handler.setFormatter(ShownFormatter("%(message)s"))
    sock.recv(10)
    big = "line\n" * 2_400_000  # 12 MB: over any datagram the kernel allows here
    handler.emit(logging.LogRecord("x", logging.WARNING, __file__, 1, big, None, None))
    data, seals = receive_entry(sock)
    handler.close()
    assert seals is not None
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    fields = parse_journal_entry(data)
    assert fields["MESSAGE"] == [big.encode()] and fields["PRIORITY"] == [b"4"]


def test_without_a_memfd_a_large_entry_is_cut_with_a_mark(journal_socket, monkeypatch):
    path, sock = journal_socket
    handler = JournalHandler(path)
    handler.setFormatter(ShownFormatter("%(message)s"))
    sock.recv(10)

    def no_memfd(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    handler.emit(logging.LogRecord("x", logging.ERROR, __file__, 1, "é" * 6_000_000, None, None))
    data, seals = receive_entry(sock)
    handler.close()
    fields = parse_journal_entry(data)
    message = fields["MESSAGE"][0].decode()
    assert seals is None and fields["PRIORITY"] == [b"3"]
    assert message.startswith("é" * 1000) and message.endswith(f"...[{12_000_000 - 48 * 1024} more bytes]")


def test_setup_logging_uses_the_journal_socket_under_journald(tmp_path, journal_socket, own_handlers):
    path, sock = journal_socket
    stream = open(tmp_path / "stderr", "w")
    st = os.fstat(stream.fileno())
    try:
        mode = setup_logging(
            "INFO",
            tmp_path / "l.log",
            {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stderr=stream,
            stdout=io.StringIO(),
            journal_socket=path,
        )
        assert mode == "journald"
        sock.recv(10)
        logging.getLogger("t").error("rejected %s", "a\nb")
        fields = parse_journal_entry(sock.recv(1 << 16))
        assert fields["MESSAGE"] == [b"rejected a\\nb"] and fields["PRIORITY"] == [b"3"]
        stream.flush()
        assert (tmp_path / "stderr").read_text() == "" and not (tmp_path / "l.log").exists()
        # journald goes away (restarting): records go to the stream, a priority on each line.
        sock.close()
        os.unlink(path)
        logging.getLogger("t").warning("while away %s", "a\n<2>b")
        stream.flush()
        assert (tmp_path / "stderr").read_text() == "<4>while away a\\n<2>b\n"
    finally:
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
        env = learner_env(
            tmp_path,
            api.url,
            db,
            OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="0.5",
            OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.01",
        )
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
