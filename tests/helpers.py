"""Real parts for the tests: an events database written by a real SQLite
writer, and a recording procedural API on 127.0.0.1."""

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from reference import reference_outcome

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP, command_pairs
from omnimemory_learner.core.sessions import SessionTracker
from omnimemory_learner.events import validate_rows

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

SCHEMA_ID = """CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT, event_type TEXT, session_id TEXT, payload BLOB)"""
SCHEMA_ROWID = "CREATE TABLE IF NOT EXISTS events (timestamp TEXT, event_type TEXT, session_id TEXT, payload BLOB)"


def create_db(path, wal=True, schema=SCHEMA_ID):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path))
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute(schema)
    db.commit()
    db.close()
    return path


def insert_events(path, events, synchronous="NORMAL"):
    """events: (timestamp, event_type, session_id) tuples, written in one transaction."""
    db = sqlite3.connect(str(path), timeout=30)
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executemany(
        "INSERT INTO events (timestamp, event_type, session_id, payload) VALUES (?, ?, ?, x'00ff')",
        list(events),
    )
    db.commit()
    db.close()


def load_0_1_0(state_dir):
    """state.db and history.db as 0.1.0's code left them (tests/fixtures/make_0_1_0_stores.py)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for name in ("state", "history"):
        dump = (FIXTURES / f"{name}-0.1.0.sql").read_text()
        assert dump.startswith("-- made by omnimemory-learner 0.1.0, commit a93632d")
        connection = sqlite3.connect(str(state_dir / f"{name}.db"))
        connection.executescript(dump)
        connection.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingAPI:
    """A real HTTP server on 127.0.0.1 that records every POST /learn.

    `script` is a list of behaviours consumed one per POST (then `default`):
    an int status, ("status", code, body), ("delay", seconds), ("garbage", text),
    and answers that misbehave:
    ("headers", code, {name: value}, body)   any status with extra headers (Retry-After, Location)
    ("huge", code, nbytes)                   a body of nbytes, streamed in 64 KiB writes
    ("drip", code, nbytes, interval)         a body of nbytes, one byte every `interval` seconds
    ("drip_head", interval)                  the status line and headers, one byte every `interval`
    ("silent", seconds)                      no answer at all for `seconds`, then 200
    `by_session` maps a session_id to a behaviour for every POST of that
    session (before the script).  `answers` records, for each misbehaving
    answer, how long the client kept the request open (`open_seconds`) and
    whether it hung up before the answer was complete.
    """

    def __init__(self, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received = []  # (idempotency_key, body)
        self.attempts = 0
        self.script = []
        self.default = 200
        self.by_session = {}
        self.tried = []  # (idempotency_key, session_id, time.monotonic()) of every POST, whatever its answer
        self.answers = []  # {"behaviour", "session_id", "key", "start", "open_seconds", "hung_up"}
        self.kill_hook = lambda: None
        self.lock = threading.Lock()
        self._server = None
        self._thread = None
        self._connections = set()  # open ones: a stop drops them, as a restarted server's process does

    def start(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle and
            # the client's delayed ACK add 40 ms to every answer.
            disable_nagle_algorithm = True

            def setup(self):
                super().setup()
                with api.lock:
                    api._connections.add(self.connection)

            def finish(self):
                with api.lock:
                    api._connections.discard(self.connection)
                super().finish()

            def log_message(self, *args):
                pass

            def _send(self, code, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/health":
                    self._send(
                        200,
                        json.dumps(
                            {
                                "status": "healthy",
                                "service": "procedural-memory",
                                "version": "1.0.0",
                                "engine_initialized": True,
                            }
                        ),
                    )
                else:
                    self._send(404, json.dumps({"detail": "Not Found"}))

            def _client_gone(self, wait):
                """True when the client hung up within `wait` seconds."""
                readable, _, _ = select.select([self.connection], [], [], wait)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _misbehave(self, behaviour, raw):
                """One of the misbehaving answers; records how long the client stayed."""
                start = time.monotonic()
                kind = behaviour[0]
                hung_up = False
                try:
                    if kind == "headers":
                        _, code, headers, body = behaviour
                        data = body.encode() if isinstance(body, str) else body
                        self.send_response(code)
                        for name, value in headers.items():
                            # A callable is asked at answer time (an HTTP date relative to now).
                            self.send_header(name, value() if callable(value) else value)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                    elif kind in ("huge", "drip"):
                        code, size = behaviour[1], behaviour[2]
                        self.send_response(code)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(size))
                        self.end_headers()
                        self.wfile.flush()
                        sent = 0
                        chunk = b"x" * 65536
                        while sent < size:
                            if kind == "drip":
                                if self._client_gone(behaviour[3]):
                                    hung_up = True
                                    break
                                self.connection.sendall(b"x")
                                sent += 1
                            else:
                                piece = chunk[: size - sent]
                                self.connection.sendall(piece)
                                sent += len(piece)
                    elif kind == "drip_head":
                        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 100000
                        for byte in head:
                            if self._client_gone(behaviour[1]):
                                hung_up = True
                                break
                            self.connection.sendall(bytes([byte]))
                    elif kind == "silent":
                        hung_up = self._client_gone(behaviour[1])
                        if not hung_up:
                            self._send(200, json.dumps({"pattern_id": "late", "message": "late"}))
                except OSError:
                    hung_up = True
                self.close_connection = True
                try:
                    body = json.loads(raw)
                    session_id = body.get("session_id")
                except ValueError:
                    session_id = None
                with api.lock:
                    api.answers.append(
                        {
                            "behaviour": kind,
                            "session_id": session_id,
                            "key": self.headers.get("Idempotency-Key"),
                            "start": start,
                            "open_seconds": time.monotonic() - start,
                            "hung_up": hung_up,
                        }
                    )

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    session_id = json.loads(raw).get("session_id")
                except (ValueError, AttributeError):
                    session_id = None
                with api.lock:
                    api.attempts += 1
                    api.tried.append((self.headers.get("Idempotency-Key"), session_id, time.monotonic()))
                    if session_id in api.by_session:
                        behaviour = api.by_session[session_id]
                    else:
                        behaviour = api.script.pop(0) if api.script else api.default
                if isinstance(behaviour, tuple) and behaviour[0] in ("headers", "huge", "drip", "drip_head", "silent"):
                    self._misbehave(behaviour, raw)
                    return
                if isinstance(behaviour, tuple) and behaviour[0] == "delay":
                    time.sleep(behaviour[1])
                    behaviour = 200
                if isinstance(behaviour, tuple) and behaviour[0] == "garbage":
                    self._send(200, behaviour[1], "text/html")
                    return
                if isinstance(behaviour, tuple) and behaviour[0] == "kill":
                    # The server learns the session, and the client dies before
                    # it hears the answer ("before") or right after ("after").
                    body = json.loads(raw)
                    with api.lock:
                        api.received.append((self.headers.get("Idempotency-Key"), body))
                        pattern = f"p{len(api.received):06d}"
                    if behaviour[1] == "before":
                        api.kill_hook()
                    try:
                        self._send(200, json.dumps({"pattern_id": pattern, "message": "learned"}))
                    except OSError:
                        pass
                    if behaviour[1] == "after":
                        api.kill_hook()
                    return
                code = behaviour if isinstance(behaviour, int) else behaviour[1]
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(422, json.dumps({"detail": "invalid JSON"}))
                    return
                if self.path != "/learn":
                    self._send(404, json.dumps({"detail": "Not Found"}))
                    return
                if code == 200:
                    commands = body.get("session_commands")
                    if not isinstance(commands, list):
                        self._send(422, json.dumps({"detail": "session_commands required"}))
                        return
                    if not commands:
                        self._send(200, json.dumps({"pattern_id": None, "message": "too short"}))
                        return
                    with api.lock:
                        api.received.append((self.headers.get("Idempotency-Key"), body))
                        pattern = f"p{len(api.received):06d}"
                    self._send(200, json.dumps({"pattern_id": pattern, "message": f"learned {pattern}"}))
                else:
                    self._send(code, json.dumps({"detail": f"scripted {code}"}))

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        # A client killed mid-request is part of the tests, not an error to print.
        self._server.handle_error = lambda request, address: None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client closed it meanwhile

    def sessions(self):
        with self.lock:
            return list(self.received)

    def wait_for(self, count, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return True
            time.sleep(0.02)
        return len(self.received) >= count


def wait_until(predicate, timeout=30.0, step=0.05):
    """Poll `predicate` until it holds or `timeout` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def learner_env(tmp_path, api_url, db_path, **extra):
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("OMNIMEMORY_LEARNER_") or key in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "INVOCATION_ID",
        ):
            del env[key]
    env.update(
        {
            "HOME": str(tmp_path / "home"),
            "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
            "XDG_STATE_HOME": str(tmp_path / "home" / ".local" / "state"),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db_path),
            "OMNIMEMORY_LEARNER_API_URL": api_url,
            "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path / "state"),
            "OMNIMEMORY_LEARNER_LOG_FILE": str(tmp_path / "learner.log"),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def start_learner(env, *args, **popen):
    """The learner as a subprocess.  Its output goes to a temporary file, not a
    pipe: a pipe nobody reads fills up and then blocks the learner's logging."""
    output = None
    if "stdout" not in popen:
        output = tempfile.TemporaryFile()
        popen["stdout"] = output
    process = subprocess.Popen(
        [sys.executable, "-m", "omnimemory_learner", *args],
        env=env,
        cwd=str(ROOT),
        stderr=popen.pop("stderr", subprocess.STDOUT),
        **popen,
    )
    process.output_file = output
    return process


def output_of(process):
    """What the learner printed so far (when start_learner kept it)."""
    if process.output_file is None:
        return ""
    process.output_file.seek(0)
    return process.output_file.read().decode(errors="replace")


def run_learner(env, *args, timeout=60, input=None):
    return subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


# -- the service under test ----------------------------------------------------------------

IDLE_MINUTES = 0.02  # 1.2 s: long enough apart from the writer's gaps, short for tests
WRITER = str(ROOT / "tests" / "writer.py")


def true_sessions(db_path, idle=IDLE_MINUTES * 60, min_commands=3):
    """Ground truth: the pure core over every row, by event time."""
    conn = sqlite3.connect(str(db_path))
    rows = conn.execute("SELECT rowid, timestamp, event_type, session_id FROM events ORDER BY rowid").fetchall()
    conn.close()
    mapped, _, _ = validate_rows(rows, command_pairs(DEFAULT_EVENT_MAP))
    tracker = SessionTracker(idle, min_commands)
    closed = tracker.feed(mapped, 0.0) + tracker.close_all()
    return sorted(
        (c.session_id, names, reference_outcome(names))
        for c in closed
        if c.learnable
        for names in [tuple(cmd for cmd, _, _ in c.commands)]
    )


def received(api):
    return sorted(
        (body["session_id"], tuple(c["command"] for c in body["session_commands"]), body["session_outcome"])
        for _, body in api.sessions()
    )


def stop(process, sig=signal.SIGTERM, timeout=15):
    process.send_signal(sig)
    process.wait(timeout)
    return process.returncode, output_of(process)


def pending(state_dir):
    conn = sqlite3.connect(str(Path(state_dir) / "state.db"))
    try:
        return conn.execute("SELECT count(*) FROM sessions WHERE status = 'pending'").fetchone()[0]
    finally:
        conn.close()


def delivered_once(api):
    """The sessions the API got, each counted once, and how many POSTs were resends.

    A resend is only acceptable for a POST in flight at a crash: it must carry
    the same idempotency key and the same body as the first.
    """
    by_key = {}
    for key, body in api.sessions():
        by_key.setdefault(key, []).append(body)
    for key, bodies in by_key.items():
        assert all(body == bodies[0] for body in bodies), f"key {key} was sent with different bodies"
    unique = sorted(
        (b[0]["session_id"], tuple(c["command"] for c in b[0]["session_commands"]), b[0]["session_outcome"])
        for b in by_key.values()
    )
    return unique, len(api.sessions()) - len(by_key)


def compare(truth, unique):
    """Figures of a run against the ground truth: lost, unexpected."""
    lost = [s for s in truth if s not in unique]
    extra = [s for s in unique if s not in truth]
    return {
        "sessions": len(truth),
        "lost": len(lost),
        "unexpected": len(extra),
        "detail": f"lost {lost[:5]} unexpected {extra[:5]}",
    }


class Flapper:
    """Takes a RecordingAPI down and up again every `period` seconds, in a thread."""

    def __init__(self, api, period=1.0):
        self.api, self.period = api, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        up = False
        while not self._stop.is_set():
            if up:
                self.api.stop()
            else:
                self.api.start()
            up = not up
            self._stop.wait(self.period)
        if not up:
            self.api.start()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        """Stop flapping, leaving the API up."""
        self._stop.set()
        self._thread.join(5)


def journald_answers(socket_path="/run/systemd/journal/socket"):
    """Whether a journald is listening (its socket file alone may be left from one that is gone)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.sendto(b"", socket_path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
