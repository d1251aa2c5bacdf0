"""State store and delivery against a real HTTP server on 127.0.0.1."""

import bisect
import json
import os
import random
import stat
import threading
import time

import pytest
from helpers import RecordingAPI, free_port, load_0_1_0, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from omnimemory_learner.cli.outbox import outbox as outbox_command
from omnimemory_learner.config import load_config
from omnimemory_learner.core.evidence import OutcomeRule
from omnimemory_learner.core.quality import session_quality
from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery import Deliverer
from omnimemory_learner.delivery.health import Backoff
from omnimemory_learner.delivery.learn_api import learn_body
from omnimemory_learner.storage.lock import AlreadyRunning, InstanceLock, lock_is_held
from omnimemory_learner.storage.state import Position, StateStore


def closed(sid, first, n=3, learnable=True, commands=None):
    commands = commands or [("open_file", 100.0 + i, "file_open") for i in range(n - 1)] + [
        ("save_file", 200.0, "file_save")
    ]
    return ClosedSession.from_commands(sid, commands[:n], first, first + n - 1, "idle", learnable)


def fill(state_dir, sessions):
    store = StateStore(state_dir)
    store.commit(Position(0, max(s.last_rowid for s in sessions)), sessions, {})
    store.close()


def make_deliverer(state_dir, url, cap=0.2):
    deliverer = Deliverer(state_dir, url, timeout=1.0, retry_max_seconds=cap)
    deliverer.health.backoff.first = 0.05
    return deliverer


def settle(state_dir, timeout=20):
    store = StateStore(state_dir)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if store.status_counts().get("pending", 0) == 0:
                return store.status_counts()
            time.sleep(0.02)
        return store.status_counts()
    finally:
        store.close()


def test_state_files_are_private(tmp_path):
    store = StateStore(tmp_path / "state")
    store.commit(Position(0, 0), [closed("a", 1)], {})
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    for name in os.listdir(tmp_path / "state"):
        assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600, name
    store.close()


def test_outbox_keeps_commands_exactly(tmp_path):
    commands = [
        ("open_file", 1760000000.123456, "file_open"),
        ('say "hi"\n\u00e9', 0.1 + 0.2, "lint\x00run"),
        ("commit_changes", 1e-7 + 1760000001, "git_commit"),
    ]
    store = StateStore(tmp_path / "s")
    store.commit(Position(0, 3), [closed("a", 1, commands=commands)], {})
    (new,) = store.outbox.pending()
    assert new.commands == commands  # every float bit for bit, every character
    assert len(new.idempotency_key) == 32 and int(new.idempotency_key, 16) >= 0
    assert learn_body(new.judged(OutcomeRule()))["session_commands"][1] == {
        "command": 'say "hi"\n\u00e9',
        "timestamp": 0.1 + 0.2,
        "context": {"event_type": "lint\x00run"},
    }
    store.close()


def test_commit_keeps_markers_until_the_low_water_mark_passes(tmp_path):
    store = StateStore(tmp_path / "s")
    added = store.commit(
        Position(4, 10, (1, 2)),
        [closed("a", 1), closed("b", 5, n=2, learnable=False), closed("c", 2, n=1, learnable=False)],
        {"events_processed": 10},
    )
    assert added == 1
    assert store.position() == Position(4, 10, (1, 2))
    # b (too short, above the mark) is kept as a marker; c (below it) is not;
    # a is below the mark too (no replay meets it) but stays pending in the outbox.
    assert store.closed_ranges(4) == {"b": [(5, 6)]}
    assert store.closed_ranges(0) == {"a": [(1, 3)], "b": [(5, 6)]}
    assert store.status_counts() == {"pending": 1, "too_short": 1}
    store.outbox.mark_delivered(store.outbox.pending()[0].id, "p1")
    store.commit(Position(20, 20, (1, 2)), [], {})
    assert store.closed_ranges(20) == {} and store.status_counts() == {}
    assert store.counters()["events_processed"] == 10 and store.counters()["patterns_learned"] == 1
    store.close()


