"""The Idempotency-Key is the session's content key (issue 17, item 1).

The reference below is written out independently of core/identity.py: the
sha256 of the length-prefixed session id, then for each event its
length-prefixed type and its time as a little-endian double, first 32 hex digits.
"""

import hashlib
import struct

from helpers import wait_until

from omnimemory_learner.core.sessions import ClosedSession
from omnimemory_learner.delivery import Deliverer
from omnimemory_learner.storage.state import Position, StateStore


def reference_key(session_id, commands):
    digest = hashlib.sha256()
    raw = session_id.encode("utf-8", "surrogatepass")
    digest.update(struct.pack("<I", len(raw)) + raw)
    for _, timestamp, event_type in commands:
        raw = event_type.encode("utf-8", "surrogatepass")
        digest.update(struct.pack("<I", len(raw)) + raw + struct.pack("<d", timestamp))
    return digest.hexdigest()[:32]


COMMANDS = [
    ("open_file", 1760000000.25, "file_open"),
    ("edit \u00e9", 1760000001.5, "file_edit"),
    ("save_file", 1760000002.0, "file_save"),
]


def test_commit_keys_each_session_by_its_content_wherever_its_rows_were(tmp_path):
    store = StateStore(tmp_path / "s")
    # The same session at other rowids (a copy keeps them, a wipe reuses them) has the same key;
    # one event's time or the session id changed gives another.
    store.commit(
        Position(0, 20),
        [
            ClosedSession.from_commands("a", COMMANDS, 1, 3, "idle", True),
            ClosedSession.from_commands("a", COMMANDS, 11, 13, "idle", True),
            ClosedSession.from_commands(
                "a", COMMANDS[:2] + [("save_file", 1760000002.5, "file_save")], 14, 16, "idle", True
            ),
            ClosedSession.from_commands("b", COMMANDS, 17, 19, "idle", True),
        ],
        {},
    )
    keys = [session.idempotency_key for session in store.outbox.pending()]
    # Made when taken from the outbox (the reading thread stores none); the rewrite check sees the same.
    assert store.outbox_keys() == set(keys)
    store.close()
    assert keys[0] == keys[1] == reference_key("a", COMMANDS)
    assert keys[2] == reference_key("a", COMMANDS[:2] + [("save_file", 1760000002.5, "file_save")])
    assert keys[3] == reference_key("b", COMMANDS)
    assert len({keys[0], keys[2], keys[3]}) == 3


def test_the_api_gets_the_content_key_as_idempotency_key(tmp_path, api):
    state = tmp_path / "s"
    store = StateStore(state)
    store.commit(Position(0, 3), [ClosedSession.from_commands("a", COMMANDS, 1, 3, "idle", True)], {})
    store.close()
    deliverer = Deliverer(state, api.url, timeout=2.0, retry_max_seconds=0.2)
    deliverer.start()
    try:
        assert wait_until(lambda: len(api.received) == 1, timeout=20)
    finally:
        deliverer.stop(5)
    key, body = api.received[0]
    commands = [(c["command"], c["timestamp"], c["context"]["event_type"]) for c in body["session_commands"]]
    assert key == reference_key(body["session_id"], commands) == reference_key("a", COMMANDS)
