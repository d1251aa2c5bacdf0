"""Putting the service in place for one user: the interface and the one choice.

    Installer         what every platform does: the files it writes (`planned_files`),
                      enabling and starting (`activate`), stopping (`deactivate`), `state`
    systemd.py        SystemdInstaller: user units in $XDG_CONFIG_HOME/systemd/user
    launchd.py        LaunchdInstaller: a LaunchAgent in ~/Library/LaunchAgents
    platforms.py      installer_for(): the one place that picks the platform's installer

Nothing happens on construction: `install()` and `uninstall()` are the explicit
calls.  `install()` writes only files whose content differs (so a second run
changes nothing and says so) and records every file and directory it wrote in a
manifest; `uninstall()` removes exactly those, never the state or the logs
unless asked to purge.

The templates are `packaging/` and `man/` of the source tree; the wheel carries
them as `omnimemory_learner/_data/` (setup.py copies them at build time).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

PROGRAM_NAME = "omnimemory-learner"
MANIFEST_VERSION = 1
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"@([A-Z]+)@")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class InstallError(Exception):
    """Installing cannot go on; the message says why and what to do."""


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command, capturing its output; a missing program is exit 127."""
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as error:
        return subprocess.CompletedProcess(list(command), 127, "", str(error))


def data_file(relative: str) -> Path:
    """A file of `packaging/` or `man/`: from the installed package, else from the source tree."""
    for base in (_PACKAGE_DIR / "_data", _PACKAGE_DIR.parent):
        candidate = base / relative
        if candidate.is_file():
            return candidate
    raise InstallError(f"{relative} is not in this installation (a wheel built without its service files?)")


def find_program(executable: str = sys.executable) -> Path:
    """The `omnimemory-learner` program of the environment this Python runs in.

    Beside the interpreter first (a venv, pipx, /usr/bin): its path is kept as
    it is, not resolved, so a pipx environment rebuilt on a new Python keeps it.
    """
    beside = Path(os.path.abspath(executable)).parent / PROGRAM_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    try:
        from importlib.metadata import PackageNotFoundError, files

        for entry in files("omnimemory-learner") or []:
            if entry.name == PROGRAM_NAME and entry.parent.name in ("bin", "Scripts"):
                located = Path(os.path.abspath(str(entry.locate())))
                if located.is_file() and os.access(located, os.X_OK):
                    return located
    except PackageNotFoundError:
        pass
    raise InstallError(
        f"no {PROGRAM_NAME} program beside {executable}: install the package first "
        "(pipx install omnimemory-learner, or pip install . in a virtual environment)"
    )


@dataclass(frozen=True)
class InstallPaths:
    """Where the installed files point and where they go, for one user."""

    program: Path
    home: Path
    config_home: Path
    data_home: Path
    state_dir: Path
    log_dir: Path

    @property
    def conf_dir(self) -> Path:
        return self.config_home / "omnimemory"

    @property
    def manifest(self) -> Path:
        return self.data_home / PROGRAM_NAME / "install-manifest.json"

    def values(self) -> Dict[str, str]:
        return {
            "BINDIR": str(self.program.parent),
            "LOGDIR": str(self.log_dir),
            "STATEDIR": str(self.state_dir),
            "CONFDIR": str(self.conf_dir),
        }

    @classmethod
    def for_user(
        cls, program: Path, state_dir: Path, log_dir: Path, env: Mapping[str, str] = os.environ
    ) -> InstallPaths:
        home = Path(env.get("HOME") or Path.home())

        def xdg(name: str, default: str) -> Path:
            value = env.get(name, "")
            return Path(value) if os.path.isabs(value) else home / default

        return cls(
            program, home, xdg("XDG_CONFIG_HOME", ".config"), xdg("XDG_DATA_HOME", ".local/share"), state_dir, log_dir
        )


@dataclass(frozen=True)
class PlannedFile:
    path: Path
    content: bytes
    mode: int = 0o644


@dataclass
class ServiceState:
    installed: bool
    running: bool
    lines: List[str] = field(default_factory=list)


