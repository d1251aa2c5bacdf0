"""The ledger's horizon: what the history pruned is never taken for "not sent before".

Pruning by count (history_max_sessions) removes sessions of hours ago, and
raising history_days brings nothing back: after a rewritten (restored)
events database, sessions the ledger may have forgotten are not sent again.
Real files, the real learner (backfill) as a subprocess, a recording API.
"""

import json
import shutil
import time

import pytest
from helpers import create_db, insert_events, learner_env, run_learner

from omnimemory_learner.core.fates import Fate
from omnimemory_learner.storage.history import Entry, HistoryStore


def _entry(key, last_time):
    return Entry(key, "s", last_time - 2, last_time, ["a", "b", "c"], "success", "p", "idle", Fate.LEARNED)


def test_pruning_moves_the_horizon_past_the_newest_session_it_removed(tmp_path):
    history = HistoryStore(tmp_path)
    now = time.time()
    history.record([_entry(f"k{i}", now - 3600 + i) for i in range(10)])
    assert history.ledger_horizon() is None
    while history.prune_some(days=30, max_sessions=4, now=now):
        pass
    assert history.count() == 4 and history.ledger_horizon() == now - 3600 + 5  # by count, an hour ago
    history.record([_entry("old", now - 40 * 86400)])
    while history.prune_some(days=30, max_sessions=100, now=now):
        pass
    assert history.ledger_horizon() == now - 3600 + 5  # never moves back
    history.close()


def _sessions(db, ids, start):
    """Three events per session id, 1 s apart; sessions 30 s apart (the idle threshold is 1.2 s)."""
    rows = []
    for number, session_id in enumerate(ids):
        base = start + number * 30
        for offset, kind in enumerate(("file_open", "code_edit", "file_save")):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(base + offset))
            rows.append((stamp, kind, session_id))
    insert_events(db, rows)


def _backfill(env):
    result = run_learner(env, "backfill", "--until-delivered-timeout", "30", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _prune_as_the_service_does(state_dir, days, max_sessions):
    history = HistoryStore(state_dir)
    while history.prune_some(days, max_sessions):
        pass
    history.close()


@pytest.mark.parametrize("case", ["pruned by count", "history_days raised"])
def test_a_restored_backup_after_a_prune_teaches_nothing_twice(tmp_path, api, case):
    db = create_db(tmp_path / "db" / "memory_data.db")
    backup = tmp_path / "backup.db"
    if case == "pruned by count":
        start, days, max_sessions, later_days = time.time() - 12 * 3600, 30, 20, 30
    else:
        start, days, max_sessions, later_days = time.time() - 50 * 86400, 30, 100_000, 365
    _sessions(db, [f"s{i}" for i in range(40)], start)
    shutil.copyfile(db, backup)  # the older backup: the first 40 sessions
    _sessions(db, [f"s{i}" for i in range(40, 61)], start + 40 * 30)
    env = learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES="0.02",
        OMNIMEMORY_LEARNER_HISTORY_DAYS=str(days),
        OMNIMEMORY_LEARNER_HISTORY_MAX_SESSIONS=str(max_sessions),
    )
    _backfill(env)
    assert len(api.received) == 61
    _prune_as_the_service_does(tmp_path / "state", days, max_sessions)
    shutil.copyfile(backup, tmp_path / "restored.db")
    (tmp_path / "restored.db").replace(db)  # a new file at the path, with fewer rows: a rewritten history
    env["OMNIMEMORY_LEARNER_HISTORY_DAYS"] = str(later_days)
    _backfill(env)
    sent = [body["session_id"] for _, body in api.received]
    assert len(sent) == 61 and len(set(sent)) == 61, f"{len(sent) - len(set(sent))} taught twice"
    status = json.loads(run_learner(env, "status", "--json").stdout)
    assert status["stats"]["sessions_past_horizon"] + status["stats"]["sessions_already_delivered"] >= 40
