"""Deliverer.hand_over: sessions settled without being sent reach the history, queued or recorded at once."""

from __future__ import annotations

import logging
import time

from helpers import free_port, wait_until

from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery import Deliverer, settle
from omnimemory_learner.delivery.settle import Handover, Settler
from omnimemory_learner.storage.history import HistoryStore
from omnimemory_learner.storage.state import Position, StateStore


def short(name, at=None):
    at = time.time() - 60 if at is None else at  # recent: the thread's retention would prune an old one
    return ClosedSession.from_commands(name, [("open_file", at, "file_open")], 1, 1, learnable=False)


def recorded(state_dir):
    history = HistoryStore(state_dir)
    try:
        return {entry.session_id: entry.settled for entry in history.sessions()}
    finally:
        history.close()


def test_handed_over_to_a_thread_not_running_they_are_recorded_at_once_in_the_callers_thread(tmp_path):
    deliverer = Deliverer(tmp_path, "http://127.0.0.1:9")
    assert deliverer.hand_over([short("a"), short("b", time.time() - 30)]) is None
    assert recorded(tmp_path) == {"a": "too_short", "b": "too_short"}
    assert deliverer.handover.take_back() == []  # nothing was left queued
    assert deliverer.stop(1)


def test_handed_over_while_the_api_is_waited_for_they_are_recorded_at_once(tmp_path):
    store = StateStore(tmp_path)
    waiting = ClosedSession.from_commands("waiting", [("open_file", 1e9, "file_open")] * 3, 1, 3)
    store.commit(Position(0, 3), [waiting], {})
    store.close()
    deliverer = Deliverer(tmp_path, f"http://127.0.0.1:{free_port()}", timeout=1.0, retry_max_seconds=30)
    deliverer.start()
    try:
        assert wait_until(lambda: deliverer.health.retry_at is not None, 20)
        deliverer.hand_over([short("during")])
        assert recorded(tmp_path) == {"during": "too_short"}  # at once, not after the outage
    finally:
        assert deliverer.stop(2)


def test_handed_over_to_the_running_thread_they_are_queued_and_recorded_there(tmp_path, api):
    deliverer = Deliverer(tmp_path, api.url, timeout=1.0, retry_max_seconds=0.2)
    deliverer.start()
    try:
        deliverer.hand_over([short("queued")])
        assert wait_until(lambda: recorded(tmp_path) == {"queued": "too_short"}, 10)
    finally:
        assert deliverer.stop(2)


def test_the_queue_refuses_what_it_has_no_room_for(tmp_path, monkeypatch):
    monkeypatch.setattr(settle, "UNSENT_QUEUE_CAP", 2)
    handover = Handover(tmp_path)
    assert handover.offer([short("a"), short("b")]) is True
    assert handover.offer([short("c")]) is False
    assert [session.session_id for session in handover.take_back()] == ["a", "b"]
    assert handover.offer([short("c")]) is True


def test_what_is_left_queued_at_stop_is_recorded_by_stop(tmp_path):
    deliverer = Deliverer(tmp_path, "http://127.0.0.1:9")
    assert deliverer.handover.offer([short("left")])  # as if the thread had taken it and then stopped
    assert deliverer.stop(1)
    assert recorded(tmp_path) == {"left": "too_short"}
    assert deliverer.handover.take_back() == []


def test_hand_over_never_raises(tmp_path, monkeypatch, caplog):
    def broken(self, sessions):
        raise OSError("no space left on device")

    monkeypatch.setattr(Settler, "unsent", broken)
    deliverer = Deliverer(tmp_path, "http://127.0.0.1:9")
    with caplog.at_level(logging.ERROR):
        deliverer.hand_over([short("a")])
        assert deliverer.stop(1)
    assert caplog.text.count("Could not record sessions settled without being sent in the history") == 1
