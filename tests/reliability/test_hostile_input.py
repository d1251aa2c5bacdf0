"""Hostile and malformed input: every wrong type, a million session ids, secrets in payloads."""

import hashlib
import sqlite3
import time

from helpers import IDLE_MINUTES, RecordingAPI, create_db, learner_env, start_learner, stop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnimemory_learner.config import load_config
from omnimemory_learner.pipeline import Pipeline

text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=10),  # control characters
    st.sampled_from(["file_open", "git_commit", "code_edit", "mouse_move", "", " "]),
    st.just("x" * 100_000),
)
timestamps = st.one_of(
    st.none(),
    text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.binary(max_size=20),
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["2025-11-08T05:00:00+05:30", "1e400"]),
)
values = st.one_of(
    st.none(),
    text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.binary(max_size=20),
    st.just(b"\xff\xfe not utf-8"),
)
rows = st.lists(st.tuples(timestamps, values, values), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows)
def test_any_row_is_counted_never_fatal(tmp_path_factory, batch):
    work = tmp_path_factory.mktemp("hostile")
    db = create_db(work / "m.db")
    conn = sqlite3.connect(str(db))
    for timestamp, event_type, session_id in batch:
        # Bytes go in as TEXT too: the writer may store invalid UTF-8 as text.
        conn.execute(
            "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, ?)",
            (timestamp, event_type, session_id),
        )
        if isinstance(session_id, bytes):
            conn.execute(
                "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, ?, CAST(? AS TEXT))",
                (timestamp, event_type, session_id),
            )
    conn.commit()
    count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    config = load_config(
        env={
            "HOME": str(work),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(work / "state"),
            "OMNIMEMORY_LEARNER_BATCH_SIZE": "7",
        }
    )
    pipeline = Pipeline(config)
    assert pipeline.drain()
    pipeline.close_all()
    assert pipeline.commit()
    counters = pipeline.state.counters()
    pipeline.close()
    # Every row is accounted for: processed, of another type, or malformed.
    assert counters["events_processed"] + counters["events_ignored"] + counters["events_skipped"] == count


def test_a_million_distinct_session_ids_stay_within_the_caps(tmp_path):
    db = create_db(tmp_path / "m.db")
    start = time.time() - 3600
    conn = sqlite3.connect(str(db))
    conn.executemany(
        "INSERT INTO events (timestamp, event_type, session_id) VALUES (?, 'code_edit', ?)",
        ((time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start + i / 1000)), f"id-{i}") for i in range(1_000_000)),
    )
    conn.commit()
    conn.close()
    config = load_config(
        env={
            "HOME": str(tmp_path),
            "OMNIMEMORY_LEARNER_DB_PATH": str(db),
            "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path / "state"),
        }
    )
    pipeline = Pipeline(config)
    most_open = 0

    def watch():
        nonlocal most_open
        most_open = max(most_open, pipeline.tracker.open_count)

    assert pipeline.drain(between_batches=watch)
    counters = pipeline.state.counters()
    pipeline.close()
    print(f"\nFIGURE million-ids: most open sessions {most_open} (cap {config.max_open_sessions})")
    assert most_open <= config.max_open_sessions
    assert counters["events_processed"] == 1_000_000


def test_payloads_never_reach_the_log_and_the_database_is_not_written(tmp_path):
    api = RecordingAPI().start()
    try:
        db = create_db(tmp_path / "db" / "memory_data.db")
        secret = "SECRET-PAYLOAD-d41d8cd9"
        conn = sqlite3.connect(str(db))
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        conn.executemany(
            "INSERT INTO events (timestamp, event_type, session_id, payload) VALUES (?, ?, 'p', ?)",
            [(now, kind, secret) for kind in ("file_open", "code_edit", "file_save")],
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        env = learner_env(
            tmp_path,
            api.url,
            db,
            OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=IDLE_MINUTES,
            OMNIMEMORY_LEARNER_LOG_LEVEL="DEBUG",
        )
        learner = start_learner(env)
        assert api.wait_for(1, timeout=20)
        code, out = stop(learner)
        assert code == 0
        assert secret not in out and secret not in (tmp_path / "learner.log").read_text()
        assert secret not in str(api.sessions())
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    finally:
        api.stop()
