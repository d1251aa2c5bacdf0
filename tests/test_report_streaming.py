"""`report`, `history` and the unusual-session model read history.db a row at a time (issue 24, item 15).

Memory: each command runs in a subprocess on a generated history, and its
peak RSS is held against the same command's on a small history (the
interpreter and the package's imports).  Exactness: the streaming counter
against the plain functions of core/graph.py, on names that take json's
slow path (quotes, backslashes, non-ASCII, more than 255 distinct names).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys

from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from omnimemory_learner.core.fates import Fate
from omnimemory_learner.core.graph import WorkflowCounter, directly_follows, recurrence, summarize, workflows
from omnimemory_learner.core.unusual import UnusualDetector
from omnimemory_learner.storage.history import HistoryStore

NAMES = ["open_file", "edit_code", "save_file", "run_tests", "commit_changes", "pull_changes", "push_changes"]
# Generous: the bound is about holding every command (hundreds of MB), not about a few MB of counts.
EXTRA_MB = 40


def write_history(state_dir, sessions, commands, seed=1):
    """history.db with `sessions` learned sessions of `commands` names each (one transaction)."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    HistoryStore(state_dir).close()
    rng = random.Random(seed)
    rows = []
    for number in range(sessions):
        names = [rng.choice(NAMES) for _ in range(commands)]
        last = 1_700_000_000.0 + number * 60
        rows.append(
            (f"{number:032x}", f"s{number}", last - 60, last, json.dumps(names, separators=(",", ":")), "success")
            + ("p", "idle", str(Fate.LEARNED), 0.5, None, int(number % 97 == 0), None, last)
        )
    db = sqlite3.connect(str(state_dir / "history.db"), isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO history (key, session_id, first_time, last_time, commands, outcome, pattern_id, "
        "closed_reason, settled, quality, unusual_score, unusual, rarest, settled_at) "
        f"VALUES ({','.join('?' * 14)})",
        rows,
    )
    db.execute("COMMIT")
    db.close()


# The child's own peak (VmHWM of its address space), said at exit: ru_maxrss of a
# child counts the pages it shared with pytest when forked.
PEAK = (
    "import atexit, runpy, sys\n"
    "def said():\n"
    "    status = open('/proc/self/status').read()\n"
    "    sys.stderr.write('\\nVmHWM ' + status.split('VmHWM:')[1].split()[0] + '\\n')\n"
    "atexit.register(said)\n"
    "if sys.argv[1] == '-m':\n"
    "    sys.argv = sys.argv[2:]\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__')\n"
    "else:\n"
    "    code, sys.argv = sys.argv[2], sys.argv[2:]\n"
    "    exec(code)\n"
)


def peak_mb(*command):
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *command],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stderr.rsplit("VmHWM ", 1)[1].split()[0]) / 1024.0


def cli_peak(state_dir, *args):
    return peak_mb("-m", "omnimemory_learner", "--state-dir", str(state_dir), *args)


