"""The files under state_dir, and how the directory is made private.

The learner sets the mode only of a directory it creates (0700).  A state_dir
that already exists is the user's: its mode is left alone and a warning says
when others can read it.  One that another user owns, or that others may
write to (a path under /tmp, a shared group directory), is refused
(UnsafeDirectory), as OpenSSH refuses such a directory for its keys: whoever
can write there can plant symlinks that the learner's writes would follow
into the user's own files.
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


class UnsafeDirectory(PermissionError):
    """The state directory is another user's, or others may write to it."""


def ensure_private_dir(path: Path) -> bool:
    """Make `path` (0700) when it is missing; True when this call created it.

    An existing directory keeps its mode; when others may read or enter it,
    a warning says so, once per directory and process.  One owned by another
    user or writable by group or others raises UnsafeDirectory.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        status = path.stat()
        check_private(path, status)
        mode = stat.S_IMODE(status.st_mode)
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


def check_private(path: Path, status: os.stat_result) -> None:
    """Raise UnsafeDirectory unless the directory is this user's and only this user may write to it."""
    if status.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"the state directory {path} belongs to uid {status.st_uid}, not to this user (uid {os.geteuid()}): "
            "refusing to use it; set state_dir to a directory of your own"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise UnsafeDirectory(
            f"the state directory {path} is mode {mode:o}: others may write to it, and so plant files the "
            f"learner would write through; refusing to use it (chmod go-w {path}, or set state_dir elsewhere)"
        )
