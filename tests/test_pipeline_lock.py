"""A lock in the middle of a backlog is not the end of it (hostile review of issue 10)."""

from __future__ import annotations

import sqlite3
import time

from helpers import create_db, insert_events

from omnimemory_learner.config import load_config
from omnimemory_learner.pipeline import Pipeline


def test_a_backlog_locked_half_way_is_not_cut_by_processing_time(tmp_path):
    db = create_db(tmp_path / "events.db", wal=False)  # rollback journal: a writer's lock blocks readers
    base = time.time() - 3600
    insert_events(
        db, [(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(base + i)), "code_edit", "A") for i in range(30)]
    )
    config = load_config(
        env={
            "HOME": str(tmp_path),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path / "state"),
            "OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": "0.02",
            "OMNIMEMORY_LEARNER_BATCH_SIZE": "10",
        }
    )
    now = [0.0]
    pipeline = Pipeline(config, clock=lambda: now[0])
    holder = sqlite3.connect(str(db), isolation_level=None)
    batches = [0]

    def between_batches():
        batches[0] += 1
        if batches[0] == 1:
            holder.execute("BEGIN EXCLUSIVE")  # the writer takes the lock after the first batch

    assert pipeline.drain(between_batches=between_batches) is False  # locked half-way
    assert pipeline.unavailable is not None and pipeline.unavailable.kind == "locked"
    now[0] += 3600  # long past the idle threshold, by processing time
    assert pipeline.close_idle() == 0  # not caught up: nothing is cut
    holder.execute("ROLLBACK")
    holder.close()
    assert pipeline.drain() is True
    pipeline.close_all("end")
    closed = pipeline._closed
    assert [len(session.pairs) for session in closed] == [30]
    pipeline.close()
