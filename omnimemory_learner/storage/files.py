"""The files under state_dir, and how the directory is made private.

The learner sets the mode only of a directory it creates (0700).  A state_dir
that already exists is the user's: it may be a shared directory they chose on
purpose, so its mode is left alone and a warning says when others can read it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Set

log = logging.getLogger(__name__)

STATE_FILE = "state.db"
LOCK_FILE = "lock"
SNAPSHOT_FILE = "status.json"
HISTORY_FILE = "history.db"

_warned: Set[str] = set()


def ensure_private_dir(path: Path) -> bool:
    """Make `path` (0700) when it is missing; True when this call created it.

    An existing directory keeps its mode; when others may read or enter it,
    a warning says so, once per directory and process.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077 and str(path) not in _warned:
            _warned.add(str(path))
            log.warning(
                "The state directory %s is mode %o: others can read the outbox (session data); "
                "it is left as it is (chmod 700 %s makes it private)",
                path,
                mode,
                path,
            )
        return False
    # mkdir's mode passes through the umask, which may have cleared owner bits.
    os.chmod(path, 0o700)
    return True
