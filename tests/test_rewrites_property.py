"""Property: any interleaving of restarts, replays and database rewrites delivers each session once (issue 17).

A generated history is written to a real SQLite file while the real pipeline
(reading through its read-only connection) and the real delivery thread (POSTing
to a recording API on 127.0.0.1) run in steps.  Between steps the file is
copied over itself, replaced by an older copy of itself, or emptied in place
(`DELETE FROM events; VACUUM`); the learner is restarted with sessions still
open (so the next start replays from the low-water mark), or delivery runs.

The reference is plain: every session id ever written arrives exactly once,
and no content key arrives twice.
"""

import hashlib
import os
import shutil
import sqlite3
import struct
import time

from helpers import SCHEMA_ID, SCHEMA_ROWID, RecordingAPI, create_db, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimemory_learner.config import load_config
from omnimemory_learner.delivery import Deliverer
from omnimemory_learner.pipeline import Pipeline
from omnimemory_learner.storage.state import StateStore

KINDS = ("file_open", "code_edit", "file_save")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 4)),
        st.tuples(st.sampled_from(["restart", "deliver", "copy", "wipe"]), st.just(0)),
        st.tuples(st.just("restore"), st.integers(0, 10)),  # which older copy, counted back
    ),
    min_size=1,
    max_size=12,
)


def pending_count(state_dir):
    store = StateStore(state_dir)
    try:
        return store.status_counts().get("pending", 0)
    finally:
        store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps, schema=st.sampled_from([SCHEMA_ROWID, SCHEMA_ID]))
def test_any_interleaving_of_restarts_and_rewrites_delivers_each_session_once(tmp_path_factory, plan, schema):
    work = tmp_path_factory.mktemp("rewrites")
    db = create_db(work / "memory_data.db", schema=schema)
    config = load_config(
        env={
            "HOME": str(work),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_BATCH_SIZE": "4",
        }
    )
    api = RecordingAPI().start()
    written = []  # every session id ever written
    copies = []  # earlier versions of the file, for "restore"
    start = time.time() - 3 * 3600
    pipeline = Pipeline(config)

    def deliver():
        deliverer = Deliverer(config.state_dir, api.url, timeout=2.0, retry_max_seconds=0.2)
        deliverer.start()
        try:
            assert wait_until(lambda: pending_count(config.state_dir) == 0, timeout=30)
        finally:
            assert deliverer.stop(10)

    try:
        for action, amount in plan:
            if action == "add":
                rows = []
                for _ in range(amount):
                    sid = f"s{len(written)}"
                    base = start + 1000 * len(written)  # far above the idle threshold apart
                    rows += [(repr(base + i + 0.25), kind, sid) for i, kind in enumerate(KINDS)]
                    written.append(sid)
                conn = sqlite3.connect(str(db))
                conn.executemany("INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)", rows)
                conn.commit()
                conn.close()
                shutil.copyfile(db, work / f"copy{len(copies)}")
                copies.append(work / f"copy{len(copies)}")
            elif action == "restart":  # sessions stay open: the next start replays from the low-water mark
                pipeline.close()
                pipeline = Pipeline(config)
            elif action == "deliver":
                pipeline.close_all()
                assert pipeline.commit()
                deliver()
            elif action == "copy":
                shutil.copyfile(db, str(db) + ".t")
                os.replace(str(db) + ".t", db)
            elif action == "wipe":
                conn = sqlite3.connect(str(db), isolation_level=None)
                conn.execute("DELETE FROM events")
                conn.execute("VACUUM")
                conn.close()
            elif action == "restore" and copies:
                older = copies[max(0, len(copies) - 1 - amount)]
                shutil.copyfile(older, str(db) + ".t")
                os.replace(str(db) + ".t", db)
            assert pipeline.drain()
        pipeline.close_all()
        assert pipeline.commit()
        deliver()
    finally:
        pipeline.close()
        api.stop()
    ids = [body["session_id"] for _, body in api.sessions()]
    keys = [key for key, _ in api.sessions()]
    assert sorted(ids) == sorted(written), (plan, ids)
    assert len(set(keys)) == len(keys)
    for key, body in api.sessions():  # the key is the content, computed apart from core/identity.py
        digest = hashlib.sha256()
        raw = body["session_id"].encode()
        digest.update(struct.pack("<I", len(raw)) + raw)
        for command in body["session_commands"]:
            raw = command["context"]["event_type"].encode()
            digest.update(struct.pack("<I", len(raw)) + raw + struct.pack("<d", command["timestamp"]))
        assert key == digest.hexdigest()[:32]
