"""`doctor`: the original Troubleshooting section, run for the operator.

One line per check: ok, warning or problem, and for the last two what to do.
Exit 0 when nothing is a problem, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, NamedTuple, Optional

import httpx

from ..config import Config, ConfigError
from ..core.evidence import LOPSIDED_WINDOW, lopsided
from ..core.fates import TAKEN_BY_API, Fate, Replacement
from ..delivery.http import ANSWER_CAP, BoundedClient
from ..delivery.learn_api import redirect_target
from ..events import LARGEST_ROWID, database_files, events_table_problem, file_identity, open_read_only, parse_timestamp
from ..storage.files import LOCK_FILE, STATE_FILE
from ..storage.lock import lock_is_held, read_lock_pid
from ..storage.snapshot import STALE_AFTER_SECONDS, read_snapshot
from ..storage.state import StateError, StateStore
from ..watching import resolve, watch_problem
from .exits import EX_FAILURE, EX_OK
from .history import open_history
from .output import echo, print_json, shown
from .reconcile import relearning_findings
from .status import replaced_line

UNIT_NAME = "omnimemory-learner.service"
LAUNCHD_LABEL = "com.omnimemory.learner"
REQUIRED_COLUMNS = ("timestamp", "event_type", "session_id")

OK, WARNING, PROBLEM = "ok", "warning", "problem"
MESSAGE_CHARACTERS = 500


class Check(NamedTuple):
    name: str
    level: str
    message: str
    fix: Optional[str] = None


def report_config_error(error: ConfigError, as_json: bool) -> int:
    _print(
        [
            Check(
                "configuration",
                PROBLEM,
                str(error),
                "correct the value named above, then run 'omnimemory-learner check-config'",
            )
        ],
        as_json,
    )
    return EX_FAILURE


def doctor(config: Config, as_json: bool) -> int:
    checks: List[Check] = [Check("configuration", OK, f"valid ({config.config_file or 'no file; defaults'})")]
    checks += check_database(config)
    checks += check_position(config)
    checks += check_watching(config)
    checks += check_api(config)
    checks += check_service_manager()
    checks += check_paths(config)
    checks += check_outbox(config)
    checks += check_relearning(config)
    checks += check_outcomes(config)
    _print(checks, as_json)
    return EX_FAILURE if any(check.level == PROBLEM for check in checks) else EX_OK


def _print(checks: List[Check], as_json: bool) -> None:
    if as_json:
        print_json([check._asdict() for check in checks])
        return
    for check in checks:
        # Messages quote paths, URLs and the API's answers: each goes through shown() whole.
        line = f"{check.level:<8} {check.name}: {shown(check.message, MESSAGE_CHARACTERS)}"
        if check.fix:
            line += f"\n{'':9}fix: {shown(check.fix, MESSAGE_CHARACTERS)}"
        echo(line)


def check_database(config: Config) -> List[Check]:
    path = config.db_path
    start_daemon = "start the memory daemon (./omnimemory_launcher.sh start) and let it record activity"
    if not path.exists():
        return [Check("database", PROBLEM, f"{path} does not exist", start_daemon)]
    if not os.access(path, os.R_OK):
        return [Check("database", PROBLEM, f"{path} is not readable by this user", f"chmod u+r {path}")]
    # Read before the connection opens (closing a descriptor of the file would drop its locks): a WAL
    # file opened without locks (immutable) while its writer is away answers "delete".
    wal = database_files(path).wal_mode
    try:
        db = open_read_only(path, timeout=2)
        try:
            columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
            journal = "wal" if wal else db.execute("PRAGMA journal_mode").fetchone()[0]
            if not columns:
                return [Check("database", PROBLEM, f"{path} has no events table", start_daemon)]
            unusable = events_table_problem(db)
            if unusable is not None:
                return [
                    Check(
                        "database",
                        PROBLEM,
                        f"{path}: {unusable}; the learner cannot read it",
                        "the memory daemon's schema is not the one this learner reads: events must be "
                        "a table with its row id (e.g. id INTEGER PRIMARY KEY)",
                    )
                ]
            missing = [column for column in REQUIRED_COLUMNS if column not in columns]
            if missing:
                return [
                    Check(
                        "database",
                        PROBLEM,
                        f"the events table lacks columns {', '.join(missing)}",
                        "the memory daemon's schema is not the one this learner reads; update it",
                    )
                ]
            count, head = db.execute("SELECT count(*), max(rowid) FROM events").fetchone()
            newest = db.execute("SELECT timestamp FROM events ORDER BY rowid DESC LIMIT 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error as error:
        return [
            Check(
                "database",
                PROBLEM,
                f"cannot read {path}: {error}",
                "if it is corrupt, stop the memory daemon and restore or remove the file",
            )
        ]
    newest_time = parse_timestamp(newest[0]) if newest else None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest_time)) if newest_time else "none"
    found = f"{path}: {count} events, newest rowid {head or 0}, newest event {when}, journal mode {journal}"
    return [_at_largest_rowid(path, found) if head == LARGEST_ROWID else Check("database", OK, found)]


def _at_largest_rowid(path: Path, found: str) -> Check:
    return Check(
        "database",
        WARNING,
        f"{found}: a row at the largest rowid; rows written after it are not found (see ROWIDS in the man page)",
        f'stop the memory daemon, then: sqlite3 {path} "DELETE FROM events WHERE rowid = {LARGEST_ROWID}"',
    )


def check_position(config: Config) -> List[Check]:
    if not (config.state_dir / STATE_FILE).exists():
        return [
            Check(
                "position",
                WARNING,
                "the learner has not run yet (no state)",
                "start it: systemctl --user start omnimemory-learner, or omnimemory-learner backfill",
            )
        ]
    try:
        store = StateStore(config.state_dir, create=False)
        position = store.position()
        replaced = store.replaced()
        store.close()
    except StateError as error:
        return [Check("position", PROBLEM, str(error), f"check the permissions of {config.state_dir}")]
    identity = file_identity(config.db_path)
    if identity is None:
        return [Check("position", WARNING, f"read to rowid {position.replay_until}; the database is missing")]
    try:
        db = open_read_only(config.db_path, timeout=2)
        try:
            head = db.execute("SELECT max(rowid) FROM events").fetchone()[0] or 0
        finally:
            db.close()
        if not isinstance(head, int):
            raise sqlite3.DatabaseError("the row id is not an integer")
    except sqlite3.Error:
        return [Check("position", WARNING, f"read to rowid {position.replay_until}; the database is unreadable")]
    last = []
    if replaced:
        verdict = OK if replaced.get("verdict") in (Replacement.COPY, Replacement.RENUMBERED) else WARNING
        last = [Check("database replaced", verdict, replaced_line(replaced))]
    if (position.db_identity is not None and tuple(position.db_identity) != identity) or head < position.replay_until:
        return [
            Check(
                "position",
                WARNING,
                "the database was replaced since the learner last read it",
                "nothing to do: the learner compares its rows with those it read; a copy is read on from "
                "the position, a different history again from its start (nothing is sent twice)",
            ),
            *last,
        ]
    behind = head - position.replay_until
    level = OK if behind < 10000 or lock_is_held(config.state_dir) else WARNING
    return [
        Check(
            "position",
            level,
            f"read to rowid {position.replay_until} of {head} ({behind} behind)",
            None if level == OK else "the learner is not running: start it to catch up",
        ),
        *last,
    ]


def check_watching(config: Config) -> List[Check]:
    """Watch or poll: what the running service does, or what a new one would do."""
    every = f"new events are read every {config.poll_interval_seconds:g} s instead of within milliseconds"
    if not config.watch:
        return [Check("watching", OK, f"poll mode: watch = false in the configuration; {every}")]
    snapshot = read_snapshot(config.state_dir) or {}
    running = lock_is_held(config.state_dir)
    fresh = (
        running
        and snapshot.get("pid") == read_lock_pid(config.state_dir / LOCK_FILE)
        and time.time() - (snapshot.get("updated_at") or 0) <= STALE_AFTER_SECONDS
    )
    if fresh and snapshot.get("mode") == "watch":
        return [Check("watching", OK, f"watch mode: the running service watches {resolve(config.db_path).parent}")]
    if fresh:
        problem = snapshot.get("watch_problem") or "not watching"
        return [
            Check(
                "watching",
                WARNING,
                f"poll mode: the running service is not watching ({problem}); {every}",
                "it watches again by itself once the cause is gone (see its log)",
            )
        ]
    problem = watch_problem(config.db_path)
    if problem is not None:
        return [
            Check(
                "watching",
                WARNING,
                f"poll mode: {problem}; {every}",
                "start the memory daemon so that its directory exists, or keep db_path on a local disk",
            )
        ]
    return [Check("watching", OK, f"watch mode: the service watches {resolve(config.db_path).parent}")]


def check_api(config: Config) -> List[Check]:
    """GET /health and an empty POST /learn, each within request_timeout_seconds and 64 KiB, as delivery does."""
    url = config.api_url
    start_api = "start the procedural service (./omnimemory_launcher.sh start), then: curl " + url + "/health"
    try:
        with BoundedClient(config.request_timeout_seconds) as client:
            checks = _check_health(client.request("GET", url + "/health"), url, start_api)
            if checks[0].level != OK:
                return checks
            # An empty session teaches nothing: the server answers "too short".
            learn = client.request(
                "POST",
                url + "/learn",
                content=json.dumps(
                    {"session_commands": [], "session_outcome": "success", "tool_id": "omnimemory-learner-doctor"}
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
    except httpx.HTTPError as error:
        return [Check("api", PROBLEM, f"{url} is not answering: {error or type(error).__name__}", start_api)]
    return [*checks, _check_learn_contract(learn)]


def _check_health(health: Any, url: str, start_api: str) -> List[Check]:
    target = redirect_target(health)
    if target is not None:
        return [
            Check(
                "api",
                PROBLEM,
                f"GET {url}/health answered HTTP {health.status_code}, a redirect to {target} (not followed)",
                "set api_url to the procedural memory API's address",
            )
        ]
    if health.status_code != 200:
        return [Check("api", PROBLEM, f"GET {url}/health answered HTTP {health.status_code}", start_api)]
    try:
        body = health.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return [
            Check(
                "api",
                PROBLEM,
                f"GET {url}/health did not answer a JSON object; is api_url right?",
                "set api_url to the procedural memory API",
            )
        ]
    version = f"{body.get('status', '?')} ({body.get('service', '?')} {body.get('version', '')})".rstrip()
    return [Check("api", OK, f"{url}/health: {version}")]


def _check_learn_contract(learn: Any) -> Check:
    if learn.status_code == 200:
        try:
            answer = learn.json()
            contract = isinstance(answer, dict) and "pattern_id" in answer
        except ValueError:
            contract = False
        if contract:
            return Check("api contract", OK, "POST /learn accepts the learner's sessions")
        return Check(
            "api contract",
            PROBLEM,
            "POST /learn answered 200 without a pattern_id",
            "api_url does not point at the procedural memory API",
        )
    if learn.status_code == 422:
        return Check("api contract", OK, "POST /learn validates bodies (422 for an empty session)")
    target = redirect_target(learn)
    if target is not None:
        message = f"POST /learn answered HTTP {learn.status_code}, a redirect to {target} (not followed)"
    else:
        text = learn.text if len(learn.text) <= 200 else learn.text[:200] + "..."
        message = f"POST /learn answered HTTP {learn.status_code}: {text}" + (
            f" (answer longer than {ANSWER_CAP // 1024} KiB; not read further)" if learn.truncated else ""
        )
    return Check("api contract", PROBLEM, message, "check the procedural service's log")


def _run(command: List[str]) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None


_REINSTALL = (
    "run 'omnimemory-learner service install' with the omnimemory-learner that should run "
    "(it rewrites the unit or agent for that installation)"
)


def check_service_manager() -> List[Check]:
    return _check_launchd() if sys.platform == "darwin" else _check_systemd()


def _check_launchd() -> List[Check]:
    result = _run(["launchctl", "print", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"])
    plist = Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    if not plist.exists():
        return [Check("service", WARNING, f"{plist} is not installed", "run: omnimemory-learner service install")]
    from ..system.launchd import agent_program

    program = agent_program(plist)
    if program is None or not os.access(program, os.X_OK):
        return [Check("agent", PROBLEM, f"{plist} runs {program}, which is not there any more", _REINSTALL)]
    if result is None or result.returncode != 0:
        return [
            Check(
                "service",
                PROBLEM,
                f"launchd has not loaded {LAUNCHD_LABEL}",
                f"launchctl bootstrap gui/{os.getuid()} {plist}",
            )
        ]
    return [Check("service", OK, f"launchd agent {LAUNCHD_LABEL} is loaded")]


def _check_systemd() -> List[Check]:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit = config_home / "systemd" / "user" / UNIT_NAME
    packaged = Path("/usr/lib/systemd/user") / UNIT_NAME
    if not unit.exists() and packaged.exists():
        unit = packaged  # the Debian package's
    if not unit.exists():
        return [
            Check(
                "service",
                WARNING,
                f"the user unit is not installed at {unit}",
                "run: omnimemory-learner service install (or run 'omnimemory-learner run' by hand)",
            )
        ]
    executable = _exec_start(unit)
    if executable and not os.access(executable, os.X_OK):
        checks = [Check("unit file", PROBLEM, f"{unit} runs {executable}, which is not there any more", _REINSTALL)]
    else:
        checks = [Check("unit file", OK, f"{unit} runs {executable}")]
    if shutil.which("systemctl") is None:
        return [*checks, Check("service", WARNING, "systemctl is not available")]
    active = _run(["systemctl", "--user", "is-active", UNIT_NAME])
    enabled = _run(["systemctl", "--user", "is-enabled", UNIT_NAME])
    if active is None or enabled is None:
        return [*checks, Check("service", WARNING, "no systemd user manager answered")]
    return [*checks, _unit_state(active.stdout.strip(), enabled.stdout.strip())]


def _unit_state(state: str, enablement: str) -> Check:
    if state != "active":
        return Check(
            "service",
            PROBLEM,
            f"{UNIT_NAME} is {state or 'unknown'} ({enablement})",
            "systemctl --user start omnimemory-learner; then journalctl --user -u omnimemory-learner -p warning",
        )
    if enablement != "enabled":
        return Check(
            "service",
            WARNING,
            f"{UNIT_NAME} is active but {enablement}: it will not start at login",
            "systemctl --user enable omnimemory-learner",
        )
    return Check("service", OK, f"{UNIT_NAME} is active and enabled")


def _exec_start(unit: Path) -> Optional[str]:
    from ..system.systemd import exec_start_program

    program = exec_start_program(unit)  # undoes the quoting a path with blanks needs
    return str(program) if program else None


def check_paths(config: Config) -> List[Check]:
    checks = []
    state_dir = config.state_dir
    if state_dir.exists():
        mode = stat.S_IMODE(state_dir.stat().st_mode)
        if not os.access(state_dir, os.W_OK):
            checks.append(Check("state directory", PROBLEM, f"{state_dir} is not writable", f"chmod u+w {state_dir}"))
        elif mode & 0o077:
            checks.append(
                Check(
                    "state directory",
                    WARNING,
                    f"{state_dir} is mode {mode:o}, readable by others",
                    f"chmod 700 {state_dir}",
                )
            )
        else:
            loose = [
                p.name
                for p in state_dir.iterdir()
                if p.is_file() and p.name in (STATE_FILE, LOCK_FILE) and stat.S_IMODE(p.stat().st_mode) & 0o077
            ]
            checks.append(
                Check(
                    "state directory",
                    WARNING if loose else OK,
                    f"{state_dir}" + (f": {', '.join(loose)} readable by others" if loose else " (0700)"),
                    f"chmod 600 {state_dir}/*" if loose else None,
                )
            )
    else:
        parent = next((p for p in state_dir.parents if p.exists()), Path("/"))
        ok = os.access(parent, os.W_OK)
        checks.append(
            Check(
                "state directory",
                OK if ok else PROBLEM,
                f"{state_dir} will be created" if ok else f"cannot create {state_dir}",
                None if ok else f"make {parent} writable or set state_dir",
            )
        )
    log_file = config.log_file
    target = log_file if log_file.exists() else next((p for p in log_file.parents if p.exists()), Path("/"))
    if os.access(target, os.W_OK):
        checks.append(Check("log file", OK, f"{log_file} is writable"))
    else:
        checks.append(Check("log file", PROBLEM, f"{log_file} is not writable", f"check the permissions of {target}"))
    return checks


def check_relearning(config: Config) -> List[Check]:
    """The last reconcile with the API: what it found, what was taught again (cli/reconcile.py)."""
    levels = {"ok": OK, "warning": WARNING}
    return [Check("relearning", levels[level], what, fix) for level, what, fix in relearning_findings(config)]


def check_outcomes(config: Config) -> List[Check]:
    """Whether the outcomes the API was told say anything: not nearly all one (core/evidence.py lopsided)."""
    store = open_history(config)
    if store is None:
        return []
    try:
        sent = store.sessions(limit=LOPSIDED_WINDOW, settled=[str(fate) for fate in TAKEN_BY_API])
    finally:
        store.close()
    found = lopsided([(entry.outcome, entry.rule) for entry in sent])
    told = f"outcome_rule = {config.outcome_rule}, inconclusive_outcome = {config.inconclusive_outcome}"
    if found is None:
        return [Check("outcomes", OK, f"{len(sent)} newest sessions sent, not nearly all one outcome ({told})")]
    rules = ", ".join(f"{rule} {count}" for rule, count in found.rules)
    return [
        Check(
            "outcomes",
            WARNING,
            f"{found.times} of the newest {found.of} sessions sent were {found.outcome} ({told}; "
            f"by rule: {rules}): an outcome that is nearly always the same teaches the API nothing",
            "see OUTCOME in omnimemory-learner(1): map your test, build and commit events in event_map "
            "so the evidence rule has something to read; sessions without evidence are sent as "
            "inconclusive_outcome",
        )
    ]


def check_outbox(config: Config) -> List[Check]:
    if not (config.state_dir / STATE_FILE).exists():
        return []
    try:
        store = StateStore(config.state_dir, create=False)
        counts = store.status_counts()
        store.close()
    except StateError as error:
        return [Check("outbox", PROBLEM, str(error))]
    pending, rejected = counts.get(Fate.PENDING, 0), counts.get(Fate.REJECTED, 0)
    checks = []
    if rejected:
        checks.append(
            Check(
                "outbox",
                PROBLEM,
                f"{rejected} session(s) rejected by the API",
                "see 'omnimemory-learner outbox'; after fixing the API: 'omnimemory-learner outbox retry'",
            )
        )
    if pending > 100:
        checks.append(
            Check(
                "outbox",
                WARNING,
                f"{pending} session(s) waiting for delivery",
                "check that the procedural API is up; they are sent when it answers",
            )
        )
    if not checks:
        checks.append(Check("outbox", OK, f"{pending} pending, 0 rejected"))
    return checks
