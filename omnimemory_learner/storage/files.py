"""The files under state_dir, and how the directory is made private."""

from __future__ import annotations

import os
from pathlib import Path

STATE_FILE = "state.db"
LOCK_FILE = "lock"
SNAPSHOT_FILE = "status.json"
HISTORY_FILE = "history.db"


def ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
