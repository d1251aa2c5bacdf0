"""Rows out of event-time order, end to end: the learner as a subprocess, a real SQLite file
written by another process (this one), the recording API.  Every qualifying session arrives
exactly once, cut as the reference cuts (tests/reference.py) over the true event times."""

import datetime as dt
import random
import subprocess
import time
from zoneinfo import ZoneInfo

from conftest import LONG
from helpers import (
    create_db,
    delivered_once,
    insert_events,
    learner_env,
    pending,
    run_learner,
    start_learner,
    stop,
    wait_until,
)
from reference import reference_sessions

from omnimemory_learner.core.mapping import DEFAULT_EVENT_MAP

MAPPED = ["file_open", "code_edit", "file_save", "test_run", "git_commit"]
TEN_YEARS = 10 * 365 * 86400.0


def local(t):
    """As the original writer stores it: naive local time, isoformat()."""
    return dt.datetime.fromtimestamp(t).isoformat()


def exact(t):
    """Whole microseconds, as isoformat() keeps them, so the stored text round-trips exactly."""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).timestamp()


def expected(rows, idle, min_commands=3):
    """rows: (true_time, event_type, session_id) in rowid order -> the sessions the API must get,
    each as (session_id, its commands' timestamps)."""
    events = [(rowid, sid, t) for rowid, (t, kind, sid) in enumerate(rows, 1) if kind in DEFAULT_EVENT_MAP]
    time_of = {rowid: t for rowid, _, t in events}
    return sorted(
        (sid, tuple(time_of[r] for r in session))
        for sid, session in reference_sessions(events, idle)
        if len(session) >= min_commands
    )


def got(api):
    unique_keys = {}
    for key, body in api.sessions():
        unique_keys[key] = (body["session_id"], tuple(c["timestamp"] for c in body["session_commands"]))
    return sorted(unique_keys.values())


def bursts(rng, sid, start, count, idle, lateness=0.0):
    """`count` sessions of one id from `start` on: 3-6 events 0.2-0.5 idle apart, bursts 2-4 idle
    apart. Returns (write_moment, true_time, type, sid): a late source writes each event late."""
    rows, t = [], start
    for _ in range(count):
        for _ in range(rng.randint(3, 6)):
            t += rng.uniform(0.2, 0.5) * idle
            kind = rng.choice(MAPPED + ["mouse_move"])
            t = exact(t)
            rows.append((t + lateness, t, kind, sid))
        t += rng.uniform(2, 4) * idle
    return rows


def in_write_order(rows):
    return [(t, kind, sid) for _, t, kind, sid in sorted(rows)]


def settings_env(tmp_path, api, db, idle_minutes, **extra):
    return learner_env(
        tmp_path,
        api.url,
        db,
        OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=idle_minutes,
        OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS=1,
        **extra,
    )


def finish(learner, api, tmp_path, truth, idle, timeout=60):
    assert wait_until(lambda: len(got(api)) >= len(truth) and pending(tmp_path / "state") == 0, timeout), (
        len(got(api)),
        len(truth),
    )
    time.sleep(idle + 1)  # nothing more comes
    code, out = stop(learner)
    assert code == 0, out


def test_a_late_source_at_service_start(tmp_path, api):
    """Half the sessions come from a source that writes its events 4 idle thresholds late."""
    idle = 3.0
    rng = random.Random(10)
    start = time.time() - 3600
    rows = []
    for k in range(12):
        rows += bursts(rng, f"on-time-{k}", start + k * 7, 10, idle)
        rows += bursts(rng, f"late-{k}", start + k * 7 + 3, 10, idle, lateness=4 * idle)
    rows = in_write_order(rows)
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, [(local(t), kind, sid) for t, kind, sid in rows])
    truth = expected(rows, idle)
    learner = start_learner(settings_env(tmp_path, api, db, idle / 60))
    finish(learner, api, tmp_path, truth, idle)
    _, resent = delivered_once(api)
    print(f"\nFIGURE late source at start: {len(truth)} sessions expected, {len(got(api))} learned, resent {resent}")
    assert got(api) == truth and resent == 0
    assert len(truth) > 180 and sum(1 for sid, _ in truth if sid.startswith("late")) >= 90


