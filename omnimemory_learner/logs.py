"""Logging: journald's stream protocol under systemd, console and file otherwise."""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional, TextIO

# syslog priorities by logging level, for journald's "<N>" line prefix.
_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
CONSOLE_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
_OWN_HANDLER = "_omnimemory_learner"


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITIES[level]
    return _PRIORITIES[logging.DEBUG]


class JournaldFormatter(logging.Formatter):
    """Every line, tracebacks included, prefixed with its priority; no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def under_journald(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """JOURNAL_STREAM names the device:inode of the journal stream; is it this one?"""
    expected = env.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def print_error(message: str, stream: Optional[TextIO] = None, env: Mapping[str, str] = os.environ) -> None:
    """An error before logging is set up (bad configuration): an error in the journal too."""
    stream = stream or sys.stderr
    prefix = f"<{_PRIORITIES[logging.ERROR]}>" if under_journald(stream, env) else ""
    for line in message.splitlines() or [""]:
        stream.write(prefix + line + "\n")
    stream.flush()


def setup_logging(
    level: str,
    log_file: Optional[Path],
    env: Mapping[str, str] = os.environ,
    stderr: Optional[TextIO] = None,
    stdout: Optional[TextIO] = None,
) -> str:
    """Install our handlers on the root logger; returns 'journald' or 'file'."""
    stderr = stderr or sys.stderr
    stdout = stdout or sys.stdout
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OWN_HANDLER, False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    handlers: List[logging.Handler] = []
    if under_journald(stderr, env):
        handler = logging.StreamHandler(stderr)
        handler.setFormatter(JournaldFormatter("%(message)s"))
        handlers.append(handler)
        mode = "journald"
    else:
        console = logging.StreamHandler(stdout)
        console.setFormatter(logging.Formatter(CONSOLE_FORMAT, "%Y-%m-%d %H:%M:%S"))
        handlers.append(console)
        mode = "console"
        if log_file is not None:
            try:
                log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # WatchedFileHandler reopens the file when logrotate moves it.
                file_handler = logging.handlers.WatchedFileHandler(str(log_file), encoding="utf-8")
                os.chmod(log_file, 0o600)
                file_handler.setFormatter(logging.Formatter(CONSOLE_FORMAT, "%Y-%m-%d %H:%M:%S"))
                handlers.append(file_handler)
                mode = "file"
            except OSError as error:
                print(f"omnimemory-learner: cannot write log file {log_file}: {error}", file=stderr)
    for handler in handlers:
        setattr(handler, _OWN_HANDLER, True)
        root.addHandler(handler)
    # Quiet the HTTP client's per-request lines; our own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    return mode


def enable_faulthandler(stream: Optional[TextIO] = None) -> None:
    """A watchdog abort (SIGABRT) then leaves every thread's stack in the log."""
    try:
        faulthandler.enable(file=stream or sys.stderr, all_threads=True)
    except (ValueError, OSError, AttributeError):
        pass