def test_instance_lock_refuses_a_second_holder(tmp_path):
    first = InstanceLock(tmp_path)
    first.acquire()
    assert lock_is_held(tmp_path)
    with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
        InstanceLock(tmp_path).acquire()
    first.release()
    assert not lock_is_held(tmp_path)


def test_backoff_grows_caps_and_resets():
    backoff = Backoff(cap=8.0, first=1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0
    assert all(4.0 <= d <= 8.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_sessions_arrive_with_body_key_and_are_learned(tmp_path, api):
    fill(tmp_path, [closed("s1", 1), closed("s2", 10, n=4)])
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert api.wait_for(2)
    deliverer.stop(2)
    (key1, body1), (key2, body2) = api.sessions()
    assert body1 == {
        "session_commands": [
            {"command": "open_file", "timestamp": 100.0, "context": {"event_type": "file_open"}},
            {"command": "open_file", "timestamp": 101.0, "context": {"event_type": "file_open"}},
            {"command": "save_file", "timestamp": 200.0, "context": {"event_type": "file_save"}},
        ],
        "session_outcome": "success",
        "session_id": "s1",
        "tool_id": "omnimemory-learner",
        # Scored when sent (min_quality = 0): the same score the session had when it closed.
        "quality": session_quality(["open_file", "open_file", "save_file"], 100.0, 200.0).score,
    }
    assert len(body2["session_commands"]) == 4 and key1 and key2 and key1 != key2
    store = StateStore(tmp_path)
    assert store.status_counts() == {"learned": 2} and store.counters()["patterns_learned"] == 2
    store.close()


def test_api_down_at_start_then_up_delivers_everything_once(tmp_path):
    port = free_port()
    fill(tmp_path, [closed(f"s{i}", i * 10 + 1) for i in range(50)])
    deliverer = make_deliverer(tmp_path, f"http://127.0.0.1:{port}")
    deliverer.start()
    time.sleep(1.0)
    store = StateStore(tmp_path)
    attempts = sum(row["attempts"] for row in store.outbox.entries())
    # One probe at a time: only the first session was tried while the API was down.
    assert [row["attempts"] > 0 for row in store.outbox.entries()].count(True) == 1 and attempts >= 2
    store.close()
    api = RecordingAPI(port).start()
    try:
        assert settle(tmp_path) == {"learned": 50}
        deliverer.stop(2)
        assert sorted(body["session_id"] for _, body in api.sessions()) == sorted(f"s{i}" for i in range(50))
        assert api.attempts == 50
    finally:
        api.stop()


def test_500_then_200_retries_with_the_same_idempotency_key(tmp_path, api):
    api.script = [500, 503, 429, ("garbage", "<html>proxy</html>")]
    fill(tmp_path, [closed("s1", 1)])
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert settle(tmp_path) == {"learned": 1}
    deliverer.stop(2)
    assert api.attempts == 5 and len(api.sessions()) == 1
    store = StateStore(tmp_path)
    assert store.counters()["errors"] == 4
    store.close()


def test_422_parks_the_session_as_rejected_and_goes_on(tmp_path, api):
    api.script = [("status", 422, "")]
    fill(tmp_path, [closed("bad", 1), closed("good", 10)])
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert api.wait_for(1)
    deliverer.stop(2)
    store = StateStore(tmp_path)
    rejected = store.outbox.entries()
    assert [(r["session_id"], r["status"]) for r in rejected] == [("bad", "rejected")]
    assert "422" in rejected[0]["last_error"]
    assert [b["session_id"] for _, b in api.sessions()] == ["good"]
    # The operator's retry sends it again.
    assert store.outbox.retry_rejected() == 1
    store.close()
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert api.wait_for(2)
    deliverer.stop(2)


def test_null_pattern_is_counted_not_retried(tmp_path, api):
    fill(tmp_path, [closed("s1", 1)])
    api.default = 200
    store = StateStore(tmp_path)
    pending = store.outbox.pending()[0]
    store.close()
    # An API that answers pattern_id null for everything:
    api.script = []
    from omnimemory_learner.core.fates import Verdict
    from omnimemory_learner.delivery.http import Answer
    from omnimemory_learner.delivery.learn_api import classify

    def answer(status, body=b"", headers=None):
        return Answer(status, headers or {}, body, False)

    assert classify(answer(200, b'{"pattern_id": null, "message": "too short"}')) == (Verdict.NOT_LEARNED, None)
    assert classify(answer(200, b'{"message": "x"}'))[0] == Verdict.RETRY
    assert classify(answer(404, b"{}"))[0] == Verdict.REJECTED
    assert classify(answer(302, headers={"location": "https://elsewhere/learn"})) == (
        Verdict.RETRY,
        "HTTP 302 redirect to https://elsewhere/learn (not followed: set api_url to it if that is the API)",
    )
    store = StateStore(tmp_path)
    store.outbox.mark_delivered(pending.id, None)
    assert store.counters()["sessions_not_learned"] == 1 and store.status_counts() == {"not_learned": 1}
    store.close()


def test_slow_api_past_the_timeout_is_retried(tmp_path, api):
    api.script = [("delay", 1.5)]
    fill(tmp_path, [closed("s1", 1)])
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert settle(tmp_path) == {"learned": 1}
    deliverer.stop(3)
    # The slow answer was recorded by the server after our timeout, then the retry:
    # the duplicate carries the same key, which is the documented in-flight case.
    keys = [k for k, _ in api.sessions()]
    assert len(set(keys)) == 1 and api.attempts == 2


def test_state_store_deleted_while_running_is_restored_not_lost(tmp_path, caplog):
    state_dir = tmp_path / "s"
    reader_side = StateStore(state_dir)
    reader_side.commit(Position(0, 5, (1, 2)), [closed("a", 1)], {"events_processed": 5})
    delivery_side = StateStore(state_dir, synchronous="NORMAL")
    a = delivery_side.outbox.pending()[0]
    for name in os.listdir(state_dir):
        if name.startswith("state.db"):
            os.unlink(state_dir / name)
    # The next write notices, writes the open state back, and carries on.
    reader_side.commit(Position(5, 10, (1, 2)), [closed("b", 6)], {"events_processed": 5})
    assert "was deleted while running; restored it" in caplog.text
    assert stat.S_IMODE(os.stat(state_dir / "state.db").st_mode) == 0o600
    # The other connection moves to the restored file before it writes.
    delivery_side.outbox.mark_delivered(a.id, "p1")
    reader_side.close()
    delivery_side.close()
    fresh = StateStore(state_dir)
    assert fresh.position() == Position(5, 10, (1, 2))
    assert fresh.counters()["events_processed"] == 10 and fresh.counters()["patterns_learned"] == 1
    assert sorted((row["session_id"], row["status"]) for row in fresh.outbox.entries(("pending", "learned"))) == [
        ("a", "learned"),
        ("b", "pending"),
    ]
    fresh.close()


# -- one session failing, or the API failing: no head-of-line blocking ------------------------


class Feeder:
    """New sessions entering the outbox every `every` seconds, as live activity makes them."""

    def __init__(self, state_dir, deliverer, every=0.05):
        self.state_dir, self.deliverer, self.every = state_dir, deliverer, every
        self.added = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        store = StateStore(self.state_dir)
        try:
            while not self._stop.wait(self.every):
                name = f"live{len(self.added)}"
                store.commit(Position(0, 0), [closed(name, 100000 + 10 * len(self.added))], {})
                self.added.append(name)
                self.deliverer.wake()
        finally:
            store.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def outbox_rows(state_dir, statuses=("pending", "rejected")):
    store = StateStore(state_dir)
    try:
        return {row["session_id"]: row for row in store.outbox.entries(statuses)}
    finally:
        store.close()


def test_a_session_the_api_always_fails_backs_off_alone_then_is_parked(tmp_path, api):
    api.by_session = {"poison": 500}
    fill(
        tmp_path,
        [closed(f"s{i}", i * 10 + 1) for i in range(3)]
        + [closed("poison", 41)]
        + [closed(f"s{i}", i * 10 + 1) for i in range(5, 30)],
    )
    deliverer = Deliverer(
        tmp_path, api.url, timeout=1.0, retry_max_seconds=0.3, session_retry_limit=3, session_retry_seconds=0.5
    )
    deliverer.health.backoff.first = 0.05
    started = time.monotonic()
    deliverer.start()
    with Feeder(tmp_path, deliverer) as feeder:
        # The 28 behind it are not held up (the old outbox sent the poison forever, nothing else).
        assert api.wait_for(28, timeout=10)
        first_28 = time.monotonic() - started
        assert wait_until(lambda: outbox_rows(tmp_path).get("poison", {}).get("status") == "rejected", timeout=20)
    assert api.wait_for(28 + len(feeder.added), timeout=10)
    deliverer.stop(2)
    poison = outbox_rows(tmp_path)["poison"]
    # The limit is both: at least 3 failures of its own, spanning at least 0.5 s.
    failures = poison["failures"]
    assert failures >= 3 and poison["attempts"] >= failures
    assert poison["last_error"].startswith(f"failed {failures} times over ") and "HTTP 500: " in poison["last_error"]
    assert poison["first_failed_at"] is not None
    assert "scripted 500" in poison["last_error"]
    tries = [key for key, body in api.sessions() if body["session_id"] == "poison"]
    assert tries == []  # the server never took it
    keys = set(_keys_tried(api, "poison"))
    assert len(keys) == 1  # every attempt with the same Idempotency-Key
    unique, resent = delivered_keys(api)
    assert resent == 0 and sorted(unique) == sorted([f"s{i}" for i in range(30) if i not in (3, 4)] + feeder.added)
    assert first_28 < 5, f"the sessions behind the failing one took {first_28:.1f} s"
    store = StateStore(tmp_path)
    assert store.counters()["sessions_rejected"] == 1
    # `outbox retry` sends it again, with the same key, once the API takes it.
    assert store.outbox.retry_rejected() == 1
    store.close()
    assert outbox_rows(tmp_path)["poison"]["failures"] == 0
    api.by_session = {}
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert wait_until(lambda: "poison" in delivered_keys(api)[0], timeout=10)
    deliverer.stop(2)
    assert [key for key, body in api.sessions() if body["session_id"] == "poison"] == list(keys)


def _keys_tried(api, session_id):
    return [key for key, session, _ in api.tried if session == session_id]


def delivered_keys(api):
    """session ids the API learned, and how many POSTs it learned twice (same key)."""
    keys = [key for key, _ in api.sessions()]
    return [body["session_id"] for _, body in api.sessions()], len(keys) - len(set(keys))


def test_two_sessions_that_always_fail_do_not_hold_up_the_rest(tmp_path, api):
    # Two failures in a row look like an API in trouble: the probe that
    # follows must go to another session, or the two would alternate forever.
    api.by_session = {"bad1": 500, "bad2": 503}
    fill(tmp_path, [closed("bad1", 1), closed("bad2", 11)] + [closed(f"s{i}", 100 + 10 * i) for i in range(30)])
    deliverer = make_deliverer(tmp_path, api.url, cap=0.5)
    deliverer.start()
    try:
        assert api.wait_for(30, timeout=15), f"{len(api.sessions())} of 30 arrived"
    finally:
        deliverer.stop(2)
    unique, resent = delivered_keys(api)
    assert sorted(unique) == sorted(f"s{i}" for i in range(30)) and resent == 0
    assert {row["session_id"] for row in outbox_rows(tmp_path).values()} == {"bad1", "bad2"}


def test_api_failing_everything_backs_off_as_one_and_parks_nothing(tmp_path, api):
    api.default = 500
    fill(tmp_path, [closed(f"s{i:02}", 1 + 10 * i) for i in range(50)])
    deliverer = Deliverer(
        tmp_path, api.url, timeout=1.0, retry_max_seconds=0.4, session_retry_limit=2, session_retry_seconds=0.001
    )
    deliverer.health.backoff.first = 0.05
    deliverer.start()
    time.sleep(3.0)
    failing_attempts = api.attempts
    # API-wide backoff: about one probe per 0.2-0.4 s, not 50 sessions each backing off alone.
    assert 3 <= failing_attempts <= 25, failing_attempts
    assert deliverer.health.down_since is not None
    api.default = 200
    try:
        assert settle(tmp_path) == {"learned": 50}
    finally:
        deliverer.stop(2)
    # Nothing was held against a session (at most one mark, on the last probe before the API came back).
    store = StateStore(tmp_path)
    assert store.counters()["sessions_rejected"] == 0
    store.close()
    unique, resent = delivered_keys(api)
    assert resent == 0 and sorted(unique) == [f"s{i:02}" for i in range(50)]
    # Oldest first once it answers, but for the probe that found it back and the last failed probe.
    assert _displaced(unique) <= 2, unique


def _displaced(order):
    """How many items must move to make `order` sorted (length minus the longest increasing run)."""
    best: list = []
    for item in order:
        index = bisect.bisect_left(best, item)
        best[index : index + 1] = [item]
    return len(order) - len(best)


def test_api_down_keeps_the_oldest_first_order(tmp_path):
    port = free_port()
    fill(tmp_path, [closed(f"s{i:02}", 1 + 10 * i) for i in range(20)])
    deliverer = make_deliverer(tmp_path, f"http://127.0.0.1:{port}")
    deliverer.start()
    time.sleep(1.0)
    api = RecordingAPI(port).start()
    try:
        assert settle(tmp_path) == {"learned": 20}
        deliverer.stop(2)
        assert [body["session_id"] for _, body in api.sessions()] == [f"s{i:02}" for i in range(20)]
    finally:
        api.stop()


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
def test_answers_to_retry_are_retried_with_the_same_key(tmp_path, api, status):
    api.script = [status, status]
    fill(tmp_path, [closed("s1", 1)])
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    try:
        assert settle(tmp_path) == {"learned": 1}
    finally:
        deliverer.stop(2)
    assert api.attempts == 3 and len({key for key, _, _ in api.tried}) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 418, 422])
