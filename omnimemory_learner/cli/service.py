"""`service install|uninstall|status`: the learner as this user's service.

For a user who installed with pip or pipx (and what `make install` runs): the
user unit and logrotate timer (Linux) or the LaunchAgent (macOS), the man
pages and the logrotate configuration, pointing at the program of the
environment this command runs from.  The work is in system/installer.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

from ..config import Config, defaults
from ..storage.files import HISTORY_FILE, LOCK_FILE, SNAPSHOT_FILE, STATE_FILE
from ..system.installer import (
    PROGRAM_NAME,
    Installer,
    InstallError,
    InstallPaths,
    find_program,
    install,
    manifest_paths,
    read_manifest,
    uninstall,
)
from ..system.platforms import installer_for
from .exits import EX_CANTCREAT, EX_FAILURE, EX_NOT_RUNNING, EX_OK
from .output import echo, error


def _installer(state_dir: Path, log_dir: Path, need_program: bool) -> Installer:
    try:
        program = find_program()
    except InstallError:
        if need_program:
            raise
        program = Path(os.path.abspath(sys.executable)).parent / PROGRAM_NAME
    paths = InstallPaths.for_user(program, state_dir, log_dir)
    return installer_for(paths)


def service(config: Optional[Config], action: str, no_start: bool = False, purge: bool = False) -> int:
    """`config` is None when the configuration is invalid: uninstall and status still work, on default paths."""
    if config is None:
        values = defaults()
        state_dir, log_file = values["state_dir"], values["log_file"]
        echo(f"(the configuration is invalid: using the default paths {state_dir} and {log_file.parent})")
    else:
        state_dir, log_file = config.state_dir, config.log_file
    log_dir = log_file.parent
    try:
        if action == "install":
            return _install(_installer(state_dir, log_dir, need_program=True), no_start)
        if action == "uninstall":
            return _uninstall(
                _installer(state_dir, log_dir, need_program=False),
                learner_files(state_dir, log_file) if purge else None,
            )
        return _status(_installer(state_dir, log_dir, need_program=False))
    except InstallError as problem:
        error(str(problem))
        return EX_FAILURE
    except OSError as problem:
        error(str(problem))
        return EX_CANTCREAT


def _install(installer: Installer, no_start: bool) -> int:
    report = install(installer, start=not no_start)
    for path in report.written:
        echo(f"wrote    {path}")
    for path in report.removed:
        echo(f"removed  {path}")
    for action in report.actions:
        echo(action)
    if not report.changed:
        echo(f"Already installed for {installer.paths.program}: nothing changed.")
    else:
        echo(f"Installed: the service runs {installer.paths.program}.")
    if no_start:
        echo("Not started (--no-start).")
    if installer.platform == "systemd":
        echo("To keep it running while you are logged out: loginctl enable-linger $USER")
    return EX_OK


def learner_files(state_dir: Path, log_file: Path) -> List[Path]:
    """The files the learner itself makes under state_dir and for its log (and rotations): what --purge removes."""
    files = [state_dir / name for name in (LOCK_FILE, SNAPSHOT_FILE)]
    for database in (STATE_FILE, HISTORY_FILE):
        files += [state_dir / (database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    files += sorted(state_dir.glob(".status.*")) + sorted(state_dir.glob(HISTORY_FILE + ".corrupt-*"))
    files += [
        log_file,
        *sorted(log_file.parent.glob(log_file.name + ".*")),
        *sorted(log_file.parent.glob(log_file.name + "-*")),
    ]
    return files


def _uninstall(installer: Installer, purge_files: Optional[List[Path]]) -> int:
    paths = installer.paths
    purge = purge_files is not None
    report = uninstall(installer, purge_files or [])
    for action in report.actions:
        echo(action)
    for path in report.removed:
        echo(f"removed  {path}")
    for warning in report.warnings:
        echo(f"warning: {warning}")
    if not purge:
        echo(f"Kept the state in {paths.state_dir} and the logs in {paths.log_dir} (--purge removes them).")
    return EX_OK


def _status(installer: Installer) -> int:
    manifest = read_manifest(installer.paths.manifest)
    state = installer.state()
    for line in state.lines:
        echo(line)
    program = installer.installed_program()
    if program is not None:
        there = program.is_file() and os.access(program, os.X_OK)
        echo(
            f"program: {program}"
            + (
                ""
                if there
                else " (missing: run 'omnimemory-learner service install' from the installation that should run)"
            )
        )
    if manifest is None:
        echo(f"manifest: none at {installer.paths.manifest} (not installed by 'service install')")
    else:
        files = manifest_paths(manifest, "files")
        missing = [path for path in files if not path.exists()]
        echo(
            f"manifest: {installer.paths.manifest}, {len(files)} files"
            + (f", missing: {', '.join(map(str, missing))}" if missing else "")
        )
    return EX_OK if state.running else EX_NOT_RUNNING
