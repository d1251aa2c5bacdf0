"""A stand-in for the original omnimemory-procedural server, as ../shared/INTERFACES.md describes it.

The job: answer GET /health, POST /learn and GET /patterns the way the
original does (its engine's counting and pattern ids, its validation's 422s),
so the learner can be tested end to end against something that forgets. The
guarantee: everything is kept in memory only, so a new process (or restart())
holds nothing; it listens on 127.0.0.1 and nowhere else; standard library only.

Behaviour copied from the original (omnimemory-procedural's procedural_server.py
and procedural_memory.py):

* POST /learn: `session_commands` a list of objects (required), `session_outcome`
  a string (default "success"), `session_id`, `tool_id` strings or null; any
  other shape is 422. Each command's "command" is read first (absent: 500, as
  the original's KeyError); fewer than 3 commands answer 200 with pattern_id
  null; a command that is not a string is 500 (the original's re.sub raises).
* pattern_id: the first 16 hex digits of the MD5 of the normalised names
  joined with " -> "; normalising replaces URLs, then file-like words, then
  whole numbers, and strips the ends.
* Counting: on a known pattern "success" adds to success_count and any other
  string to failure_count; a new pattern starts at 1 for "success" or
  "failure" and at 0/0 for anything else (it is still created).
* GET /patterns lists every pattern held, in the order first learned.

Run alone: `python3 tests/original_api.py --port N [--ready-file F]` (N 0: any
free port); F gets {"port", "pid", "url"} once it listens, written whole.
In a test: `OriginalAPI().start()`, `.url`, `.counts()`, `.restart()`, `.stop()`;
or `OriginalProcess(tmp_path)` for its own process, with `.url`, `.restart()`, `.stop()`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set, Tuple

HOST = "127.0.0.1"
HEALTH = {"status": "healthy", "service": "procedural-memory", "version": "1.0.0", "engine_initialized": True}

# The original's order matters: a URL would otherwise be taken for a file name.
_URL = re.compile(r"https?://[^\s]+")
_FILE = re.compile(r"[/\w]+\.\w+")
_NUMBER = re.compile(r"\b\d+\b")


def normalise(command: str) -> str:
    return _NUMBER.sub("<NUM>", _FILE.sub("<FILE>", _URL.sub("<URL>", command))).strip()


def pattern_id_of(commands: List[str]) -> str:
    return hashlib.md5(" -> ".join(normalise(c) for c in commands).encode()).hexdigest()[:16]


class Invalid(Exception):
    """The body fails the original's request model: 422."""


