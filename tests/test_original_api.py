"""tests/original_api.py against the interface's facts (../shared/INTERFACES.md §2), checked from outside.

Pattern ids are computed here from the rule itself (MD5 of the normalised
names joined with " -> "), not with the server's helpers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from original_api import OriginalAPI

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP

SCRIPT = Path(__file__).resolve().parent / "original_api.py"


def md5_id(text):
    return hashlib.md5(text.encode()).hexdigest()[:16]


def call(url, method="GET", path="/patterns", body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def learn(url, names, outcome="success", **extra):
    commands = [{"command": n, "timestamp": 1.7e9 + i, "context": {"event_type": "x"}} for i, n in enumerate(names)]
    return call(url, "POST", "/learn", {"session_commands": commands, "session_outcome": outcome, **extra})


def patterns(url):
    status, body = call(url)
    assert status == 200 and body["total"] == len(body["patterns"])
    return {p["pattern_id"]: p for p in body["patterns"]}


@pytest.fixture
def server():
    api = OriginalAPI().start()
    yield api
    api.stop()


SEQUENCE = ["open_file", "edit_code", "save_file"]


def test_health_answers_like_the_interface(server):
    assert call(server.url, path="/health") == (
        200,
        {"status": "healthy", "service": "procedural-memory", "version": "1.0.0", "engine_initialized": True},
    )


def test_the_pattern_id_of_a_known_sequence(server):
    status, body = learn(server.url, SEQUENCE)
    assert status == 200 and body["pattern_id"] == md5_id("open_file -> edit_code -> save_file") == "5f6152dfb7241857"


def test_the_fifteen_command_names_pass_unchanged(server):
    names = sorted(DEFAULT_EVENT_MAP.values())
    assert len(names) == 15
    status, body = learn(server.url, names)
    assert status == 200 and body["pattern_id"] == md5_id(" -> ".join(names))


def test_urls_files_and_numbers_are_replaced(server):
    names = ["curl https://example.org/a.json?x=1", "vim /tmp/notes.txt", "sleep 10", "  edit_code  "]
    status, body = learn(server.url, names)
    assert status == 200 and body["pattern_id"] == md5_id("curl <URL> -> vim <FILE> -> sleep <NUM> -> edit_code")
    assert patterns(server.url)[body["pattern_id"]]["command_count"] == 4


def test_counts_follow_the_outcomes(server):
    pattern_id = md5_id(" -> ".join(SEQUENCE))
    for outcome in ("success", "success", "failure", "partial"):  # any other string is a failure once known
        learn(server.url, SEQUENCE, outcome)
    held = patterns(server.url)[pattern_id]
    assert (held["success_count"], held["failure_count"], held["command_count"]) == (2, 2, 3)
    assert held["confidence"] == 0.5
    assert server.counts() == {pattern_id: (2, 2)}


def test_a_new_pattern_counts_only_success_or_failure(server):
    status, body = learn(server.url, ["a", "b", "c"], "partial")
    held = patterns(server.url)[body["pattern_id"]]
    assert status == 200 and (held["success_count"], held["failure_count"], held["confidence"]) == (0, 0, 0.0)
    learn(server.url, ["b", "c", "d"], "failure")
    assert server.counts()[md5_id("b -> c -> d")] == (0, 1)


def test_the_outcome_defaults_to_success_and_ids_are_only_passed_through(server):
    commands = [{"command": n} for n in SEQUENCE]
    call(server.url, "POST", "/learn", {"session_commands": commands, "session_id": "s", "tool_id": "t"})
    assert server.counts() == {md5_id(" -> ".join(SEQUENCE)): (1, 0)}


def test_two_commands_answer_null_and_learn_nothing(server):
    status, body = learn(server.url, ["open_file", "save_file"])
    assert status == 200 and body["pattern_id"] is None
    assert call(server.url) == (200, {"patterns": [], "total": 0})


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b"[]",
        b"{}",
        json.dumps({"session_commands": "open_file"}).encode(),
        json.dumps({"session_commands": ["open_file", "a", "b"]}).encode(),
        json.dumps({"session_commands": [{"command": "a"}] * 3, "session_outcome": 1}).encode(),
        json.dumps({"session_commands": [{"command": "a"}] * 3, "session_outcome": None}).encode(),
        json.dumps({"session_commands": [{"command": "a"}] * 3, "session_id": 5}).encode(),
    ],
)
def test_an_invalid_body_is_422_and_learns_nothing(server, raw):
    status, _ = call(server.url, "POST", "/learn", raw=raw)
    assert status == 422 and server.counts() == {}


def test_a_command_without_its_name_fails_as_the_original(server):
    status, body = call(server.url, "POST", "/learn", {"session_commands": [{"cmd": "a"}] * 3})
    assert status == 500 and "command" in body["detail"] and server.counts() == {}


def test_a_restart_forgets_everything_and_drops_kept_connections(server):
    learn(server.url, SEQUENCE)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", "/patterns")
    assert json.loads(connection.getresponse().read())["total"] == 1
    server.restart()
    assert call(server.url) == (200, {"patterns": [], "total": 0})
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        connection.request("GET", "/patterns")
        connection.getresponse().read()
    connection.close()


def start_process(tmp_path, port=0):
    ready = tmp_path / f"ready-{time.monotonic_ns()}.json"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--port", str(port), "--ready-file", str(ready)])
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    assert info["pid"] == process.pid
    return process, info


def stop_process(process):
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


def listening_addresses(port):
    """Local addresses of the sockets listening on `port` (Linux /proc), hex as the kernel writes them."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def test_a_new_process_forgets_everything_and_listens_on_loopback_only(tmp_path):
    process, info = start_process(tmp_path)
    try:
        status, body = learn(info["url"], SEQUENCE)
        assert status == 200 and patterns(info["url"])[body["pattern_id"]]["success_count"] == 1
        if os.path.exists("/proc/net/tcp"):
            assert listening_addresses(info["port"]) == ["0100007F"]  # 127.0.0.1, little-endian hex
    finally:
        stop_process(process)
    process, again = start_process(tmp_path, info["port"])
    try:
        assert again["port"] == info["port"]
        assert call(again["url"]) == (200, {"patterns": [], "total": 0})
    finally:
        stop_process(process)


def test_in_process_it_binds_loopback_only(server):
    assert server._server.server_address[0] == "127.0.0.1"
    outward = None
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outward address
        outward = probe.getsockname()[0]
        probe.close()
    except OSError:
        pass
    if not outward or outward.startswith("127."):
        pytest.skip("no address but loopback here")
    with pytest.raises(OSError):
        socket.create_connection((outward, server.port), timeout=2).close()
