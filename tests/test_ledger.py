"""The delivered ledger (issue 17, item 2): a settled content key is never POSTed again.

Real state and history files, the real delivery thread, a recording API on 127.0.0.1.
"""

import time

from helpers import wait_until

from omnimemory_learner.core.fates import Fate
from omnimemory_learner.core.identity import key_of_pairs
from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery import Deliverer
from omnimemory_learner.storage.history import Entry, HistoryStore
from omnimemory_learner.storage.state import Position, StateStore


def session(sid, start):
    commands = [
        ("open_file", start, "file_open"),
        ("edit", start + 1, "code_edit"),
        ("save_file", start + 2, "file_save"),
    ]
    return ClosedSession.from_commands(sid, commands, 1, 3, "idle", True)


def entry(closed, settled):
    return Entry(
        key_of_pairs(closed.session_id, closed.pairs, closed.times),
        closed.session_id,
        closed.times[0],
        closed.times[-1],
        closed.names,
        "success",
        None,
        "idle",
        settled,
        0.5,
        None,
        False,
        None,
    )


def test_a_key_the_history_settled_is_marked_and_counted_without_a_post(tmp_path, api):
    state = tmp_path / "s"
    sent_before, rejected_before, new = session("a", 1000.0), session("b", 2000.0), session("c", 3000.0)
    history = HistoryStore(state)
    # a was learned (the ledger holds it); b was rejected once: `outbox retry` must still be able to send it.
    history.record([entry(sent_before, Fate.LEARNED), entry(rejected_before, Fate.REJECTED)])
    history.close()
    store = StateStore(state)
    store.commit(Position(0, 3), [sent_before, rejected_before, new], {})
    store.close()
    deliverer = Deliverer(state, api.url, timeout=2.0, retry_max_seconds=0.2)
    deliverer.start()
    try:
        assert wait_until(lambda: len(api.received) == 2, timeout=20)
        store = StateStore(state)
        assert wait_until(lambda: store.status_counts().get("pending", 0) == 0, timeout=20)
    finally:
        deliverer.stop(5)
    time.sleep(0.5)  # nothing more arrives
    assert sorted(body["session_id"] for _, body in api.received) == ["b", "c"]
    assert [row["session_id"] for row in store.outbox.entries(statuses=("already_delivered",))] == ["a"]
    assert store.status_counts().get("already_delivered") == 1 and "rejected" not in store.status_counts()
    assert store.counters()["sessions_already_delivered"] == 1
    store.close()


def test_history_delivered_leaves_out_the_settlements_asked(tmp_path):
    history = HistoryStore(tmp_path)
    learned, rejected = session("a", 1.0), session("b", 5.0)
    history.record([entry(learned, Fate.LEARNED), entry(rejected, Fate.REJECTED)])
    keys = [entry(learned, Fate.LEARNED).key, entry(rejected, Fate.REJECTED).key, "f" * 32]
    assert history.delivered(keys) == set(keys[:2])
    assert history.delivered(keys, excluding=(Fate.REJECTED,)) == {keys[0]}
    history.close()
