"""Hostile text end to end: ids written into a real SQLite file, an API that
answers with hostile bodies, and what the log file, the console and every CLI
command then show.  Nothing may forge a line or reach the terminal raw; the
API gets every id exactly as the database holds it; --json stays exact.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import RecordingAPI, create_db, insert_events, learner_env, run_learner, start_learner, stop, wait_until
from test_edges import HOSTILE, LINE_START, unsafe_characters

FORGED = "2026-11-24 07:00:00 - ERROR - Fake"
HOSTILE_BODY = "bad\n" + FORGED + ": body\x1b[2J\x1b]0;owned\x07\u202e\u2028" + "z" * 10_000
HOSTILE_PATTERN = "p1\n" + FORGED + " pattern\x1b[31m"
EVIL, NUL, SEPARATOR, RTL, PRIORITY, BACKSLASH, TEN_KB = HOSTILE
# The reader skips (and counts) ids over 512 characters: the 10 kB id never
# reaches the API; the longest it takes is made of escape sequences.
LONGEST = ("\x1b[31m" * 103)[:512]
DELIVERED = [EVIL, NUL, SEPARATOR, RTL, PRIORITY, BACKSLASH, LONGEST]


class HostileAPI(RecordingAPI):
    """A procedural API whose answers carry hostile text.

    `answers` maps a session id to the answers its attempts get, in order
    (status, body); afterwards (or for other ids) `fallback` answers.  Every
    POST's session id is kept in `posted`, failed attempts included.
    """

    def __init__(self, port=None):
        super().__init__(port)
        self.answers = {}
        self.fallback = (200, {"pattern_id": HOSTILE_PATTERN, "message": HOSTILE_BODY})
        self.posted = []
        self.health = {
            "status": "healthy\n<3>" + FORGED,
            "service": "\u202eprocedural-memory\x1b[2J",
            "version": "1.0\x00",
        }

    def start(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8", "surrogatepass")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            # Any prefix: the learner is configured with an API URL that has odd characters in its path.
            def do_GET(self):
                self._send(200 if self.path.endswith("/health") else 404, api.health)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                session_id = body.get("session_id")
                if body.get("tool_id") == "omnimemory-learner-doctor":
                    self._send(418, HOSTILE_BODY)
                    return
                with api.lock:
                    api.posted.append(session_id)
                    queue = api.answers.get(session_id)
                    code, answer = queue.pop(0) if queue else api.fallback
                    if code == 200 and answer.get("pattern_id") is not None:
                        api.received.append((self.headers.get("Idempotency-Key"), body))
                self._send(code, answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self


def stamp():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def session_rows(session_id):
    return [
        (stamp(), "file_open", session_id),
        (stamp(), "code_edit", session_id),
        (stamp(), "file_save", session_id),
        (stamp(), "unknown\n<3>type\x1b[31m", session_id),
    ]


def assert_log_lines(text):
    """Every line is one of ours: a timestamp, a level, a message; nothing raw."""
    lines = text.splitlines()
    assert lines, "no log lines"
    bad = [line for line in lines if not LINE_START.match(line)]
    assert bad == [], bad[:3]
    assert unsafe_characters(text) == []
    assert not any(line.startswith(FORGED) for line in lines)
    return lines


@pytest.fixture
def hostile_api():
    server = HostileAPI().start()
    yield server
    server.stop()


def test_hostile_ids_and_answers_never_forge_a_line_and_reach_the_api_unchanged(tmp_path, hostile_api):
    api = hostile_api
    api.answers = {
        NUL: [(422, {"detail": HOSTILE_BODY})],
        BACKSLASH: [(422, HOSTILE_BODY)],
        SEPARATOR: [(500, HOSTILE_BODY)],
        RTL: [(200, {"pattern_id": None, "message": HOSTILE_BODY})],
    }
    db = create_db(tmp_path / "odd\n\x1b[31mdir\u202e" / "memory_data.db")
    api_url = api.url + "/\u202eevil\u2028x"
    env = learner_env(
        tmp_path,
        api_url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.02",
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="0.5",
    )
    learner = start_learner(env)
    try:
        for session_id in HOSTILE + [LONGEST]:
            insert_events(db, session_rows(session_id))
        # Every id posted, the failed one twice; then the outbox settles.
        assert wait_until(lambda: set(api.posted) >= set(DELIVERED) and api.posted.count(SEPARATOR) >= 2, 40), (
            api.posted
        )
        assert wait_until(lambda: _outbox(env, "pending") == [], 20)
    finally:
        code, console = stop(learner)
    assert code == 0, console[-2000:]

    # The API received each id exactly as the database holds it, with its commands.
    learned = {body["session_id"]: [c["command"] for c in body["session_commands"]] for _, body in api.sessions()}
    assert set(learned) == {EVIL, SEPARATOR, PRIORITY, LONGEST}
    assert all(len(commands) == 3 for commands in learned.values())
    assert sorted(set(api.posted)) == sorted(DELIVERED)

    log = (tmp_path / "learner.log").read_text(encoding="utf-8")
    for text in (log, console):
        lines = assert_log_lines(text)
        levels = [LINE_START.match(line).group(1) for line in lines]
        assert levels.count("ERROR") == 3, [line[:120] for line in lines if "ERROR" in line]
        assert (
            "INFO - Learning from session evil\\n2026-11-24 07:00:00 - ERROR - Fake: credentials leaked"
            "\\x1b[31m: 3 commands, outcome=success"
        ) in text
        assert (
            "Successfully learned pattern p1\\n2026-11-24 07:00:00 - ERROR - Fake pattern\\x1b[31m from session" in text
        )
        assert "Procedural API rejected session nul\\x00byte; kept as rejected" in text
        assert "rejected session back\\\\slash\\r\\n;" in text
        assert (
            "Procedural API failed for session sep\\u2028arator: HTTP 500: bad\\n2026-11-24 07:00:00 - ERROR - "
            "Fake: body\\x1b[2J\\x1b]0;owned\\x07\\u202e\\u2028zzz" in text
        )
        assert "Session \\u202eright-to-left was not learned" in text
        assert "Learning from session <2>\\n<3>forged priority" in text
        assert "Learning from session " + "\\x1b[31m" * 102 + "\\x1b[: 3 commands" in text
        # The rejection line quotes the body cut at delivery's 500 characters, with a mark.
        rejection = next(line for line in text.splitlines() if "rejected session back" in line)
        assert rejection.endswith("zzz...") and len(rejection) < 1000
        assert "Memory daemon DB: " + str(tmp_path) + "/odd\\n\\x1b[31mdir\\u202e/memory_data.db" in text

    # status: fixed lines, odd path and URL escaped; --json exact.
    result = run_learner(env, "status")
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 13 and unsafe_characters(result.stdout) == []
    assert lines[1] == "       Database: " + str(tmp_path) + "/odd\\n\\x1b[31mdir\\u202e/memory_data.db"
    assert lines[3] == "            API: " + api.url + "/\\u202eevil\\u2028x"
    assert lines[-1].startswith("     Last error: ") and "\\x1b[2J" in lines[-1]
    report = json.loads(run_learner(env, "status", "--json").stdout)
    assert report["db_path"] == str(db) and report["api_url"] == api_url
    assert report["stats"]["events_skipped"] >= 3  # the 10 kB id's rows, counted and skipped
    assert "\x1b[2J" in report["stats"]["last_error"]["message"]

    # outbox: a header and one line per rejected session; --json exact.
    result = run_learner(env, "outbox")
    assert result.returncode == 0 and unsafe_characters(result.stdout) == []
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split() == [
        "ID",
        "STATUS",
        "SESSION",
        "CMDS",
        "OUTCOME",
        "TRIES",
        "NEXT",
        "TRY",
        "LAST",
        "ERROR",
    ]
    shown_ids = sorted(line.split()[2] for line in lines[1:])
    assert shown_ids == ["back\\\\slash\\r\\n", "nul\\x00byte"]
    # The start of the error (itself the body cut at 500 characters), then the mark.
    assert all(re.search(r"  HTTP 422: .*\.\.\.\[\d+ more characters\]$", line) for line in lines[1:]), lines
    entries = json.loads(run_learner(env, "outbox", "--json").stdout)
    assert sorted(entry["session_id"] for entry in entries) == sorted([NUL, BACKSLASH])

    # doctor: every line is a check or its fix; hostile health and /learn answers escaped; --json exact.
    result = run_learner(env, "doctor")
    assert unsafe_characters(result.stdout) == []
    lines = result.stdout.splitlines()
    assert all(
        line.split(" ", 1)[0] in ("ok", "warning", "problem") or line.startswith(" " * 9 + "fix: ") for line in lines
    ), lines
    database = next(line for line in lines if line.startswith("ok       database: "))
    assert "/odd\\n\\x1b[31mdir\\u202e/memory_data.db: 32 events" in database
    assert any(
        "/health: healthy\\n<3>2026-11-24 07:00:00 - ERROR - Fake (\\u202eprocedural-memory\\x1b[2J 1.0\\x00)" in line
        for line in lines
    ), lines
    contract = next(line for line in lines if " api contract: " in line)
    assert contract.startswith("problem  api contract: POST /learn answered HTTP 418: bad\\n2026")
    assert contract.endswith("zzz...")  # the answer cut at 200 characters, with a mark
    checks = json.loads(run_learner(env, "doctor", "--json").stdout)
    assert any(check["name"] == "database" and str(db) in check["message"] for check in checks)
    # Exact (nothing escaped) in --json, and as bounded as the human line: the body's first 200 characters.
    assert any(check["name"] == "api contract" and HOSTILE_BODY[:200] + "..." in check["message"] for check in checks)

    # backfill: the API fails every new session with a hostile body; its messages stay one line each.
    api.fallback = (500, HOSTILE_BODY)
    for session_id in DELIVERED:
        insert_events(db, session_rows(session_id[:500] + "-later"))
    result = run_learner(env, "backfill", "--until-delivered-timeout", "3")
    assert result.returncode == 69, result.stdout + result.stderr
    assert unsafe_characters(result.stdout + result.stderr) == []
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        "omnimemory-learner: the procedural API at " + api.url + "/\\u202eevil\\u2028x did not take every session"
    )
    assert "(last error: HTTP 500: bad\\n2026-11-24 07:00:00 - ERROR - Fake: body\\x1b[2J" in errors[0]
    assert_log_lines(result.stdout)
    pending = _outbox(env, "pending")
    assert sorted(entry["session_id"] for entry in pending) == sorted(s[:500] + "-later" for s in DELIVERED)


def _outbox(env, status):
    result = run_learner(env, "outbox", "--json")
    if result.returncode != 0:
        return None
    return [entry for entry in json.loads(result.stdout) if entry["status"] == status]