def test_other_4xx_park_the_session_at_once(tmp_path, api, status):
    api.script = [status]
    fill(tmp_path, [closed("s1", 1), closed("s2", 10)])
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    try:
        assert api.wait_for(1)
        assert wait_until(lambda: outbox_rows(tmp_path).get("s1", {}).get("status") == "rejected")
    finally:
        deliverer.stop(2)
    assert api.attempts == 2 and outbox_rows(tmp_path)["s1"]["last_error"].startswith(f"HTTP {status}: ")


def test_a_redirect_is_not_followed_and_says_where_it_pointed(tmp_path, api, capsys):
    elsewhere = RecordingAPI().start()
    try:
        api.default = ("headers", 307, {"Location": elsewhere.url + "/learn"}, "")
        fill(tmp_path, [closed("s1", 1), closed("s2", 10)])
        deliverer = make_deliverer(tmp_path, api.url)
        deliverer.start()
        assert wait_until(lambda: api.attempts >= 3)
        deliverer.stop(2)
        assert elsewhere.attempts == 0  # the session never went where the redirect pointed
        rows = outbox_rows(tmp_path)
        assert {row["status"] for row in rows.values()} == {"pending"}  # the API's trouble, not the sessions'
        assert rows["s1"]["last_error"] == (
            f"HTTP 307 redirect to {elsewhere.url}/learn (not followed: set api_url to it if that is the API)"
        )
        # `outbox` says where it pointed, on the session's line.
        config = load_config(env={"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path)})
        assert outbox_command(config, "list", [], False, False) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if " s1 " in line)
        assert "pending" in line and f"redirect to {elsewhere.url}/learn (not followed" in line
    finally:
        elsewhere.stop()


def test_retry_after_is_read_as_seconds_or_an_http_date():
    from omnimemory_learner.delivery.http import Answer
    from omnimemory_learner.delivery.learn_api import retry_after

    now = 1_800_000_000.0

    def after(status, value):
        return retry_after(Answer(status, {"retry-after": value}, b"", False), now)

    assert after(429, "7") == 7.0 and after(503, " 0 ") == 0.0
    assert after(503, "Fri, 15 Jan 2027 08:00:30 GMT") == pytest.approx(30.0)  # 1_800_000_030
    assert after(429, "Fri, 15 Jan 2027 07:00:00 GMT") == 0.0  # a date in the past: now
    for bad in ("", "soon", "-5", "1.5e9", "Fri, 15 Jan 2027 08:00:30", "\x00"):
        assert after(429, bad) is None, bad
    assert after(500, "7") is None and after(200, "7") is None  # only 429 and 503 ask us to wait


def test_a_compressed_answer_is_decoded_within_the_cap():
    import zlib

    from omnimemory_learner.delivery.http import ANSWER_CAP, _decoded

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    bomb = b"".join(packer.compress(b"\0" * (1 << 20)) for _ in range(200)) + packer.flush()
    assert len(bomb) < 300_000  # 200 MB of zeros
    assert len(_decoded(bomb, "gzip")) == ANSWER_CAP
    assert _decoded(zlib.compress(b'{"pattern_id": "p"}'), "deflate") == b'{"pattern_id": "p"}'
    assert _decoded(b"abc", "br") == b"(a body in Content-Encoding 'br', not decoded)"


def test_retry_after_zero_from_an_api_failing_everything_still_backs_off(tmp_path, api):
    api.default = ("headers", 503, {"Retry-After": "0"}, "not ready")
    fill(tmp_path, [closed(f"s{i}", 1 + 10 * i) for i in range(20)])
    deliverer = Deliverer(tmp_path, api.url, timeout=1.0, retry_max_seconds=0.4)
    deliverer.health.backoff.first = 0.05
    deliverer.start()
    time.sleep(2.5)
    deliverer.stop(2)
    # "Retry now" is honoured as a floor, never as a licence to hammer the API.
    assert 3 <= api.attempts <= 30, api.attempts


# Reference for the property test: the table of the README, in plain lines.
def expected_verdict(status, body):
    if status == 200:
        try:
            parsed = json.loads(body)
        except ValueError:
            return "retry"
        if isinstance(parsed, dict) and "pattern_id" in parsed:
            return "not_learned" if parsed["pattern_id"] is None else "learned"
        return "retry"
    if 400 <= status < 500 and status not in (408, 409, 425, 429):
        return "rejected"
    return "retry"


@settings(max_examples=400, deadline=None)
@given(
    status=st.integers(100, 999),
    body=st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=2000).map(str.encode),
        st.builds(
            lambda p: json.dumps({"pattern_id": p}).encode(),
            st.one_of(st.none(), st.text(max_size=3000), st.integers(), st.floats()),
        ),
    ),
    location=st.text(max_size=5000),
    truncated=st.booleans(),
)
def test_every_answer_gets_the_documented_verdict_and_a_bounded_error(status, body, location, truncated):
    from omnimemory_learner.core.fates import Verdict
    from omnimemory_learner.delivery.http import Answer
    from omnimemory_learner.delivery.learn_api import classify

    verdict, detail = classify(Answer(status, {"location": location}, body, truncated))
    assert verdict == expected_verdict(status, body)
    if verdict in (Verdict.LEARNED, Verdict.NOT_LEARNED):
        assert detail is None or len(detail) <= 203
    else:
        assert detail and len(detail) <= 1000
        if 300 <= status < 400:
            assert detail.startswith(f"HTTP {status} redirect to ")