@dataclass
class Report:
    """What an install or uninstall did, for the command to print."""

    written: List[Path] = field(default_factory=list)
    removed: List[Path] = field(default_factory=list)
    actions: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed or self.actions)


def substitute(text: str, values: Mapping[str, str], quote: Callable[[str], str] = lambda word: word) -> str:
    """Replace @NAME@ placeholders; each whitespace-delimited word holding one goes through `quote`."""

    def word(match: re.Match[str]) -> str:
        return quote(PLACEHOLDER.sub(lambda m: values[m.group(1)], match.group(0)))

    rendered = re.sub(r"\S*@[A-Z]+@\S*", word, text)
    leftover = PLACEHOLDER.search(rendered)
    if leftover:
        raise InstallError(f"unknown placeholder {leftover.group(0)} in a template")
    return rendered


class Installer:
    """One platform's way of running the learner for this user."""

    platform = "none"

    def __init__(self, paths: InstallPaths, run: Runner = run_command):
        self.paths = paths
        self.run = run

    def planned_files(self) -> List[PlannedFile]:
        """Every file an install writes: the platform's own plus the man pages and logrotate config."""
        man = self.paths.data_home / "man"
        logrotate = substitute(
            data_file("packaging/logrotate/omnimemory-learner").read_text(), self.paths.values(), _logrotate_quote
        )
        return [
            PlannedFile(man / "man1" / "omnimemory-learner.1", data_file("man/omnimemory-learner.1").read_bytes()),
            PlannedFile(
                man / "man5" / "omnimemory-learner.toml.5", data_file("man/omnimemory-learner.toml.5").read_bytes()
            ),
            PlannedFile(self.paths.conf_dir / "logrotate.conf", logrotate.encode(), 0o600),
        ]

    def directories(self) -> List[Path]:
        """Directories an install makes sure exist though it writes no file in them (private ones)."""
        return [self.paths.log_dir]

    def activate(self, files_changed: bool, report: Report) -> None:
        raise NotImplementedError

    def deactivate(self, report: Report) -> None:
        raise NotImplementedError

    def after_removal(self, report: Report) -> None:
        """Tell the manager the files are gone (systemd: daemon-reload)."""

    def extra_leftovers(self) -> List[Path]:
        """Files the service manager wrote because of us (a timer's stamp); removed with ours."""
        return []

    def state(self) -> ServiceState:
        raise NotImplementedError

    def installed_program(self) -> Optional[Path]:
        """The program the installed unit or agent runs, read back from it."""
        raise NotImplementedError


# -- the manifest ------------------------------------------------------------------


