"""`reconcile`: what the procedural API holds against what it was taught, then teach it the difference.

The same rules as `backfill` keep it from teaching anything twice: while the
service runs, the service teaches (it is asked with SIGUSR1 and this command
waits for what it did), since two senders of one plan would each send it;
otherwise this command takes the instance lock and teaches in its own
process.  `--dry-run` only reads (one GET /patterns, the history, the state
store) and writes nothing anywhere.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import Config
from ..core.reconcile import Reconciliation
from ..delivery.http import BoundedClient
from ..delivery.learn_api import LearnAPI, SessionIds
from ..delivery.relearn import Reasons, Relearner, Survey, survey
from ..logs import setup_logging
from ..storage.files import LOCK_FILE, STATE_FILE
from ..storage.history import HistoryStore
from ..storage.lock import AlreadyRunning, InstanceLock, lock_is_held, read_lock_pid
from ..storage.state import LISTENER_META, StateError, StateStore
from .exits import EX_CANTCREAT, EX_FAILURE, EX_NO_STATE, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from .output import echo, error, print_json, shown
from .status import last_reconcile, reconcile_line

# How long to wait for the running service to reconcile and teach what this command asked of it.
SERVICE_WAIT_SECONDS = 120.0


def reconcile_command(config: Config, dry_run: bool, as_json: bool) -> int:
    if not (config.state_dir / STATE_FILE).exists():
        error(f"omnimemory-learner has never run with state directory {shown(config.state_dir)}: nothing was taught")
        return EX_NO_STATE
    try:
        store = StateStore(config.state_dir, create=False)
    except StateError as problem:
        error(str(problem))
        return EX_NO_STATE
    history = HistoryStore(config.state_dir, create=False)
    client = BoundedClient(config.request_timeout_seconds)
    try:
        found = survey(
            LearnAPI(client, config.api_url),
            history,
            store,
            config.request_timeout_seconds,
            config.history_days,
            privacy=config.privacy,
        )
    finally:
        client.close()
        history.close()
        store.close()
    if found.found is None:
        error(f"cannot reconcile with the procedural API at {shown(config.api_url)}: {shown(found.read.problem)}")
        return EX_UNAVAILABLE
    report = _report(config, found, found.found)
    if dry_run or not found.found.sessions_lost:
        _show(report, as_json)
        return EX_FAILURE if dry_run and found.found.sessions_lost else EX_OK
    if lock_is_held(config.state_dir):
        code, taught = _ask_service(config)
    else:
        code, taught = _teach_here(config, as_json)
    report.update(taught)
    _show(report, as_json)
    return code


def _report(config: Config, found: Survey, plan: Reconciliation) -> Dict[str, Any]:
    assert found.read.counts is not None
    deficits = sorted(plan.deficits, key=lambda deficit: (-deficit.forgotten, deficit.pattern_id, deficit.outcome))
    return {
        "api_url": config.api_url,
        "patterns_held": len(found.read.counts.counts),
        "sessions_in_history": len(found.taught) - plan.ignored,
        "history_days": config.history_days,
        "sessions_lost": plan.sessions_lost,
        "patterns_lost": plan.patterns_lost,
        "forgotten_not_in_history": plan.forgotten_not_in_history,
        "unknown_patterns": plan.unknown_patterns,
        "answer_problems": list(found.read.counts.problems),
        "deficits": [deficit._asdict() for deficit in deficits],
        "taught": 0,
        "taught_by": None,
    }


def _teach_here(config: Config, as_json: bool) -> tuple:
    """The service is not running: teach in this process, under the instance lock.

    Its log lines go to standard error with --json: standard output is the JSON alone.
    """
    setup_logging(config.log_level, config.log_file, stdout=sys.stderr if as_json else None)
    lock = InstanceLock(config.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning:
        return _ask_service(config)  # started meanwhile: it teaches
    except OSError as problem:
        error(f"cannot lock the state directory: {problem}")
        return EX_CANTCREAT, {}
    client = BoundedClient(config.request_timeout_seconds)
    try:
        store = StateStore(config.state_dir)
        history = HistoryStore(config.state_dir)
        relearner = Relearner.from_config(config)
        relearner.enabled, relearner.interval = True, 0.0
        relearner.ask(Reasons.ASKED)
        api = LearnAPI(client, config.api_url, SessionIds(config.send_session_id, config.state_dir))
        while relearner.step(api, history, store, config.request_timeout_seconds, config.privacy) is not None:
            if not relearner.plan and relearner.check_at is not None:
                break  # stopped by a failure: the next reconcile starts afresh
        history.close()
        store.close()
    except StateError as problem:
        error(str(problem))
        return EX_CANTCREAT, {}
    finally:
        client.close()
        lock.release()
    last = relearner.last
    taught = {"taught": last.get("taught", 0), "taught_by": "this command"}
    return (EX_OK if _repaired(last) else EX_UNAVAILABLE), taught


def _ask_service(config: Config) -> tuple:
    """The service runs: ask it (SIGUSR1) and wait for its reconcile to be taught."""
    pid = read_lock_pid(config.state_dir / LOCK_FILE)
    if not pid:
        error("the service holds the lock but its pid cannot be read; try again")
        return EX_TEMPFAIL, {}
    if _listener(config) != pid:
        # backfill, another `reconcile`, or a service of a version before this one: SIGUSR1 would kill it.
        error(
            f"another omnimemory-learner process (pid {pid}) holds the state directory and does not reconcile "
            "when asked; try again when it is done (a service started before an upgrade: restart it)"
        )
        return EX_TEMPFAIL, {}
    asked_at = time.time()
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as problem:
        error(f"cannot ask the service (pid {pid}) to reconcile: {problem}")
        return EX_TEMPFAIL, {}
    deadline = time.monotonic() + SERVICE_WAIT_SECONDS
    note: Optional[dict] = None
    while time.monotonic() < deadline:
        note = _note(config)
        if note and (note.get("at") or 0) >= asked_at and (_repaired(note) or note.get("problem")):
            break
        time.sleep(0.2)
    taught = {"taught": (note or {}).get("taught", 0), "taught_by": f"the service (pid {pid})"}
    if not note or (note.get("at") or 0) < asked_at:
        error(f"the service (pid {pid}) did not reconcile within {SERVICE_WAIT_SECONDS:g} s; it goes on by itself")
        return EX_TEMPFAIL, taught
    return (EX_OK if _repaired(note) else EX_UNAVAILABLE), taught


def _from_state(config: Config, read: Callable[[StateStore], Any]) -> Any:
    """What `read` finds in state.db, opened read-only for it; None without one."""
    try:
        store = StateStore(config.state_dir, create=False)
    except StateError:
        return None
    try:
        return read(store)
    finally:
        store.close()


def _note(config: Config) -> Optional[dict]:
    return _from_state(config, last_reconcile)


def _listener(config: Config) -> Optional[int]:
    """The pid of the running service that hears SIGUSR1, as it said in state.db."""
    value = _from_state(config, lambda store: store.meta_value(LISTENER_META))
    return int(value) if value and value.isdigit() else None


def _repaired(note: dict) -> bool:
    return "sessions_lost" in note and note.get("taught", 0) + note.get("refused", 0) >= note["sessions_lost"]


def _show(report: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    lines = [
        f"The procedural API at {shown(report['api_url'])} holds {report['patterns_held']} patterns; the history "
        f"holds {report['sessions_in_history']} sessions it learned (within history_days {report['history_days']:g})."
    ]
    if report["deficits"]:
        lines.append(f"{'PATTERN':<18} {'OUTCOME':<8} {'TAUGHT':>7} {'HELD':>7} {'FORGOTTEN':>9}")
        for deficit in report["deficits"]:
            lines.append(
                f"{shown(deficit['pattern_id']):<18} {deficit['outcome']:<8} {deficit['taught']:>7} "
                f"{deficit['held']:>7} {deficit['forgotten']:>9}"
            )
        lines.append(f"Forgotten: {report['sessions_lost']} sessions of {report['patterns_lost']} patterns.")
    else:
        lines.append("Nothing forgotten: the API holds at least what it was taught of every pattern.")
    if report["forgotten_not_in_history"]:
        lines.append(
            f"Also forgotten, and no longer in the history (cannot be taught again): "
            f"{report['forgotten_not_in_history']} sessions."
        )
    if report["unknown_patterns"]:
        lines.append(f"Left alone: {report['unknown_patterns']} patterns whose counts could not be read.")
    if report["taught_by"]:
        lines.append(
            f"Taught again: {report['taught']} of {report['sessions_lost']} sessions, by {report['taught_by']}."
        )
    echo("\n".join(lines))


def relearning_findings(config: Config) -> List[Tuple[str, str, Optional[str]]]:
    """What doctor says of reconciling: (level "ok" | "warning", what, fix or None)."""
    if not config.reconcile:
        return [
            ("ok", "reconcile = false: a restarted API is not taught again (run 'omnimemory-learner reconcile')", None)
        ]
    note = _note(config) if (config.state_dir / STATE_FILE).exists() else None
    if not note:
        return [("ok", "no reconcile with the API yet (the service reconciles at start)", None)]
    line = reconcile_line(note)
    if "sessions_lost" not in note:
        return [("warning", line, "the API must answer GET /patterns for a restart of it to be repaired")]
    findings: List[Tuple[str, str, Optional[str]]] = []
    if not _repaired(note):
        findings.append(("warning", line, "it goes on when the API answers; or run: omnimemory-learner reconcile"))
    if note.get("forgotten_not_in_history"):
        findings.append(
            (
                "warning",
                f"{note['forgotten_not_in_history']} sessions the API forgot are no longer in the history",
                "raise history_days or history_max_sessions to keep more of what can be taught again",
            )
        )
    return findings or [("ok", line, None)]
