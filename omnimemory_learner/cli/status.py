"""`status`: is the learner running, and what has it done."""

from __future__ import annotations

import json
import time
from typing import Optional

from ..config import Config
from ..core.fates import Fate, Replacement
from ..events import EventReader, Unavailable
from ..storage.files import LOCK_FILE, STATE_FILE
from ..storage.lock import lock_is_held, read_lock_pid
from ..storage.snapshot import STALE_AFTER_SECONDS, read_snapshot, statistics
from ..storage.sqlite_file import StateNotMade
from ..storage.state import RECONCILE_META, StateError, StateStore
from .exits import EX_NO_STATE, EX_NOT_RUNNING, EX_OK
from .output import echo, error, print_json, shown


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}min {seconds % 60}s ago"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}min ago"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h ago"


def _when(timestamp: Optional[float]) -> str:
    if not timestamp:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) + f" ({_ago(time.time() - timestamp)})"


def collect_status(config: Config) -> Optional[dict]:
    """The status object, or None when the learner never ran with this state."""
    if not (config.state_dir / STATE_FILE).exists():
        return None
    running = lock_is_held(config.state_dir)
    pid = read_lock_pid(config.state_dir / LOCK_FILE) if running else None
    snapshot = read_snapshot(config.state_dir) or {}
    # Running, but not publishing: waiting for an unwritable state directory, or hung.
    stale = running and (
        snapshot.get("pid") != pid or time.time() - (snapshot.get("updated_at") or 0) > STALE_AFTER_SECONDS
    )
    if stale:
        snapshot = {key: value for key, value in snapshot.items() if key in ("stats", "updated_at")}
    store = StateStore(config.state_dir, create=False)
    try:
        active = snapshot.get("active_sessions", 0) if running else 0
        stats = statistics(store, active)
        counters = store.counters()
        for name in ("sessions_already_delivered", "sessions_past_horizon"):  # the delivered ledger's skips
            stats[name] = counters.get(name, 0)
        replaced = store.replaced()
        reconciled = last_reconcile(store)
    finally:
        store.close()
    stats["last_event_time"] = snapshot.get("stats", {}).get("last_event_time")
    head = None
    database_problem = None
    reader = EventReader(config.db_path)
    try:
        head = reader.head()
    except Unavailable as problem:
        database_problem = str(problem)
    finally:
        reader.close()
    return {
        "running": running,
        "active_sessions": active,
        "stats": stats,
        "pid": pid,
        "snapshot_stale": stale,
        "since": snapshot.get("started_at") if running else None,
        "mode": snapshot.get("mode") if running else None,
        "watch_problem": snapshot.get("watch_problem") if running else None,
        "service_manager": snapshot.get("service_manager") if running else None,
        "snapshot_updated_at": snapshot.get("updated_at"),
        "db_path": str(config.db_path),
        "api_url": config.api_url,
        "state_dir": str(config.state_dir),
        "db_head": head,
        "behind": max(0, head - stats["read_position"]) if head is not None else None,
        "database_problem": database_problem,
        # The last time the database was found replaced: {"verdict": a Replacement, "why", "at"}.
        "db_replaced": replaced,
        "api_down_since": snapshot.get("api_down_since") if running else None,
        # The last reconcile with the API (delivery/relearn.py): what it found, what was taught again.
        "reconcile": reconciled,
    }


def status(config: Config, as_json: bool) -> int:
    try:
        report = collect_status(config)
    except StateNotMade:
        report = None  # the service's first start, a moment before its state store has its tables
    except StateError as problem:
        error(str(problem))
        return EX_NO_STATE
    if report is None:
        running = lock_is_held(config.state_dir)
        if as_json:
            print_json({"running": running, "active_sessions": 0, "stats": None, "state_dir": str(config.state_dir)})
        elif running:
            echo(f"omnimemory-learner is starting with state directory {shown(config.state_dir)}")
        else:
            echo(f"omnimemory-learner has never run with state directory {shown(config.state_dir)}")
        return EX_OK if running else EX_NO_STATE
    if as_json:
        print_json(report)
    else:
        echo(_human_status(report))
    return EX_OK if report["running"] else EX_NOT_RUNNING