def test_a_bulk_flush_while_live(tmp_path, api):
    """One commit holding several sessions of one id (a daemon flushing its buffer)."""
    idle = 3.0
    db = create_db(tmp_path / "db" / "memory_data.db")
    learner = start_learner(settings_env(tmp_path, api, db, idle / 60))
    now = time.time()
    first = [(exact(now + i * 0.3), kind, "live") for i, kind in enumerate(["file_open", "code_edit", "file_save"])]
    insert_events(db, [(local(t), kind, sid) for t, kind, sid in first])
    assert wait_until(lambda: len(got(api)) == 1, 30)
    rng = random.Random(17)
    start = time.time() - 600
    flushed = in_write_order(bursts(rng, "flushed", start, 5, idle) + bursts(rng, "other", start + 1, 3, idle))
    insert_events(db, [(local(t), kind, sid) for t, kind, sid in flushed])  # one transaction
    truth = expected(first + flushed, idle)
    finish(learner, api, tmp_path, truth, idle)
    assert got(api) == truth and delivered_once(api)[1] == 0
    assert sum(1 for sid, _ in truth if sid == "flushed") == 5


def test_one_row_dated_ten_years_ahead_in_a_backfill(tmp_path, api):
    idle = 3.0
    rng = random.Random(23)
    start = time.time() - 7200
    rows = []
    for k in range(10):
        rows += bursts(rng, f"s{k}", start + k * 5, 15, idle)
    rows = in_write_order(rows)
    middle = len(rows) // 2
    t, _, sid = rows[middle]
    rows.insert(middle, (t + TEN_YEARS, "code_edit", sid))  # one row of s-something, its clock ten years off
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, [(local(t), kind, sid) for t, kind, sid in rows])
    env = settings_env(tmp_path, api, db, idle / 60)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "60", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    truth = expected(rows, idle)
    print(f"\nFIGURE future row: {len(truth)} sessions expected, {len(got(api))} learned")
    assert got(api) == truth and delivered_once(api)[1] == 0
    # Only the row's own id is touched: every other id's sessions are all there, as they happened.
    others = [s for s in truth if s[0] != sid]
    assert len(others) == len(expected([r for r in rows if r[2] != sid], idle)) > 100


def test_a_backfill_across_the_dst_fall_back_in_new_york(tmp_path, api):
    """The original writer's naive local times, 00:45 to 03:00 on the night New York repeats 01:xx."""
    idle = 60.0
    zone = ZoneInfo("America/New_York")
    fall_back = 1793512800.0  # 2026-11-01 06:00 UTC: 02:00 EDT becomes 01:00 EST
    rng = random.Random(5)
    rows = []
    for k in range(8):
        rows += bursts(rng, f"n{k}", fall_back - 4500 + k * 20, 40, idle)
    rows = in_write_order([r for r in rows if r[1] < fall_back + 2 * 3600])
    naive = [(dt.datetime.fromtimestamp(t, zone).replace(tzinfo=None).isoformat(), kind, sid) for t, kind, sid in rows]
    assert sum(1 for text, _, _ in naive if text.startswith("2026-11-01T01:")) > 300
    db = create_db(tmp_path / "db" / "memory_data.db")
    insert_events(db, naive)
    env = settings_env(tmp_path, api, db, idle / 60, TZ="America/New_York")
    result = run_learner(env, "backfill", "--until-delivered-timeout", "60", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    truth = expected(rows, idle)
    print(f"\nFIGURE DST fall-back: {len(truth)} sessions expected, {len(got(api))} learned")
    # The times sent are the instants the events happened, not an hour off.
    assert got(api) == truth and len(truth) > 60


def test_waves_of_recent_history_with_sigkills_between_them(tmp_path, api):
    """A writer appends waves whose times overlap the waves before (and an id's rows may come
    before its latest time); the learner is killed between waves, each run shorter than the
    threshold so processing time never closes a session: the cuts are the rule's alone."""
    waves = 100 if LONG else 12
    idle = 6.0
    rng = random.Random(31)
    db = create_db(tmp_path / "db" / "memory_data.db")
    env = settings_env(tmp_path, api, db, idle / 60, OMNIMEMORY_LEARNER_BATCH_SIZE=5)
    ids = [f"w{k}" for k in range(8)]
    base = time.time() - 3 * 3600
    written = []
    kills = 0
    for wave in range(waves):
        rows = []
        for sid in rng.sample(ids, 4):
            rows += bursts(rng, sid, base + wave * 10 - rng.uniform(0, 40), rng.randint(1, 2), idle)
        rows = in_write_order(rows)
        insert_events(db, [(local(t), kind, sid) for t, kind, sid in rows])
        written += rows
        learner = start_learner(env, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        learner.kill()
        learner.wait()
        kills += 1
    truth = expected(written, idle)
    learner = start_learner(env)
    finish(learner, api, tmp_path, truth, idle, timeout=120)
    _, resent = delivered_once(api)
    print(
        f"\nFIGURE waves: {waves} waves, {kills} kills, {len(written)} rows, {len(truth)} sessions expected, "
        f"{len(got(api))} learned, resent_same_key {resent}"
    )
    assert got(api) == truth
    assert resent <= kills
