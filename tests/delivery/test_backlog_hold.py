"""The delivery thread holds its POSTs while the reading thread drains a backlog (delivery/thread.py BacklogHold).

Against a real HTTP server on 127.0.0.1, real state and events databases.
"""

import threading
import time

from helpers import RecordingAPI, create_db, insert_events, wait_until

from omnimemory_learner.config import load_config
from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery import Deliverer
from omnimemory_learner.delivery.thread import BacklogHold
from omnimemory_learner.pipeline import Pipeline
from omnimemory_learner.runner import drain
from omnimemory_learner.storage.history import HistoryStore
from omnimemory_learner.storage.state import Position, StateStore


def closed(sid, first, learnable=True):
    commands = [("open_file", 100.0, "file_open"), ("edit", 101.0, "code_edit"), ("save_file", 200.0, "file_save")]
    return ClosedSession.from_commands(sid, commands, first, first + 2, "idle", learnable)


def fill(state_dir, count):
    store = StateStore(state_dir)
    store.commit(Position(0, count * 10), [closed(f"s{i}", i * 10 + 1) for i in range(count)], {})
    store.close()


def test_no_post_while_a_backlog_is_read_then_each_session_once(tmp_path):
    api = RecordingAPI().start()
    fill(tmp_path, 5)
    deliverer = Deliverer(tmp_path, api.url, timeout=1.0)
    try:
        deliverer.reading(True)
        deliverer.start()
        time.sleep(0.5)
        assert api.attempts == 0 and deliverer.alive
        deliverer.reading(False)
        assert api.wait_for(5)
        store = StateStore(tmp_path)
        assert wait_until(lambda: store.status_counts() == {"learned": 5})
        store.close()
        assert sorted(body["session_id"] for _, body in api.sessions()) == [f"s{i}" for i in range(5)]
        assert api.attempts == 5
    finally:
        deliverer.stop(2)
        deliverer.close()
        api.stop()


def test_a_hold_ends_at_its_limit_under_a_drain_that_never_ends(tmp_path):
    api = RecordingAPI().start()
    fill(tmp_path, 3)
    deliverer = Deliverer(tmp_path, api.url, timeout=1.0)
    deliverer.hold.limit = 0.4
    try:
        began = time.monotonic()
        deliverer.reading(True)  # and never False: a writer that never stops
        deliverer.start()
        assert api.wait_for(3)
        first_post = min(when for _, _, when in api.tried)
        assert first_post - began >= 0.4
        assert deliverer.hold.holding is False  # the limit passed: sessions settled without sending are queued again
    finally:
        deliverer.stop(2)
        deliverer.close()
        api.stop()


def test_a_stop_during_a_hold_is_not_kept_waiting(tmp_path):
    fill(tmp_path, 2)
    deliverer = Deliverer(tmp_path, "http://127.0.0.1:9", timeout=1.0)
    deliverer.reading(True)
    deliverer.start()
    time.sleep(0.2)
    asked = time.monotonic()
    assert deliverer.stop(5)
    assert time.monotonic() - asked < 1.0
    deliverer.close()


def test_while_holding_sessions_settled_without_sending_are_recorded_at_once(tmp_path):
    api = RecordingAPI().start()
    deliverer = Deliverer(tmp_path, api.url, timeout=1.0)
    deliverer.reading(True)
    deliverer.start()
    try:
        assert wait_until(lambda: deliverer.alive)
        deliverer.hand_over([closed("short", 1, learnable=False)])
        # Not left in the thread's queue until the drain ends (memory): in the history already.
        assert deliverer.handover.take_back() == []
        history = HistoryStore(tmp_path)
        assert history.count() == 1
        history.close()
    finally:
        deliverer.stop(2)
        deliverer.close()
        api.stop()


def test_the_hold_waits_for_the_drains_end_not_for_every_wake():
    hold = BacklogHold(limit=30.0)
    stop = threading.Event()
    hold.reading(True)
    hold.reading(True)  # a later batch does not move its start
    waited = []
    waiter = threading.Thread(target=lambda: waited.append(hold.wait(stop)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and hold.holding
    hold.reading(False)
    waiter.join(2)
    assert not waiter.is_alive() and not hold.holding


def test_only_a_drain_of_full_batches_holds(tmp_path):
    db = create_db(tmp_path / "memory_data.db")
    start = time.time() - 3600
    insert_events(db, [(repr(start + i), "file_open", f"s{i % 2}") for i in range(5)])
    env = {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_DB_PATH": str(db)}
    seen = []
    for batch_size, expected in ((2, [True, True]), (10, [])):
        state_dir = tmp_path / f"state-{batch_size}"
        config = load_config(
            env={
                **env,
                "OMNIMEMORY_LEARNER_STATE_DIR": str(state_dir),
                "OMNIMEMORY_LEARNER_BATCH_SIZE": str(batch_size),
            }
        )
        deliverer = Deliverer(state_dir, "http://127.0.0.1:9")
        pipeline = Pipeline(config)
        seen.clear()
        assert drain(pipeline, deliverer, between_batches=lambda: seen.append(deliverer.hold.holding))
        assert seen == expected and not deliverer.hold.holding
        pipeline.close()
