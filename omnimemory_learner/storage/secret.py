"""The per-installation secret that keys the hash of session ids sent to the API (send_session_id = "hashed").

32 random bytes in `session-id.key` in the state directory, made on first
use: created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600 (never through a
symlink, never over a file someone else put there first: two processes making
it at once keep the one written first), and read back with O_NOFOLLOW.  Kept
forever: a new secret gives every id a new hash, and the API's tracking would
no longer group the sessions of one id across the change.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .files import ensure_private_dir

SECRET_FILE = "session-id.key"
SECRET_BYTES = 32


class SecretError(Exception):
    """The secret cannot be made or read (the message says why and where)."""


def session_id_secret(state_dir: Path) -> bytes:
    """The secret, made now if there is none yet; SecretError when it cannot be had."""
    path = Path(state_dir) / SECRET_FILE
    try:
        ensure_private_dir(Path(state_dir))
        return _read(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise SecretError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return session_id_secret(state_dir)  # another process made it meanwhile: its secret
    except OSError as error:
        raise SecretError(f"cannot create {path}: {error.strerror or error}") from None
    try:
        secret = os.urandom(SECRET_BYTES)
        os.write(descriptor, secret)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return secret


def _read(path: Path) -> bytes:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise SecretError(f"{path} is not a regular file")
        if status.st_mode & 0o077:
            raise SecretError(f"{path} can be read by others (mode {stat.S_IMODE(status.st_mode):o}); chmod 600 it")
        secret = os.read(descriptor, SECRET_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(secret) != SECRET_BYTES:
        # A half-written file (a crash between create and write): unusable, said, never replaced silently.
        raise SecretError(f"{path} holds {len(secret)} bytes, not {SECRET_BYTES}: remove it to make a new secret")
    return secret
