"""State store and delivery against a real HTTP server on 127.0.0.1."""

import os
import stat
import time

import pytest
from helpers import RecordingAPI, free_port

from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery import Backoff, Deliverer
from omnimemory_learner.storage.lock import AlreadyRunning, InstanceLock, lock_is_held
from omnimemory_learner.storage.state import StateStore


def closed(sid, first, n=3, learnable=True, commands=None):
    commands = commands or [("open_file", 100.0 + i, "file_open") for i in range(n - 1)] + [("save_file", 200.0, "file_save")]
    return ClosedSession.from_commands(sid, commands[:n], first, first + n - 1, "idle", learnable)


def fill(state_dir, sessions):
    store = StateStore(state_dir)
    store.commit(0, max(s.last_rowid for s in sessions), None, sessions, {})
    store.close()


def make_deliverer(state_dir, url, cap=0.2):
    deliverer = Deliverer(state_dir, url, timeout=1.0, retry_max_seconds=cap)
    deliverer.backoff.first = 0.05
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
    store.commit(0, 0, None, [closed("a", 1)], {})
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    for name in os.listdir(tmp_path / "state"):
        assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600, name
    store.close()


def test_outbox_keeps_commands_exactly_and_reads_older_json_rows(tmp_path):
    commands = [("open_file", 1760000000.123456, "file_open"), ("say \"hi\"\n\u00e9", 0.1 + 0.2, "lint\x00run"),
                ("commit_changes", 1e-7 + 1760000001, "git_commit")]
    store = StateStore(tmp_path / "s")
    store.commit(0, 3, None, [closed("a", 1, commands=commands)], {})
    # A store written before the compact form kept the commands as JSON text.
    store._db.execute(
        "INSERT INTO sessions (idempotency_key, session_id, first_rowid, last_rowid, status, outcome, n_commands,"
        " commands, closed_at) VALUES ('k-old', 'old', 4, 6, 'pending', 'success', 1, ?, 0)",
        ('[["save_file",1700000000.5,"file_save"]]',),
    )
    store._db.commit()
    new, old = store.pending()
    assert new.commands == commands  # every float bit for bit, every character
    assert old.commands == [("save_file", 1700000000.5, "file_save")]
    assert len(new.idempotency_key) == 32 and int(new.idempotency_key, 16) >= 0
    assert new.body()["session_commands"][1] == {"command": "say \"hi\"\n\u00e9", "timestamp": 0.1 + 0.2,
                                                 "context": {"event_type": "lint\x00run"}}
    store.close()


def test_commit_keeps_markers_until_the_low_water_mark_passes(tmp_path):
    store = StateStore(tmp_path / "s")
    added = store.commit(4, 10, (1, 2), [closed("a", 1), closed("b", 5, n=2, learnable=False),
                                         closed("c", 2, n=1, learnable=False)], {"events_processed": 10})
    assert added == 1
    assert store.position() == (4, 10, (1, 2))
    # b (too short, above the mark) is kept as a marker; c (below it) is not;
    # a is below the mark too (no replay meets it) but stays pending in the outbox.
    assert store.closed_ranges(4) == {"b": [(5, 6)]}
    assert store.closed_ranges(0) == {"a": [(1, 3)], "b": [(5, 6)]}
    assert store.status_counts() == {"pending": 1, "too_short": 1}
    store.mark_delivered(store.pending()[0].id, "p1")
    store.commit(20, 20, (1, 2), [], {})
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
        "session_outcome": "success", "session_id": "s1", "tool_id": "omnimemory-learner",
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
    attempts = sum(row["attempts"] for row in store.outbox())
    # One probe at a time: only the first session was tried while the API was down.
    assert [row["attempts"] > 0 for row in store.outbox()].count(True) == 1 and attempts >= 2
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
    rejected = store.outbox()
    assert [(r["session_id"], r["status"]) for r in rejected] == [("bad", "rejected")]
    assert "422" in rejected[0]["last_error"]
    assert [b["session_id"] for _, b in api.sessions()] == ["good"]
    # The operator's retry sends it again.
    assert store.retry_rejected() == 1
    store.close()
    deliverer = make_deliverer(tmp_path, api.url)
    deliverer.start()
    assert api.wait_for(2)
    deliverer.stop(2)


def test_null_pattern_is_counted_not_retried(tmp_path, api):
    fill(tmp_path, [closed("s1", 1)])
    api.default = 200
    store = StateStore(tmp_path)
    pending = store.pending()[0]
    store.close()
    # An API that answers pattern_id null for everything:
    api.script = []
    from omnimemory_learner.delivery import Answer, Verdict, classify

    def answer(status, body=b"", headers=None):
        return Answer(status, headers or {}, body, False)

    assert classify(answer(200, b'{"pattern_id": null, "message": "too short"}')) == (Verdict.NOT_LEARNED, None)
    assert classify(answer(200, b'{"message": "x"}'))[0] == Verdict.RETRY
    assert classify(answer(404, b"{}"))[0] == Verdict.REJECTED
    assert classify(answer(302, headers={"location": "https://elsewhere/learn"})) == (
        Verdict.RETRY, "HTTP 302 redirect to https://elsewhere/learn (not followed: set api_url to it if that is the API)")
    store = StateStore(tmp_path)
    store.mark_delivered(pending.id, None)
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
    reader_side.commit(0, 5, (1, 2), [closed("a", 1)], {"events_processed": 5})
    delivery_side = StateStore(state_dir, synchronous="NORMAL")
    a = delivery_side.pending()[0]
    for name in os.listdir(state_dir):
        if name.startswith("state.db"):
            os.unlink(state_dir / name)
    # The next write notices, writes the open state back, and carries on.
    reader_side.commit(5, 10, (1, 2), [closed("b", 6)], {"events_processed": 5})
    assert "was deleted while running; restored it" in caplog.text
    assert stat.S_IMODE(os.stat(state_dir / "state.db").st_mode) == 0o600
    # The other connection moves to the restored file before it writes.
    delivery_side.mark_delivered(a.id, "p1")
    reader_side.close()
    delivery_side.close()
    fresh = StateStore(state_dir)
    assert fresh.position() == (5, 10, (1, 2))
    assert fresh.counters()["events_processed"] == 10 and fresh.counters()["patterns_learned"] == 1
    assert sorted((row["session_id"], row["status"]) for row in fresh.outbox(("pending", "learned"))) == [
        ("a", "learned"), ("b", "pending")]
    fresh.close()