@pytest.mark.parametrize("per_operation", [True, False])
def test_the_deadline_holds_for_a_dripped_or_silent_answer_with_and_without_the_backend(
    api, monkeypatch, per_operation
):
    from omnimemory_learner.delivery import http as delivery

    if not per_operation:
        # An httpx whose transport hides its pool: the fallback (each phase's
        # timeout the time left, the body read against the deadline).
        monkeypatch.setattr(delivery, "_install_deadline", lambda transport, deadline: False)
    api.script = [("drip", 200, 100_000, 0.05), ("silent", 30)]
    with delivery.BoundedClient(1.0) as client:
        assert client.deadline_per_operation == per_operation
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(delivery.DeadlineExceeded, match="no whole answer within 1 s"):
                client.request("POST", api.url + "/learn", content=b"{}")
            assert 0.95 <= time.monotonic() - started <= 1.5
        answer = client.request("POST", api.url + "/learn", content=b'{"session_commands": [1]}')
    assert answer.status_code == 200 and answer.json()["pattern_id"] == "p000001" and not answer.truncated
    assert [entry["hung_up"] for entry in api.answers] == [True, True]


@pytest.mark.parametrize("seed", range(4))
def test_any_few_failing_sessions_anywhere_never_hold_up_the_rest(tmp_path, api, seed):
    rng = random.Random(seed)
    names = [f"s{i:02}" for i in range(40)]
    bad = sorted(rng.sample(names, rng.randint(1, 8)))
    api.by_session = {
        name: rng.choice([500, 502, 503, 408, 409, 425, 429, ("garbage", "<html>proxy</html>")]) for name in bad
    }
    fill(tmp_path, [closed(name, 1 + 10 * i) for i, name in enumerate(names)])
    deliverer = make_deliverer(tmp_path, api.url, cap=0.3)
    started = time.monotonic()
    deliverer.start()
    try:
        assert api.wait_for(len(names) - len(bad), timeout=20), f"bad {bad}: {len(api.sessions())} arrived"
    finally:
        deliverer.stop(2)
    took = time.monotonic() - started
    unique, resent = delivered_keys(api)
    assert sorted(unique) == [name for name in names if name not in bad] and resent == 0, bad
    assert took < 10, f"{took:.1f} s with {len(bad)} failing sessions {bad}"


