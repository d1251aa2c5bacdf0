"""delivery/relearn.py, learn_api's GET /patterns and delivery/watch.py, against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import free_port, wait_until
from original_api import OriginalAPI, pattern_id_of

from omnimemory_learner.core.fates import Fate
from omnimemory_learner.core.folding import fold_runs
from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP
from omnimemory_learner.delivery.http import BoundedClient
from omnimemory_learner.delivery.learn_api import PATTERNS_CAP, LearnAPI, learn_body, rebuilt_body, sent_names
from omnimemory_learner.delivery.relearn import PatternsReads, Reasons, Relearner
from omnimemory_learner.delivery.watch import ApiWatch
from omnimemory_learner.storage.history import Entry, HistoryStore
from omnimemory_learner.storage.outbox import PendingSession
from omnimemory_learner.storage.state import RECONCILE_META, StateStore


class Patterns(ThreadingHTTPServer):
    """GET /patterns answers `answer` (status, bytes); POST /learn answers `learn` (status, bytes) and counts."""

    daemon_threads = True

    def __init__(self):
        self.answer = (200, b'{"patterns": [], "total": 0}')
        self.learn = (200, b'{"pattern_id": "x"}')
        self.posts = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(*outer.answer)

            def do_POST(self):
                outer.posts.append(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(*outer.learn)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def patterns():
    server = Patterns()
    yield server
    server.close()


def read(server):
    with BoundedClient(5.0) as client:
        return LearnAPI(client, server.url).patterns(5.0)


def test_a_good_answer_is_read_and_every_bad_one_is_a_reason_not_counts(patterns):
    patterns.answer = (
        200,
        json.dumps({"patterns": [{"pattern_id": "a", "success_count": 2, "failure_count": 1}], "total": 1}).encode(),
    )
    good = read(patterns)
    assert good.counts is not None and good.counts.counts == {"a": (2, 1)} and good.problem == ""
    for status, body, words, supported in [
        (404, b'{"detail": "Not Found"}', "has none", False),
        (405, b"", "has none", False),
        (500, b"boom", "HTTP 500", True),
        (200, b"<html>captive portal</html>", "not JSON", True),
        (200, b'{"patterns": [{"pattern_id": "a"}], "total": 5}', "partial answer", True),
        (200, b'{"pattern": []}', "not a patterns answer", True),
        (200, b"[" * 100_000, "not JSON", True),
    ]:
        patterns.answer = (status, body)
        answer = read(patterns)
        assert answer.counts is None and words in answer.problem and answer.supported is supported, (status, body[:40])
        assert answer.answered and answer.connected


def test_an_answer_past_the_cap_is_refused_whole_and_not_reachable_is_said(patterns):
    entry = b'{"pattern_id": "0123456789abcdef", "success_count": 1, "failure_count": 0},'
    patterns.answer = (200, b'{"patterns": [' + entry * (PATTERNS_CAP // len(entry) + 10) + b"]}")
    answer = read(patterns)
    assert answer.counts is None and "MiB" in answer.problem
    with BoundedClient(2.0) as client:
        gone = LearnAPI(client, f"http://127.0.0.1:{free_port()}").patterns(2.0)
    assert gone.counts is None and not gone.connected and not gone.answered


def session(n, names, outcome="success"):
    commands = [(name, time.time() - 86400.0 + n * 100 + k, "code_edit") for k, name in enumerate(names)]
    return PendingSession(n, f"key{n}", f"s{n}", outcome, commands, 0, content_key=f"key{n}")


def learned_entry(pending, pattern_id):
    times = [t for _, t, _ in pending.commands]
    return Entry(
        pending.content_key,
        pending.session_id,
        min(times),
        max(times),
        [c for c, _, _ in pending.commands],
        pending.outcome,
        pattern_id,
        "idle",
        Fate.LEARNED,
        None,
    )


def test_the_body_is_kept_exactly_and_an_older_row_is_rebuilt_to_the_same_pattern(tmp_path):
    history = HistoryStore(tmp_path)
    names = ["open_file", "edit_code", "edit_code", "edit_code", "save_file"]
    for n, fold in ((1, False), (2, True)):
        pending = session(n, names)
        body = json.dumps(learn_body(pending, fold), separators=(",", ":")).encode()
        pattern_id = pattern_id_of(list(sent_names(body)))
        history.record([learned_entry(pending, pattern_id)], {pending.content_key: body})
        kept = history.sent_session(pending.content_key)
        assert kept.body == body and kept.retaught == 0
        # The same row as a version-2 history holds it (no body): rebuilt, its names give the same pattern id.
        rebuilt = rebuilt_body(kept._replace(body=None), {v: k for k, v in DEFAULT_EVENT_MAP.items()})
        assert pattern_id_of(list(sent_names(rebuilt))) == pattern_id
        commands = json.loads(rebuilt)["session_commands"]
        assert [c["context"]["event_type"] for c in commands][:1] == ["file_open"]
        assert commands[0]["timestamp"] == kept.first_time and commands[-1]["timestamp"] == kept.last_time
    assert [r.command for r in fold_runs(session(2, names).commands)] == ["open_file", "edit_code", "save_file"]
    # A body that cannot be unpacked is rebuilt too, never sent as garbage.
    history._db.execute("UPDATE history SET sent = x'00ff' WHERE key = 'key1'")
    assert history.sent_session("key1").body is None
    history.close()


def test_a_repair_stopped_by_a_failing_api_teaches_nothing_twice_and_is_finished_later(tmp_path):
    api = OriginalAPI().start()
    store, history = StateStore(tmp_path), HistoryStore(tmp_path)
    bodies = []
    for n in range(6):
        pending = session(n, ["open_file", "edit_code", "save_file", *(["run_tests"] * (n % 3))])
        body = json.dumps(learn_body(pending), separators=(",", ":")).encode()
        bodies.append((pending, body, pattern_id_of(list(sent_names(body)))))
        history.record([learned_entry(pending, bodies[-1][2])], {pending.content_key: body})
    clock = [1000.0]
    relearner = Relearner(enabled=True, interval_minutes=0, clock=lambda: clock[0])
    with BoundedClient(2.0) as client:
        learn = LearnAPI(client, api.url)
        assert relearner.step(learn, history, store, 2.0) is not None  # the reconcile
        assert len(relearner.plan) == 6
        for _ in range(2):
            relearner.step(learn, history, store, 2.0)
        api.stop()  # down mid-way
        relearner.step(learn, history, store, 2.0)
        assert not relearner.plan and relearner.check_at is not None  # the rest dropped; reconcile again later
        api.start()  # the same engine: it kept the two taught
        clock[0] = relearner.check_at
        while relearner.step(learn, history, store, 2.0) is not None:
            pass
    expected = {}
    for _, _, pattern_id in bodies:
        expected[pattern_id] = (expected.get(pattern_id, (0, 0))[0] + 1, 0)
    assert api.counts() == expected
    note = json.loads(store.meta_value(RECONCILE_META))
    assert note["sessions_lost"] == 4 and note["taught"] == 4 and note["why"] == Reasons.BACK
    # Six POSTs in all; within a pattern the sessions are interchangeable, so the second plan may
    # name one the first had taught (the most recent are taken): the API's counts are what is exact.
    assert history.retaught()[1] == 6
    api.stop()
    store.close()
    history.close()


def test_the_watch_hears_a_restart_at_once_and_gives_up_on_a_server_that_closes_idle_connections():
    api = OriginalAPI().start()
    heard = []
    watch = ApiWatch(lambda: heard.append(time.monotonic()))
    watch.start(api.url)
    time.sleep(0.3)
    restarted = time.monotonic()
    api.restart()
    assert wait_until(lambda: heard, 5)
    assert heard[0] - restarted < 3.0
    watch.stop()
    api.stop()

    class Closing(BaseHTTPRequestHandler):
        def handle(self):
            time.sleep(0.2)  # a server with a short idle timeout

    server = ThreadingHTTPServer(("127.0.0.1", 0), Closing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closing = ApiWatch(lambda: None)
    closing.start(f"http://127.0.0.1:{server.server_address[1]}")
    assert wait_until(lambda: closing.gave_up, 10)
    closing.stop()
    server.shutdown()
    server.server_close()


def test_a_stored_body_is_compressed(tmp_path):
    history = HistoryStore(tmp_path)
    pending = session(1, ["open_file", "edit_code", "save_file"] * 30)
    body = json.dumps(learn_body(pending), separators=(",", ":")).encode()
    history.record([learned_entry(pending, "p")], {pending.content_key: body})
    stored = history._db.execute("SELECT sent FROM history").fetchone()[0]
    assert zlib.decompress(stored) == body and len(stored) < len(body) / 3
    history.close()


def test_a_read_is_taken_when_its_wake_comes_though_its_thread_has_not_ended(patterns):
    # The delivery thread, woken by wake(), may look before the reading thread is gone: the answer
    # must be there then (it waited up to a minute for the next wake before).
    patterns.answer = (200, b'{"patterns": [{"pattern_id": "a", "success_count": 1, "failure_count": 0}], "total": 1}')
    reads = PatternsReads()
    taken = []
    woken = threading.Event()

    def wake():
        taken.append((reads.busy, reads.take()))  # in the reading thread, still alive
        woken.set()

    reads.wake = wake
    reads.start(patterns.url, 5.0)
    assert woken.wait(10)
    busy, done = taken[0]
    assert not busy and done is not None and done[0].counts.counts == {"a": (1, 0)}
    assert reads.take() is None and not reads.busy  # taken once


def test_a_read_that_fails_unexpectedly_still_ends_and_is_taken(monkeypatch):
    # An exception in the read (not an HTTP error) must not leave reconciling waiting for good.
    reads = PatternsReads()
    reads.wake = lambda: None

    def broken(self, timeout):
        raise RuntimeError("boom")

    monkeypatch.setattr(LearnAPI, "patterns", broken)
    reads.start("http://127.0.0.1:9", 1.0)
    assert wait_until(lambda: not reads.busy, 10)
    read, _ = reads.take()
    assert read.counts is None and "boom" in read.problem and not read.answered