def _human_status(report: dict) -> str:
    stats = report["stats"]
    if report["running"] and report["snapshot_stale"]:
        head = (
            f"active (running), pid {report['pid']}, but not publishing its status (last "
            f"{_when(report['snapshot_updated_at'])}): it may be "
            "waiting for its state directory, or hung; see its log or `omnimemory-learner doctor`"
        )
    elif report["running"]:
        manager = shown(report["service_manager"] or "none")
        mode = f"{shown(report['mode'])} mode" + (
            f" ({shown(report['watch_problem'])})" if report.get("watch_problem") else ""
        )
        head = (
            f"active (running), pid {report['pid']}, {mode}, under "
            f"{'no service manager' if manager == 'none' else manager}, since {_when(report['since'])}"
        )
    else:
        head = "inactive (not running)"
    if report["db_head"] is None:
        position = f"read to rowid {stats['read_position']}; database not readable: {shown(report['database_problem'])}"
    else:
        position = f"read to rowid {stats['read_position']} of {report['db_head']} ({report['behind']} behind)"
    last_error = stats["last_error"]
    lines = [
        f"omnimemory-learner: {head}",
        f"       Database: {shown(report['db_path'])}",
        f"       Position: {position}",
        f"            API: {shown(report['api_url'])}"
        + (f" (down since {_when(report['api_down_since'])})" if report.get("api_down_since") else ""),
        f"  Open sessions: {report['active_sessions']}",
        f"         Events: {stats['events_processed']} processed, {stats['events_skipped']} malformed skipped,"
        f" {stats['events_ignored']} of other types, {stats.get('events_excluded', 0)} excluded by the rules",
        f"       Sessions: {stats['sessions_created']} created, {stats['patterns_learned']} learned,"
        f" {stats['sessions_too_short']} too short, {stats.get('sessions_low_quality', 0)} below min_quality,"
        f" {stats['sessions_not_learned']} not learned by the API, {stats.get('sessions_evicted', 0)} closed early"
        " by the open-session cap",
        f"         Outbox: {stats['outbox_pending']} pending, {stats[Fate.REJECTED]} rejected,"
        f" {stats.get('sessions_already_delivered', 0)} not sent again (delivered before),"
        f" {stats.get('sessions_past_horizon', 0)} not sent (older than the history's horizon)",
        f"         Errors: {stats['errors']}",
        f"     Last event: {_when(stats['last_event_time'])}",
        f"  Last delivery: {_when(stats['last_delivery_at'])}",
        f"     Last error: {(_when(last_error['at']) + ': ' + shown(last_error['message'])) if last_error else 'none'}",
    ]
    replaced = report.get("db_replaced")
    if replaced:
        lines.insert(2, "       Replaced: " + replaced_line(replaced))
    lines.insert(
        lines.index(next(line for line in lines if line.startswith("         Outbox"))) + 1,
        "     Relearning: " + reconcile_line(report.get("reconcile")),
    )
    return "\n".join(lines)


def last_reconcile(store: StateStore) -> Optional[dict]:
    """The last reconcile's note (delivery/relearn.py), or None when there was none."""
    value = store.meta_value(RECONCILE_META)
    try:
        note = json.loads(value) if value else None
    except ValueError:
        return None
    return note if isinstance(note, dict) else None


def reconcile_line(note: Optional[dict]) -> str:
    """The last reconcile in one line (status and doctor)."""
    if not note:
        return "no reconcile with the API yet"
    if "sessions_lost" not in note:
        return f"cannot reconcile yet: {shown(str(note.get('problem')))}"
    when = f"last reconcile {_when(note.get('at'))} ({shown(str(note.get('why') or 'asked'))})"
    lost, taught = note.get("sessions_lost", 0), note.get("taught", 0)
    found = (
        f"the API had forgotten {lost} sessions of {note.get('patterns_lost', 0)} patterns, {taught} taught again"
        if lost
        else f"the API held all {note.get('patterns_held', 0)} patterns' counts"
    )
    beyond = note.get("forgotten_not_in_history", 0)
    tail = f"; {beyond} forgotten sessions are no longer in the history" if beyond else ""
    problem = f"; then: {shown(str(note['problem']))}" if note.get("problem") else ""
    return f"{when}: {found}{tail}{problem}"


def replaced_line(replaced: dict) -> str:
    """What the learner found the last time the database was replaced (status and doctor)."""
    if replaced.get("verdict") == Replacement.COPY:
        return (
            f"by a copy with the same rows, {_when(replaced.get('at'))}: the same history, "
            f"{shown(str(replaced.get('why')))}"
        )
    if replaced.get("verdict") == Replacement.RENUMBERED:
        return (
            f"renumbered, {_when(replaced.get('at'))} ({shown(str(replaced.get('why')))}): the same history, "
            "read on; the open sessions kept their events"
        )
    return (
        f"by a different history, {_when(replaced.get('at'))} ({shown(str(replaced.get('why')))}): read again "
        "from its start; sessions delivered before were not sent again"
    )