def test_a_reloaded_timeout_holds_for_the_next_request_of_the_running_thread(tmp_path, api):
    import dataclasses

    api.script = [("silent", 30)]
    deliverer = Deliverer(tmp_path, api.url, timeout=30.0, retry_max_seconds=0.2)
    deliverer.start()  # its client is made now, with 30 s
    try:
        config = load_config(env={"HOME": str(tmp_path)})
        deliverer.apply_config(
            dataclasses.replace(config, api_url=api.url, request_timeout_seconds=1.0, retry_max_seconds=0.2)
        )
        fill(tmp_path, [closed("s1", 1)])
        deliverer.wake()
        assert api.wait_for(1, timeout=10)
    finally:
        deliverer.stop(2)
    assert api.answers[0]["hung_up"] and api.answers[0]["open_seconds"] <= 1.5


def test_connections_opening_a_new_or_old_store_at_once_all_succeed(tmp_path):
    # The reader and the delivery thread may open the store together: each
    # sees one schema, it is migrated once (tests/test_migrations.py counts),
    # and a new file turned to WAL mode by one is waited for by the others.
    import sqlite3

    problems = []

    def open_store(state_dir, barrier):
        barrier.wait()
        try:
            StateStore(state_dir).close()
        except Exception as error:  # the test reports any
            problems.append(repr(error))

    for round_ in range(30):
        state_dir = tmp_path / f"r{round_}"
        if round_ % 2:  # a store of the previous release, in WAL mode as the learner leaves it
            load_0_1_0(state_dir)
            db = sqlite3.connect(str(state_dir / "state.db"))
            db.execute("PRAGMA journal_mode=WAL")
            db.close()
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=open_store, args=(state_dir, barrier)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert problems == []


