"""The `omnimemory-learner` command: parse, load the configuration, dispatch.

Commands: run (default), status, doctor, backfill, reconcile, check-config, outbox, history,
report, service (install, uninstall, status).
Exit statuses are in exits.py; what a person reads goes through output.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from .. import __version__
from ..config import Config, ConfigError, default_config_path, load_config, to_toml
from ..logs import print_error
from ..system import LAUNCHD, service_manager
from .exits import EX_CANTCREAT, EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_USAGE
from .output import echo

log = logging.getLogger("omnimemory_learner")


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """The global flags, accepted before or after the command."""
    default = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument("--config", metavar="PATH", default=default, help="configuration file (TOML)")
    group.add_argument("--db", metavar="PATH", default=default, help="memory daemon database")
    group.add_argument("--api-url", metavar="URL", default=default, help="procedural memory API")
    group.add_argument("--state-dir", metavar="DIR", default=default, help="where the learner keeps its state")
    group.add_argument("--log-level", metavar="LEVEL", default=default, help="DEBUG, INFO, WARNING or ERROR")
    group.add_argument("--idle-minutes", metavar="MINUTES", default=default, help="session idle threshold")
    group.add_argument("--poll-seconds", metavar="SECONDS", default=default, help="database poll interval")
    group.add_argument("--min-commands", metavar="N", default=default, help="fewest commands worth learning")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnimemory-learner",
        description="Learns workflow patterns from OmniMemory activity events.",
        parents=[_global_options(suppress=False)],
        epilog="See omnimemory-learner(1) and omnimemory-learner.toml(5).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = [_global_options(suppress=True)]
    _add_running_commands(commands, common)
    _add_outbox_command(commands, common)
    _add_history_commands(commands, common)
    _add_service_command(commands, common)
    return parser


def _add_running_commands(commands: Any, common: List[argparse.ArgumentParser]) -> None:
    """run, status, doctor, backfill, reconcile, check-config."""
    commands.add_parser(
        "run",
        parents=common,
        help="run the service in the foreground (the default)",
        description="Run the service in the foreground until SIGTERM or SIGINT.",
    )
    status = commands.add_parser(
        "status",
        parents=common,
        help="is it running, and what has it learned",
        description="Show whether the service runs and its statistics. "
        "Exit 0 running, 3 not running, 4 no state at all.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = commands.add_parser(
        "doctor",
        parents=common,
        help="check the set-up and say what to fix",
        description="Check configuration, database, API, service manager and state; exit 0 when all pass, 1 otherwise.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    backfill = commands.add_parser(
        "backfill",
        parents=common,
        help="learn from the history already recorded",
        description="Read the database to its end, close every session, deliver "
        "everything and exit. Refuses while the service runs.",
    )
    backfill.add_argument(
        "--until-delivered-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="give up waiting for the API after SECONDS (exit 69, all kept pending)",
    )
    reconcile = commands.add_parser(
        "reconcile",
        parents=common,
        help="teach the API again what it forgot",
        description="Compare what the procedural API holds (GET /patterns) with what the history says it "
        "learned, pattern by pattern, then teach it again the sessions it forgot. While the service runs, "
        "the service is asked to do it. Exit 0 nothing forgotten or all taught again, 1 --dry-run found "
        "something forgotten, 4 no state, 69 the API cannot be reconciled with, 75 the service did not answer.",
    )
    reconcile.add_argument("--dry-run", action="store_true", help="show what would be taught, teach nothing")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser(
        "check-config",
        parents=common,
        help="print the effective configuration",
        description="Print the effective configuration as TOML with the origin of each "
        "value; exit 78 when it is invalid.",
    )


def _add_outbox_command(commands: Any, common: List[argparse.ArgumentParser]) -> None:
    outbox = commands.add_parser(
        "outbox",
        parents=common,
        help="list, retry or drop undelivered sessions",
        description="Show pending and rejected sessions; retry rejected ones; drop one.",
    )
    outbox.add_argument("action", nargs="?", choices=("list", "retry", "drop"), default="list")
    outbox.add_argument("ids", nargs="*", type=int, metavar="ID", help="session ids (retry: default all)")
    outbox.add_argument("--yes", action="store_true", help="drop without asking")
    outbox.add_argument("--json", action="store_true", help="machine-readable output (list)")


def _add_history_commands(commands: Any, common: List[argparse.ArgumentParser]) -> None:
    """history and report: what the learner settled, read from history.db."""
    history = commands.add_parser(
        "history",
        parents=common,
        help="the sessions the learner settled",
        description="One line per settled session, newest first. WHEN is an ISO "
        "date or date-time (local time) or a time ago: 30m, 2h, 7d, 1w.",
    )
    history.add_argument("--since", metavar="WHEN", help="sessions whose last event is at or after WHEN")
    history.add_argument("--until", metavar="WHEN", help="sessions whose last event is before WHEN")
    history.add_argument("--session", metavar="ID", help="only this session id")
    history.add_argument("--limit", metavar="N", type=int, help="at most N sessions")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    report = commands.add_parser(
        "report",
        parents=common,
        help="your workflows, from the history",
        description="Sessions per day and outcome, most frequent workflows and "
        "transitions, repeated patterns and unusual sessions.",
    )
    report.add_argument("--since", metavar="WHEN", help="only sessions whose last event is at or after WHEN")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--dot", metavar="FILE", help="write the transition graph as Graphviz DOT")
    report.add_argument("--svg", metavar="FILE", help="render the transition graph to SVG with Graphviz's dot")


def _add_service_command(commands: Any, common: List[argparse.ArgumentParser]) -> None:
    service = commands.add_parser(
        "service",
        parents=common,
        help="install, remove or show the user service",
        description="Install the systemd user unit (Linux) or LaunchAgent (macOS) for "
        "this installation's program, with the man pages and logrotate; remove exactly "
        "what was installed; or show its state.",
    )
    service.add_argument("action", choices=("install", "uninstall", "status"))
    service.add_argument("--no-start", action="store_true", help="install: write the files, do not enable or start")
    service.add_argument("--purge", action="store_true", help="uninstall: also remove the state and the logs")


def config_from_args(args: argparse.Namespace) -> Config:
    flags = {
        "db_path": args.db,
        "api_url": args.api_url,
        "state_dir": args.state_dir,
        "log_level": args.log_level,
        "session_idle_minutes": args.idle_minutes,
        "poll_interval_seconds": args.poll_seconds,
        "min_commands_for_learning": args.min_commands,
    }
    return load_config(Path(args.config) if args.config else None, os.environ, flags)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    try:
        config = config_from_args(args)
    except ConfigError as error:
        print_error(f"omnimemory-learner: configuration error: {error}")
        if command == "run" and service_manager() == LAUNCHD:
            return run(wait_for_valid_config(args), args)
        if command == "service" and args.action != "install":
            from .service import service

            return service(None, args.action, args.no_start, args.purge)
        if command == "doctor":
            from .doctor import report_config_error

            return report_config_error(error, getattr(args, "json", False))
        return EX_CONFIG
    if command == "run":
        return run(config, args)
    if command == "check-config":
        echo(to_toml(config), end="")
        return EX_OK
    if command == "status":
        from .status import status

        return status(config, args.json)
    if command == "doctor":
        from .doctor import doctor

        return doctor(config, args.json)
    if command == "backfill":
        from .backfill import backfill

        return backfill(config, args.until_delivered_timeout)
    if command == "reconcile":
        from .reconcile import reconcile_command

        return reconcile_command(config, args.dry_run, args.json)
    if command == "outbox":
        from .outbox import outbox

        return outbox(config, args.action, args.ids, args.yes, args.json)
    if command == "history":
        from .history import history

        return history(config, args.since, args.until, args.session, args.limit, args.json)
    if command == "report":
        from .report import report

        return report(config, args.since, args.json, args.dot, args.svg)
    if command == "service":
        from .service import service

        return service(config, args.action, args.no_start, args.purge)
    parser.error(f"unknown command {command}")
    return EX_USAGE


def _file_stamp(path: Path) -> Optional[Tuple[int, int, int]]:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def wait_for_valid_config(
    args: argparse.Namespace, interval: float = 2.0, sleep: Callable[[float], None] = time.sleep
) -> Config:
    """Under launchd, wait for the configuration file to change until it is valid.

    launchd has no RestartPreventExitStatus: exiting 78 would have the agent
    restarted every ThrottleInterval, logging the same error each time.
    """
    path = Path(args.config) if args.config else default_config_path()
    print_error(
        f"omnimemory-learner: waiting for {path} to be corrected (launchd would restart an agent that "
        "exits); nothing is read or sent until then"
    )
    last = _file_stamp(path)
    while True:
        sleep(interval)
        stamp = _file_stamp(path)
        if stamp == last:
            continue
        last = stamp
        try:
            return config_from_args(args)
        except ConfigError as error:
            print_error(f"omnimemory-learner: configuration error: {error}")


def run(config: Config, args: argparse.Namespace) -> int:
    from ..logs import enable_faulthandler, setup_logging
    from ..service import Service
    from ..storage.lock import AlreadyRunning
    from ..storage.state import StateError

    setup_logging(config.log_level, config.log_file)
    enable_faulthandler()

    def reload_config() -> Config:
        return config_from_args(args)

    def on_reload(new_config: Config) -> None:
        # SIGHUP also reopens the log file (and applies a new level or path).
        setup_logging(new_config.log_level, new_config.log_file)

    service = Service(config, reload_config=reload_config, on_reload=on_reload)
    service.install_signal_handlers()
    try:
        return service.run()
    except AlreadyRunning as error:
        log.error("%s; not starting a second instance", error)
        return EX_TEMPFAIL
    except StateError as error:
        log.error("%s", error)
        return EX_CANTCREAT
