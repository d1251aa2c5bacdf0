"""One learner per state store: an flock on state_dir/lock.

The service and `backfill` take it; `status` only asks whether it is held.
The holder writes its pid into the file, so that whoever finds the lock held
can say who holds it (the service under a service manager waits for it).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from .files import LOCK_FILE, ensure_private_dir

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class AlreadyRunning(Exception):
    """Another process holds the state store's lock; `holder` is its pid when known."""

    def __init__(self, message: str, holder: Optional[int] = None):
        super().__init__(message)
        self.holder = holder


class InstanceLock:
    """An flock on state_dir/lock: one service (or backfill) per state store."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        # Never through a symlink: the lock is truncated to hold our pid.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = read_lock_pid(self.path)
                raise AlreadyRunning(
                    f"another omnimemory-learner (pid {holder or 'unknown'}) holds {self.path}", holder
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_lock_pid(path: Path) -> Optional[int]:
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        return int(os.read(fd, 32).decode("ascii", "replace").strip() or 0) or None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def lock_is_held(state_dir: Path) -> bool:
    """Whether a running process holds the state lock (without taking it for long)."""
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