def read_manifest(path: Path) -> Optional[Dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise InstallError(f"cannot read the install manifest {path}: {error}") from error
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise InstallError(f"{path} is not an install manifest this version understands")
    return data


def manifest_paths(manifest: Optional[Mapping[str, object]], key: str) -> List[Path]:
    values = manifest.get(key, []) if manifest else []
    return [Path(value) for value in values if isinstance(value, str)] if isinstance(values, list) else []


def _write_atomically(path: Path, content: bytes, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _make_directory(path: Path, created: List[Path], mode: int = 0o755) -> None:
    """mkdir -p, remembering each directory this call created (outermost first)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=mode)
        created.append(directory)


def program_fingerprint(program: Path) -> List[object]:
    """What changes when pipx or pip reinstalls the program or its Python changes under it.

    The script's own inode and mtime (a reinstall writes a new one) and the real
    path of the interpreter its #! line names (a venv rebuilt on a new Python).
    """
    try:
        info = program.stat()
        with program.open("rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return []
    interpreter = first[2:].decode(errors="replace").split()[0] if first.startswith(b"#!") and first[2:].split() else ""
    return [info.st_ino, info.st_mtime_ns, os.path.realpath(interpreter) if interpreter else ""]


def install(installer: Installer, start: bool = True) -> Report:
    """Write what differs, record it all in the manifest, then enable and start (unless `start` is false)."""
    paths = installer.paths
    report = Report()
    old = read_manifest(paths.manifest)
    created = manifest_paths(old, "directories")
    planned = installer.planned_files()
    for directory in installer.directories():
        _make_directory(directory, created, 0o700)
    for planned_file in planned:
        current = planned_file.path.read_bytes() if planned_file.path.is_file() else None
        mode_ok = current is not None and (planned_file.path.stat().st_mode & 0o777) == planned_file.mode
        if current == planned_file.content and mode_ok:
            continue
        private = planned_file.path.parent == paths.conf_dir
        _make_directory(planned_file.path.parent, created, 0o700 if private else 0o755)
        _write_atomically(planned_file.path, planned_file.content, planned_file.mode)
        report.written.append(planned_file.path)
    # A file an earlier install wrote that this one does not (another platform, an older version).
    wanted = {planned_file.path for planned_file in planned}
    for stale in manifest_paths(old, "files"):
        if stale not in wanted and stale != paths.manifest and stale.exists():
            stale.unlink()
            report.removed.append(stale)
    fingerprint = program_fingerprint(paths.program)
    reinstalled = (
        old is not None and old.get("program") == str(paths.program) and old.get("program_fingerprint") != fingerprint
    )
    if reinstalled:
        report.actions.append(f"{paths.program} was reinstalled since the last install: restarting the service")
    manifest = {
        "version": MANIFEST_VERSION,
        "platform": installer.platform,
        "program": str(paths.program),
        "program_fingerprint": fingerprint,
        "files": [str(planned_file.path) for planned_file in planned] + [str(paths.manifest)],
        "directories": [str(directory) for directory in dict.fromkeys(created)],
    }
    encoded = (json.dumps(manifest, indent=2) + "\n").encode()
    if not paths.manifest.is_file() or paths.manifest.read_bytes() != encoded:
        _make_directory(paths.manifest.parent, created, 0o755)
        manifest["directories"] = [str(directory) for directory in dict.fromkeys(created)]
        encoded = (json.dumps(manifest, indent=2) + "\n").encode()
        _write_atomically(paths.manifest, encoded, 0o644)
    if start:
        installer.activate(bool(report.written or report.removed or reinstalled), report)
    elif reinstalled:
        report.actions[-1] = f"{paths.program} was reinstalled since the last install (not restarted: --no-start)"
    return report


def uninstall(installer: Installer, purge_files: Sequence[Path] = ()) -> Report:
    """Stop, then remove exactly what the manifest lists; `purge_files` (state, logs) only when asked.

    Purging removes those files, never a directory's other content: a state
    directory or log directory shared with anything else (even the home
    directory, if the configuration points there) keeps what is not ours.
    """
    paths = installer.paths
    report = Report()
    manifest = read_manifest(paths.manifest)
    if manifest is None:
        report.warnings.append(
            f"no install manifest at {paths.manifest}: nothing was installed by "
            f"'{PROGRAM_NAME} service install' for this user"
        )
    else:
        installer.deactivate(report)
        for path in [*manifest_paths(manifest, "files"), *installer.extra_leftovers()]:
            if path.is_file() or path.is_symlink():
                path.unlink()
                report.removed.append(path)
        installer.after_removal(report)
    home = Path.home().resolve()
    for path in purge_files:
        if path.is_file() or path.is_symlink():
            path.unlink()
            report.removed.append(path)
    for directory in sorted({path.parent for path in purge_files}, key=lambda p: len(p.parts), reverse=True):
        resolved = directory.resolve()
        if resolved == home or resolved in home.parents:
            continue  # never the home directory or above it, even when empty
        try:
            directory.rmdir()  # only when nothing else is left in it
            report.removed.append(directory)
        except OSError:
            pass
    # Innermost first; a directory that holds anything else (a user's file, logs) stays.
    for directory in sorted(manifest_paths(manifest, "directories"), key=lambda p: len(p.parts), reverse=True):
        try:
            directory.rmdir()
            report.removed.append(directory)
        except OSError:
            pass
    return report


def _logrotate_quote(word: str) -> str:
    # logrotate takes a double-quoted path (and still expands a glob in it).
    return f'"{word}"' if any(ch.isspace() or ch == '"' for ch in word) and not word.startswith("#") else word
