"""The one place that chooses the platform's installer (system/installer.py has the interface)."""

from __future__ import annotations

import sys

from .installer import Installer, InstallError, InstallPaths, Runner, run_command
from .launchd import LaunchdInstaller
from .systemd import SystemdInstaller


def installer_for(paths: InstallPaths, platform: str = sys.platform, run: Runner = run_command) -> Installer:
    """The one place that chooses: launchd on macOS, systemd elsewhere on Linux."""
    if platform == "darwin":
        return LaunchdInstaller(paths, run)
    if platform.startswith("linux"):
        return SystemdInstaller(paths, run)
    raise InstallError(f"no service manager support for {platform}: run 'omnimemory-learner run' yourself")
