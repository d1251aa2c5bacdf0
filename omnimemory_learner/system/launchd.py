"""launchd (macOS): the learner's LaunchAgent in ~/Library/LaunchAgents.

Loaded with `launchctl bootstrap gui/UID PLIST` and removed with `bootout`;
where those subcommands are missing (before macOS 10.10) or refuse, it falls
back to `launchctl load -w` / `unload -w`, which is what users type.

launchd has no RestartPreventExitStatus: with KeepAlive/SuccessfulExit=false
an exit 78 would be restarted every ThrottleInterval.  So under launchd the
learner does not exit on a bad configuration; it waits for the file to be
fixed (cli/main.py, `wait_for_valid_config`).
"""

from __future__ import annotations

import os
import plistlib
from pathlib import Path
from typing import List, Optional
from xml.sax.saxutils import escape

from .installer import Installer, InstallError, PlannedFile, Report, ServiceState, data_file, substitute

LABEL = "com.omnimemory.learner"


class LaunchdInstaller(Installer):
    platform = "launchd"
    uid: int = os.getuid() if hasattr(os, "getuid") else 0

    @property
    def plist(self) -> Path:
        return self.paths.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def domain(self) -> str:
        return f"gui/{self.uid}"

    @property
    def target(self) -> str:
        return f"{self.domain}/{LABEL}"

    def planned_files(self) -> List[PlannedFile]:
        values = {name: escape(value) for name, value in self.paths.values().items()}
        text = substitute(data_file(f"packaging/launchd/{LABEL}.plist").read_text(), values)
        try:
            plistlib.loads(text.encode())
        except Exception as error:  # plistlib raises several kinds: any means a broken template
            raise InstallError(f"the LaunchAgent would not be a valid plist: {error}") from error
        return [PlannedFile(self.plist, text.encode()), *super().planned_files()]

    def launchctl(self, *args: str) -> bool:
        return self.run(["launchctl", *args]).returncode == 0

    def loaded(self) -> bool:
        if self.launchctl("print", self.target):
            return True
        return self.launchctl("list", LABEL)

    def activate(self, files_changed: bool, report: Report) -> None:
        loaded = self.loaded()
        if loaded and not files_changed:
            return
        if loaded:
            self._unload()
            report.actions.append(f"unloaded {LABEL}")
        if self.launchctl("bootstrap", self.domain, str(self.plist)):
            report.actions.append(f"loaded {LABEL} (launchctl bootstrap {self.domain})")
        elif self.launchctl("load", "-w", str(self.plist)):
            report.actions.append(f"loaded {LABEL} (launchctl load -w)")
        else:
            raise InstallError(
                f"launchctl could not load {self.plist}; try: launchctl bootstrap {self.domain} {self.plist}"
            )

    def _unload(self) -> bool:
        return self.launchctl("bootout", self.target) or self.launchctl("unload", "-w", str(self.plist))

    def deactivate(self, report: Report) -> None:
        if not self.loaded():
            return
        if self._unload():
            report.actions.append(f"unloaded {LABEL}")
        else:
            report.warnings.append(f"launchctl could not unload {LABEL}; removing the files")

    def state(self) -> ServiceState:
        result = self.run(["launchctl", "print", self.target])
        if result.returncode == 0:
            running = "state = running" in result.stdout
        else:
            listed = self.run(["launchctl", "list", LABEL])
            running = listed.returncode == 0 and '"PID" =' in listed.stdout
        loaded = result.returncode == 0 or running
        installed = self.plist.is_file()
        return ServiceState(
            installed,
            running,
            [
                f"agent: {self.plist}" + ("" if installed else " (not installed)"),
                f"launchd: {LABEL} is " + ("running" if running else "loaded" if loaded else "not loaded"),
            ],
        )

    def installed_program(self) -> Optional[Path]:
        return agent_program(self.plist)


def agent_program(plist: Path) -> Optional[Path]:
    """The program a LaunchAgent runs (ProgramArguments[0], or Program)."""
    try:
        with plist.open("rb") as handle:
            data = plistlib.load(handle)
    except (OSError, ValueError, plistlib.InvalidFileException):
        return None
    arguments = data.get("ProgramArguments") or [data.get("Program")]
    first = arguments[0] if arguments else None
    return Path(first) if isinstance(first, str) else None