class Engine:
    """The patterns and their counts; one lock, as the handler threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._patterns: Dict[str, List[Any]] = {}  # pattern_id -> [commands, success, failure]
        self.accepted = 0  # POSTs that changed a count or made a pattern
        # Not the original's: for tests of a slow API, of one without GET /patterns (404), of a slow
        # GET /patterns, and of one that lists only its first `list_limit` patterns (a paginated API
        # whose total is the page's).
        self.answer_delay = 0.0
        self.without_patterns = False
        self.patterns_delay = 0.0
        self.list_limit: Optional[int] = None

    def learn(self, commands: List[Any], outcome: str) -> Optional[str]:
        if len(commands) < 3:
            return None
        if not all(isinstance(c, str) for c in commands):
            raise TypeError("expected string or bytes-like object")
        pattern_id = pattern_id_of(commands)
        with self._lock:
            pattern = self._patterns.get(pattern_id)
            if pattern is None:
                self._patterns[pattern_id] = [list(commands), int(outcome == "success"), int(outcome == "failure")]
            elif outcome == "success":
                pattern[1] += 1
            else:
                pattern[2] += 1
            self.accepted += 1
        return pattern_id

    def summaries(self) -> List[Dict[str, Any]]:
        with self._lock:
            items = [(p, len(c), s, f) for p, (c, s, f) in self._patterns.items()]
        return [
            {
                "pattern_id": p,
                "command_count": n,
                "success_count": s,
                "failure_count": f,
                "confidence": s / (s + f) if s + f else 0.0,
            }
            for p, n, s, f in items
        ]

    def counts(self) -> Dict[str, Tuple[int, int]]:
        with self._lock:
            return {p: (s, f) for p, (_, s, f) in self._patterns.items()}


def read_learn_body(raw: bytes) -> Tuple[List[Any], str]:
    """(the command names as sent, the outcome), or Invalid; KeyError for a command without "command"."""
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise Invalid(f"JSON decode error: {error}") from None
    if not isinstance(body, dict):
        raise Invalid("body: not an object")
    commands = body.get("session_commands")
    if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
        raise Invalid("session_commands: a list of objects is required")
    outcome = body.get("session_outcome", "success")
    if not isinstance(outcome, str):
        raise Invalid("session_outcome: not a string")
    for name in ("session_id", "tool_id"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise Invalid(f"{name}: not a string")
    return [c["command"] for c in commands], outcome


def make_handler(engine: Engine) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(200, HEALTH)
            elif path == "/patterns" and not engine.without_patterns:
                if engine.patterns_delay:
                    time.sleep(engine.patterns_delay)
                patterns = engine.summaries()[: engine.list_limit]
                self._send(200, {"patterns": patterns, "total": len(patterns)})
            elif path == "/learn":
                self._send(405, {"detail": "Method Not Allowed"})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            path = self.path.split("?", 1)[0]
            if path in ("/health", "/patterns"):
                self._send(405, {"detail": "Method Not Allowed"})
                return
            if path != "/learn":
                self._send(404, {"detail": "Not Found"})
                return
            try:
                commands, outcome = read_learn_body(raw)
                pattern_id = engine.learn(commands, outcome)
                if engine.answer_delay:
                    time.sleep(engine.answer_delay)  # learned at once, answered late: a slow API
            except Invalid as error:
                self._send(422, {"detail": [{"msg": str(error)}]})
                return
            except (KeyError, TypeError) as error:
                self._send(500, {"detail": f"Error learning: {error}"})
                return
            if pattern_id is None:
                self._send(
                    200,
                    {"pattern_id": None, "message": "Session too short to learn pattern (need at least 3 commands)"},
                )
            else:
                self._send(200, {"pattern_id": pattern_id, "message": f"Successfully learned pattern {pattern_id}"})

    return Handler


class Server(ThreadingHTTPServer):
    """Keeps its connections, so that going down drops them as a dying process would."""

    daemon_threads = True

    def __init__(self, port: int, engine: Engine) -> None:
        self._open: Set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((HOST, port), make_handler(engine))

    def process_request(self, request: Any, client_address: Any) -> None:
        # As uvicorn does: without it, headers and body written apart wait out the client's delayed ACK (40 ms).
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        # A kept-alive connection would otherwise go on reaching the old engine after a restart.
        with self._open_lock:
            live = list(self._open)
        for connection in live:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class OriginalAPI:
    """The server in this process, on a thread; restart() forgets, as a new process would."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.engine = Engine()
        self._server: Optional[Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> OriginalAPI:
        server = Server(self.port, self.engine)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="original-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def restart(self) -> None:
        """Down, then up on the same port with an empty engine."""
        self.stop()
        self.engine = Engine()
        self.start()

    def counts(self) -> Dict[str, Tuple[int, int]]:
        return self.engine.counts()

    def __enter__(self) -> OriginalAPI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class OriginalProcess:
    """The server as its own process on 127.0.0.1 (`port` 0: any free one); `restart()` keeps the port."""

    def __init__(self, directory: Any, port: int = 0) -> None:
        self._directory = directory
        self.port = port
        self.process: Optional[Any] = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> OriginalProcess:
        import subprocess
        import time

        ready = os.path.join(str(self._directory), f"original-api-ready-{time.monotonic_ns()}.json")
        command = [sys.executable, os.path.abspath(__file__), "--port", str(self.port), "--ready-file", ready]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 20
        while not os.path.exists(ready):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the original API stand-in did not start")
            time.sleep(0.02)
        with open(ready) as file:
            self.port = json.load(file)["port"]
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Down, then a new process on the same port: it holds nothing."""
        self.stop()
        self.start()


def _write_ready(path: str, port: int) -> None:
    # Whole or not at all: a test polling for the file never reads half of it.
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        json.dump({"port": port, "pid": os.getpid(), "url": f"http://{HOST}:{port}"}, file)
    os.replace(temporary, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--ready-file")
    args = parser.parse_args(argv)
    server = Server(args.port, Engine())

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    if args.ready_file:
        _write_ready(args.ready_file, server.server_address[1])
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
