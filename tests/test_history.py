"""The history store (history.db) and the history/report commands, on real files."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time

import pytest
from helpers import ROOT

from omnimemory_learner.core.identity import session_key
from omnimemory_learner.storage.history import PRUNE_BATCH, Entry, HistoryStore

WORKFLOWS = {
    "tdd": ["open_file", "edit_code", "edit_code", "run_tests", "edit_code", "run_tests", "commit_changes"],
    "fix": ["pull_changes", "open_file", "edit_code", "save_file", "push_changes"],
    "try": ["open_file", "edit_code", "delete_file"],
}


def make_entry(number: int, names, last_time: float, outcome="success", settled="learned", **extra) -> Entry:
    times = [last_time - (len(names) - i) for i in range(len(names))]
    return Entry(
        session_key(f"s{number}", names, times),
        f"s{number}",
        times[0],
        last_time,
        names,
        outcome,
        f"p{number}" if settled == "learned" else None,
        "idle",
        settled,
        **extra,
    )


def run_cli(state_dir, *args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(ROOT),
    )


def test_entries_round_trip_and_the_ledger_answers_by_key(tmp_path):
    store = HistoryStore(tmp_path)
    entries = [make_entry(i, WORKFLOWS["tdd"], 1_700_000_000.0 + i) for i in range(5)]
    assert store.record(entries)
    assert store.count() == 5
    assert store.delivered([entries[0].key, "0" * 32, entries[4].key]) == {entries[0].key, entries[4].key}
    newest_first = store.sessions()
    assert [entry.session_id for entry in newest_first] == ["s4", "s3", "s2", "s1", "s0"]
    assert newest_first[0].commands == WORKFLOWS["tdd"]
    assert oct(os.stat(tmp_path / "history.db").st_mode & 0o777) == "0o600"
    # The same key again replaces (a rejected session retried, then learned).
    assert store.record([entries[0]._replace(settled="rejected", pattern_id=None)])
    assert store.count() == 5
    assert store.sessions(session_id="s0")[0].settled == "rejected"
    store.close()


def test_retention_by_age_and_by_count_in_small_batches(tmp_path):
    store = HistoryStore(tmp_path)
    now = 1_800_000_000.0
    old = [make_entry(i, WORKFLOWS["fix"], now - 40 * 86400 + i) for i in range(PRUNE_BATCH + 20)]
    recent = [make_entry(10_000 + i, WORKFLOWS["fix"], now - 3600 + i) for i in range(300)]
    store.record(old + recent)
    removed = [store.prune_some(days=30, max_sessions=250, now=now) for _ in range(4)]
    # Age first, one batch at a time; then the count cap takes the oldest of the rest.
    assert removed == [PRUNE_BATCH, 20 + 50, 0, 0]
    kept = store.sessions(oldest_first=True)
    assert len(kept) == 250
    assert kept[0].session_id == "s10050"
    size_before = os.path.getsize(tmp_path / "history.db")
    store.record([make_entry(20_000 + i, WORKFLOWS["fix"], now + i) for i in range(1000)])
    while store.prune_some(days=30, max_sessions=250, now=now + 2000):
        pass
    assert store.count() == 250
    assert os.path.getsize(tmp_path / "history.db") < size_before * 4
    store.close()


def test_a_corrupt_history_is_moved_aside_and_a_new_one_started(tmp_path, caplog):
    (tmp_path / "history.db").write_bytes(b"this is not a database, it is a sync tool's conflict copy" * 100)
    store = HistoryStore(tmp_path)
    assert store.problem is None
    assert store.record([make_entry(1, WORKFLOWS["try"], 1_700_000_000.0)])
    assert store.count() == 1
    aside = [path.name for path in tmp_path.iterdir() if path.name.startswith("history.db.corrupt-")]
    assert len(aside) == 1
    assert "corrupt" in caplog.text and "learning goes on" in caplog.text
    store.close()


def test_a_history_deleted_while_open_is_started_again_once(tmp_path, caplog):
    store = HistoryStore(tmp_path)
    store.record([make_entry(1, WORKFLOWS["try"], 1_700_000_000.0)])
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(str(tmp_path / "history.db") + suffix)
        except FileNotFoundError:
            pass
    assert store.record([make_entry(2, WORKFLOWS["try"], 1_700_000_001.0)])
    assert [entry.session_id for entry in store.sessions()] == ["s2"]
    assert caplog.text.count("was deleted") == 1
    store.close()


def test_an_unwritable_history_never_raises(tmp_path):
    (tmp_path / "history.db").mkdir()  # a directory where the file should be
    store = HistoryStore(tmp_path)
    assert store.problem is not None
    assert store.record([make_entry(1, WORKFLOWS["try"], 1_700_000_000.0)]) is False
    assert store.delivered(["0" * 32]) == set()
    assert store.sessions() == []


@pytest.fixture
def generated_history(tmp_path):
    """Generated activity with known workflows: tdd most often, fix next, try rarely."""
    rng = random.Random(3)
    store = HistoryStore(tmp_path)
    start = time.time() - 3 * 86400
    entries = []
    plan = ["tdd"] * 120 + ["fix"] * 60 + ["try"] * 20
    rng.shuffle(plan)
    for number, name in enumerate(plan):
        names = list(WORKFLOWS[name])
        if name == "tdd" and rng.random() < 0.5:
            names[2:2] = ["edit_code"] * rng.randrange(1, 9)  # more edits: the same folded workflow
        outcome = "failure" if name == "try" else ("failure" if number % 10 == 0 else "success")
        entries.append(make_entry(number, names, start + number * 900, outcome))
    entries.append(
        make_entry(
            999,
            ["commit_changes", "delete_file", "build_project"],
            start + 201 * 900,
            "failure",
            unusual=True,
            unusual_score=4.2,
            rarest="commit_changes -> delete_file",
        )
    )
    store.record(entries)
    store.close()
    return tmp_path, entries


def test_history_json_holds_every_session_with_its_fields(generated_history):
    state_dir, entries = generated_history
    result = run_cli(state_dir, "history", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert len(shown) == len(entries)
    assert shown[0]["session_id"] == "s999" and shown[0]["unusual"] is True
    by_id = {entry.session_id: entry for entry in entries}
    for item in shown:
        assert item["commands"] == list(by_id[item["session_id"]].commands)
        assert item["outcome"] == by_id[item["session_id"]].outcome
    limited = json.loads(run_cli(state_dir, "history", "--json", "--limit", "3").stdout)
    assert [item["session_id"] for item in limited] == [item["session_id"] for item in shown[:3]]
    one = json.loads(run_cli(state_dir, "history", "--json", "--session", "s7").stdout)
    assert [item["session_id"] for item in one] == ["s7"]


def test_report_ranks_the_most_frequent_workflow_first(generated_history, tmp_path):
    state_dir, entries = generated_history
    result = run_cli(state_dir, "report", "--json", "--dot", str(tmp_path / "graph.dot"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    top = data["workflows"][0]
    tdd = [e for e in entries if e.session_id != "s999" and "run_tests" in e.commands]
    assert top["commands"] == ["open_file", "edit_code", "run_tests", "edit_code", "run_tests", "commit_changes"]
    assert top["count"] == len(tdd) == 120
    assert top["success_rate"] == round(sum(e.outcome == "success" for e in tdd) / len(tdd), 3)
    assert data["repeated_patterns"]["folded"] > data["repeated_patterns"]["exact"]
    assert [item["session_id"] for item in data["unusual"]] == ["s999"]
    # The DOT parses with Graphviz, and its edges and counts are the data's transitions.
    dot_text = (tmp_path / "graph.dot").read_text()
    rendered = subprocess.run(["dot", "-Tsvg"], input=dot_text, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    counted = {}
    for entry in entries:
        folded = [n for i, n in enumerate(entry.commands) if i == 0 or entry.commands[i - 1] != n]
        for pair in zip(folded, folded[1:]):
            counted[pair] = counted.get(pair, 0) + 1
    in_dot = {(a, b): int(n) for a, b, n in re.findall(r'"([^"]+)" -> "([^"]+)" \[label="(\d+)"', dot_text)}
    assert in_dot == counted


def test_report_svg_without_graphviz_says_how_to_install(generated_history, tmp_path):
    state_dir, _ = generated_history
    bare = tmp_path / "bin"
    bare.mkdir()
    result = run_cli(state_dir, "report", "--svg", str(tmp_path / "g.svg"), env_extra={"PATH": str(bare)})
    assert result.returncode == 69
    assert "apt-get install graphviz" in result.stderr and "Traceback" not in result.stderr
    if subprocess.run(["sh", "-c", "command -v dot"], capture_output=True).returncode == 0:
        done = run_cli(state_dir, "report", "--svg", str(tmp_path / "g.svg"))
        assert done.returncode == 0 and (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_history_since_and_bad_times(generated_history):
    state_dir, entries = generated_history
    recent = json.loads(run_cli(state_dir, "history", "--json", "--since", "2h").stdout)
    assert all(item["last_time"] >= time.time() - 2 * 3600 - 5 for item in recent)
    assert len(recent) == sum(1 for e in entries if e.last_time >= time.time() - 2 * 3600)
    bad = run_cli(state_dir, "history", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "ISO date" in bad.stderr


def test_no_history_is_said_plainly(tmp_path):
    result = run_cli(tmp_path, "history")
    assert result.returncode == 4 and "No history yet" in result.stdout
    assert run_cli(tmp_path, "report").returncode == 4
    assert not (tmp_path / "history.db").exists()


def test_an_untrusted_session_id_is_shown_escaped(tmp_path):
    store = HistoryStore(tmp_path)
    evil = "evil\n2026-11-24 07:00:00 - ERROR - Fake\x1b[31m"
    store.record([make_entry(1, WORKFLOWS["fix"], time.time())._replace(session_id=evil)])
    store.close()
    out = run_cli(tmp_path, "history").stdout
    lines = out.splitlines()
    # The header and one session line: the newline in the id did not start a line of its own.
    assert len(lines) == 2 and "\x1b" not in out
    assert "evil\\n2026-11-24 07:00:00 - ERROR - Fake\\x1b...[4 more characters]" in lines[1]
    assert json.loads(run_cli(tmp_path, "history", "--json").stdout)[0]["session_id"] == evil


def test_a_dropped_session_is_in_the_history_and_so_never_sent_after_a_rewrite(tmp_path):
    """Review of issue 17: a session the operator dropped was not in the ledger."""
    from omnimemory_learner.core.sessions import ClosedSession
    from omnimemory_learner.storage.state import Position, StateStore

    store = StateStore(tmp_path)
    commands = [("open_file", 1_700_000_000.0 + i, "file_open") for i in range(3)]
    store.commit(Position(3, 3), [ClosedSession.from_commands("dropme", commands, 1, 3)], {})
    pending = store.outbox.pending()[0]
    store.close()
    result = run_cli(tmp_path, "outbox", "drop", str(pending.id), "--yes")
    assert result.returncode == 0, result.stderr
    settled = json.loads(run_cli(tmp_path, "history", "--json").stdout)
    assert [(entry["session_id"], entry["settled"]) for entry in settled] == [("dropme", "dropped")]
    history = HistoryStore(tmp_path)
    key = session_key("dropme", ["file_open"] * 3, [time for _, time, _ in commands])
    # What the delivery thread asks before a POST (rejected ones alone do not count as settled).
    assert history.delivered([key], excluding=("rejected",)) == {key}
    history.close()


def test_the_reading_threads_connections_keep_a_small_page_cache_the_others_the_default(tmp_path):
    """The reader's writes append: a catch-up filled 2 MB caches it never read again (issue 25's peak RSS)."""
    from omnimemory_learner.config import load_config
    from omnimemory_learner.delivery.settle import Handover
    from omnimemory_learner.pipeline import Pipeline
    from omnimemory_learner.storage.state import READER_CACHE_KIB, StateStore

    env = {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path)}
    pipeline = Pipeline(load_config(env={**env, "OMNIMEMORY_LEARNER_DB_PATH": str(tmp_path / "events.db")}))
    reader_state, handover = pipeline.state, Handover(tmp_path)
    delivery_state, delivery_history = StateStore(tmp_path, synchronous="NORMAL"), HistoryStore(tmp_path)
    try:
        assert reader_state._db.execute("PRAGMA cache_size").fetchone()[0] == -READER_CACHE_KIB
        own = handover._own.history
        assert own._open() and own._db.execute("PRAGMA cache_size").fetchone()[0] == -READER_CACHE_KIB
        # The delivery thread's (and the commands'): updates and lookups all over the files, as before.
        assert delivery_state._db.execute("PRAGMA cache_size").fetchone()[0] == -2000
        assert delivery_history._open() and delivery_history._db.execute("PRAGMA cache_size").fetchone()[0] == -2000
    finally:
        handover.close()
        pipeline.close()
        for store in (delivery_state, delivery_history):
            store.close()
