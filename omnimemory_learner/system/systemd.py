"""The systemd user manager: the learner's user unit and the logrotate timer.

The units go to $XDG_CONFIG_HOME/systemd/user (where `systemctl --user edit`
and the user's own units live; it also takes precedence over a unit a Debian
package put in /usr/lib/systemd/user).  ExecStart= names the program of the
environment the installer ran from, by absolute path.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import List, Optional

from .installer import Installer, InstallError, PlannedFile, Report, ServiceState, data_file, substitute

UNIT = "omnimemory-learner.service"
TIMER = "omnimemory-learner-logrotate.timer"
UNITS = (UNIT, "omnimemory-learner-logrotate.service", TIMER)


def systemd_quote(word: str) -> str:
    """One word of a unit file: `%` escaped (specifiers), quoted when it holds blanks or quotes.

    A word that starts a line (`ExecStart=/path`) keeps its key outside the quotes.
    """
    key = re.match(r"[A-Za-z]+=", word)
    if key:
        return key.group(0) + systemd_quote(word[key.end() :])
    word = word.replace("%", "%%")
    if re.search(r'[\s"\'\\]', word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


class SystemdInstaller(Installer):
    platform = "systemd"

    @property
    def unit_dir(self) -> Path:
        return self.paths.config_home / "systemd" / "user"

    def planned_files(self) -> List[PlannedFile]:
        units = [
            PlannedFile(
                self.unit_dir / name,
                substitute(
                    data_file(f"packaging/systemd/{name}").read_text(), self.paths.values(), systemd_quote
                ).encode(),
            )
            for name in UNITS
        ]
        return units + super().planned_files()

    def systemctl(self, *args: str) -> bool:
        result = self.run(["systemctl", "--user", *args])
        return result.returncode == 0

    def _query(self, verb: str, unit: str) -> str:
        result = self.run(["systemctl", "--user", verb, unit])
        return result.stdout.strip()

    def activate(self, files_changed: bool, report: Report) -> None:
        if files_changed and not self.systemctl("daemon-reload"):
            raise InstallError(
                "systemctl --user daemon-reload failed: is there a systemd user session? "
                "(the files are in place; 'service install --no-start' skips this step)"
            )
        if self._query("is-enabled", UNIT) != "enabled" or self._query("is-enabled", TIMER) != "enabled":
            if not self.systemctl("enable", UNIT, TIMER):
                raise InstallError(f"systemctl --user enable {UNIT} {TIMER} failed")
            report.actions.append(f"enabled {UNIT} and {TIMER}")
        active = self._query("is-active", UNIT) == "active"
        if files_changed or not active:
            verb = "restart" if active else "start"
            if not self.systemctl(verb, UNIT):
                raise InstallError(
                    f"systemctl --user {verb} {UNIT} failed; see: journalctl --user -u omnimemory-learner -p warning"
                )
            report.actions.append(f"{verb}ed {UNIT}")
        if self._query("is-active", TIMER) != "active":
            self.systemctl("start", TIMER)
            report.actions.append(f"started {TIMER}")

    def deactivate(self, report: Report) -> None:
        if self.systemctl("disable", "--now", UNIT, TIMER):
            report.actions.append(f"stopped and disabled {UNIT} and {TIMER}")
        else:
            report.warnings.append("systemctl --user disable --now failed (no user session?); removing the files")

    def after_removal(self, report: Report) -> None:
        self.systemctl("daemon-reload")
        # The manager made these for the timer's stamp; once empty they are nobody's.
        timers = self.paths.data_home / "systemd" / "timers"
        for directory in (timers, timers.parent):
            try:
                directory.rmdir()
            except OSError:
                break

    def extra_leftovers(self) -> List[Path]:
        # Persistent=true makes the manager keep a stamp of the timer's last run.
        return [self.paths.data_home / "systemd" / "timers" / f"stamp-{TIMER}"]

    def state(self) -> ServiceState:
        enabled, active = self._query("is-enabled", UNIT), self._query("is-active", UNIT)
        installed = (self.unit_dir / UNIT).is_file()
        return ServiceState(
            installed,
            active == "active",
            [
                f"unit: {self.unit_dir / UNIT}" + ("" if installed else " (not installed)"),
                f"systemd: {UNIT} is {active or 'unknown'} ({enabled or 'unknown'})",
            ],
        )

    def installed_program(self) -> Optional[Path]:
        return exec_start_program(self.unit_dir / UNIT)


def exec_start_program(unit: Path) -> Optional[Path]:
    """The program of a unit's ExecStart= (first word, quotes and %% undone)."""
    try:
        text = unit.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            command = line.split("=", 1)[1].lstrip("-@:+!")
            try:
                words = shlex.split(command)
            except ValueError:
                return None
            return Path(words[0].replace("%%", "%")) if words else None
    return None