def test_report_and_history_memory_does_not_grow_with_the_commands(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    write_history(small, 50, 100)
    write_history(large, 10_000, 200)  # 2,000,000 commands; held whole, 200+ MB
    for args in (("report", "--json"), ("report", "--dot", str(tmp_path / "g.dot")), ("history",)):
        baseline = cli_peak(small, *args)
        peak = cli_peak(large, *args)
        assert peak < baseline + EXTRA_MB, (args, baseline, peak)


def test_the_service_model_of_the_history_is_read_not_held(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    write_history(small, 50, 1000)
    write_history(large, 2_000, 1000)  # 2,000,000 commands, as the service finds them at start
    script = (
        "import sys; from pathlib import Path; from omnimemory_learner.delivery.settle import Settler; "
        "s = Settler(Path(sys.argv[1])); s.judge_from_history(); assert s._unusual.ready == (sys.argv[2] == 'big')"
    )
    baseline = peak_mb("-c", script, str(small), "small")
    peak = peak_mb("-c", script, str(large), "big")
    assert peak < baseline + EXTRA_MB, (baseline, peak)


def test_the_model_read_twice_from_the_history_is_the_model_of_the_list(tmp_path):
    write_history(tmp_path, 400, 30)
    store = HistoryStore(tmp_path)
    lists = store.command_lists(300, (str(Fate.LEARNED),))
    streamed = UnusualDetector(lists)
    held = UnusualDetector([entry.commands for entry in store.sessions(limit=300)])
    assert streamed.threshold == held.threshold and streamed.model.sessions == held.model.sessions == 300
    assert streamed.judge(["push_changes", "open_file"]) == held.judge(["push_changes", "open_file"])
    store.close()


ODD = st.sampled_from(['we"ird', "back\\slash", "ünï", "tab\tname", "", "open_file", "edit_code", "\ud800"])
SESSION = st.lists(st.one_of(ODD, st.sampled_from(NAMES)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(SESSION, st.booleans()), max_size=40), st.integers(0, 300))
def test_the_streaming_counter_equals_the_plain_functions(sessions, many):
    # `many` more names than a byte holds, for the wide keys.
    sessions = sessions + [([f"n{i}", f"n{i + 1}", f"n{i + 1}"], True) for i in range(many)]
    counter = WorkflowCounter()
    for names, success in sessions:
        counter.add(json.dumps(names).encode("ascii"), success)
        counter.add(
            json.dumps(names, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"), success
        )
    summaries = [summarize(names, "success" if success else "failure") for names, success in sessions for _ in (1, 2)]
    assert counter.workflows(10) == workflows(summaries, 10)
    assert counter.directly_follows() == directly_follows(summaries)
    assert counter.recurrence() == recurrence(summaries)


def _entries(sessions):
    from omnimemory_learner.storage.history import Entry

    return [
        Entry(
            f"{n:032x}",
            f"s{n}",
            1.7e9 + n,
            1.7e9 + n + 1,
            names,
            "success" if ok else "failure",
            "p",
            "idle",
            "learned",
        )
        for n, (names, ok) in enumerate(sessions)
    ]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(SESSION, st.booleans()), max_size=30), st.integers(0, 300), st.randoms())
def test_the_report_of_recorded_workflows_equals_the_plain_functions_older_rows_mixed_in(
    tmp_path_factory, sessions, many, rng
):
    """Rows recorded with their workflow keys (names table, wide past 254 ids) and rows of an older version alike."""
    from omnimemory_learner.cli.report import gather

    sessions = sessions + [([f"n{i}", f"n{i + 1}", f"n{i + 1}"], rng.random() < 0.5) for i in range(many)]
    state_dir = tmp_path_factory.mktemp("recorded")
    store = HistoryStore(state_dir)
    entries = _entries(sessions)
    cut = rng.randint(0, len(entries))
    assert store.record(entries[:cut]) and store.record(entries[cut:])  # two transactions: ids carried over
    store.close()
    db = sqlite3.connect(str(state_dir / "history.db"))
    older = [(entry.key,) for entry in entries if rng.random() < 0.3]
    db.executemany("UPDATE history SET workflow = NULL, exact = NULL WHERE key = ?", older)  # as 0.x wrote them
    db.commit()
    stored = db.execute("SELECT count(*) FROM history WHERE workflow IS NOT NULL").fetchone()[0]
    db.close()
    assert stored == len(entries) - len(older) or not entries
    store = HistoryStore(state_dir, create=False)
    data, edges = gather(store, None)
    store.close()
    summaries = [summarize(names, "success" if ok else "failure") for names, ok in sessions]
    plain = workflows(summaries, 10)
    assert [(tuple(w["commands"]), w["count"]) for w in data["workflows"]] == [(s, t.occurrences) for s, t in plain]
    assert edges == directly_follows(summaries)
    exact, folded = recurrence(summaries)
    assert data["repeated_patterns"] == {"exact": exact, "folded": folded, "sessions": len(summaries)}


def test_a_workflow_key_edited_by_hand_is_left_out_not_a_crash(tmp_path):
    from omnimemory_learner.cli.report import gather

    store = HistoryStore(tmp_path)
    assert store.record(_entries([(["open_file", "edit_code"], True), (["save_file", "run_tests"], True)]))
    store.close()
    db = sqlite3.connect(str(tmp_path / "history.db"))
    first, second = (key for (key,) in db.execute("SELECT key FROM history ORDER BY key"))
    db.execute("UPDATE history SET workflow = x'fe01' WHERE key = ?", (first,))  # an id the names table lacks
    db.execute("UPDATE history SET workflow = 'text', exact = 5 WHERE key = ?", (second,))
    db.commit()
    db.close()
    store = HistoryStore(tmp_path, create=False)
    data, edges = gather(store, None)
    store.close()
    assert data["sessions"] == 2 and data["repeated_patterns"]["sessions"] == 0 and edges == {}