def test_a_lone_failing_session_backs_off_but_is_not_parked_without_evidence(tmp_path, api, capsys):
    # Nothing else is sent, so nothing shows the fault is the session's own.
    api.default = 500
    fill(tmp_path, [closed("alone", 1)])
    deliverer = Deliverer(
        tmp_path, api.url, timeout=1.0, retry_max_seconds=0.8, session_retry_limit=1, session_retry_seconds=0.001
    )
    deliverer.health.backoff.first = 0.05
    deliverer.start()
    time.sleep(3.0)
    deliverer.stop(2)
    row = outbox_rows(tmp_path)["alone"]
    assert row["status"] == "pending" and row["failures"] == 0
    assert 3 <= api.attempts <= 15, api.attempts  # backing off, not hammering
    # `outbox` shows when it is tried next.
    store = StateStore(tmp_path)
    store.outbox.note_failure(row["id"], "HTTP 500: later", time.time() + 3600)
    store.close()
    config = load_config(env={"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path)})
    due = outbox_rows(tmp_path)["alone"]["next_attempt_at"]
    assert outbox_command(config, "list", [], False, False) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if " alone " in line)
    assert "pending" in line and time.strftime(" %H:%M:%S ", time.localtime(due)) in line
    assert "HTTP 500: later" in line


def test_answers_that_broke_the_delivery_thread_are_ordinary_verdicts(tmp_path):
    """Hostile review: each of these escaped the thread's handlers and resent a learned session."""
    from omnimemory_learner.core.fates import Verdict
    from omnimemory_learner.delivery.http import Answer
    from omnimemory_learner.delivery.learn_api import classify, retry_after
    from omnimemory_learner.storage.state import Position, StateStore

    nested = Answer(200, {}, b"[" * 20_000, False)
    assert classify(nested)[0] == Verdict.RETRY
    verdict, pattern_id = classify(Answer(200, {}, b'{"pattern_id": "p\\ud800\\n<0>x"}', False))
    assert verdict == Verdict.LEARNED
    pattern_id.encode("utf-8")  # storable: the lone surrogate is shown as its escape
    assert pattern_id == "p\\ud800\n<0>x"
    store = StateStore(tmp_path)
    store.commit(Position(0, 3), [ClosedSession.from_commands("s", [("open_file", 1.0, "file_open")] * 3, 1, 3)], {})
    store.outbox.mark_delivered(store.outbox.pending()[0].id, pattern_id)  # raised UnicodeEncodeError before
    store.close()
    for value in ("\xb2", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "soon", "-5", "1e3"):
        assert retry_after(Answer(429, {"retry-after": value}, b"", False), 0.0) is None, value
    assert retry_after(Answer(503, {"retry-after": "7"}, b"", False), 0.0) == 7.0


def test_a_schedule_made_before_the_clock_was_stepped_back_is_not_waited_for(tmp_path, api):
    # A dual-boot RTC in local time, corrected back 8 h after a failure: the session's next attempt,
    # stored as wall-clock time, is now 8 h away, far past any backoff (retry_max_seconds 5).
    store = StateStore(tmp_path / "s")
    store.commit(Position(0, 3), [closed("stepped", 1)], {})
    (session,) = store.outbox.pending()
    store.outbox.note_failure(session.id, "HTTP 500: later", time.time() + 8 * 3600)
    store.close()
    deliverer = Deliverer(tmp_path / "s", api.url, timeout=1.0, retry_max_seconds=5)
    deliverer.start()
    try:
        assert api.wait_for(1, timeout=15), "waited for the 8 h schedule"
    finally:
        deliverer.stop(2)
    assert [body["session_id"] for _, body in api.sessions()] == ["stepped"]
