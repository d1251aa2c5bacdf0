"""Logging: journald's native protocol under systemd, console and file otherwise.

Every handler we install formats with `ShownFormatter`: each %-argument of a
record (session ids, event types, the API's answers, paths, exceptions) goes
through `text.shown()` before it is put into the message, and so does the
message line of a logged exception.  Our own message templates and the
frames of a traceback are shown as written.  No call site has to escape
anything, and a log call added later is covered the same way, as long as it
passes untrusted text as an argument (`log.info("Session %s", sid)`), never
formatted into the template itself.

Under journald (JOURNAL_STREAM names our standard error) each record is one
datagram of the native journal protocol: MESSAGE (length-prefixed, so a
multi-line traceback stays one entry), PRIORITY, SYSLOG_IDENTIFIER and the
CODE_* fields.  An entry too large for a datagram goes in a sealed memfd, as
the protocol allows; failing that it is cut with a mark.  When the journal's
socket is not there, the stream protocol is used as before: every line
prefixed with its "<N>" priority, so a line can never bring its own.
"""

from __future__ import annotations

import array
import errno
import faulthandler
import logging
import logging.handlers
import numbers
import os
import socket
import struct
import sys
import traceback
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, TextIO, Union

from .text import shown

# syslog priorities by logging level, for journald's PRIORITY field and "<N>" line prefix.
# syslog's NOTICE (normal but significant: an unusual session), between INFO and WARNING.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    NOTICE: 5,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
CONSOLE_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "omnimemory-learner"
# Past this a message that cannot go through a memfd is cut (journald's own
# line limit for the stream protocol is 48 KiB).
JOURNAL_CUT_BYTES = 48 * 1024
_OWN_HANDLER = "_omnimemory_learner"


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, NOTICE, logging.INFO):
        if levelno >= level:
            return _PRIORITIES[level]
    return _PRIORITIES[logging.DEBUG]


class _Shown:
    """An argument that is neither text nor a number: shown() of its str() or repr()."""

    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value

    def __str__(self) -> str:
        return shown(str(self.value))

    def __repr__(self) -> str:
        return shown(repr(self.value))


def _shown_arg(value: object) -> object:
    if isinstance(value, str):
        return shown(value)
    # Numbers stay numbers so that %d and %.1f keep working; their text is digits.
    if value is None or isinstance(value, numbers.Number):
        return value
    return _Shown(value)


def shown_args(args: Union[Sequence[object], Mapping[str, object], None]) -> Any:
    """A record's arguments with every piece of text made safe to show."""
    if isinstance(args, Mapping):
        return {key: _shown_arg(value) for key, value in args.items()}
    if isinstance(args, tuple):
        return tuple(_shown_arg(value) for value in args)
    return args


def format_exception_shown(exception: BaseException) -> str:
    """A traceback as Python prints it, with each exception's own message escaped.

    The frames are source lines of installed code; the message
    ("ValueError: ...") may quote untrusted text, so it goes through shown()
    and stays on its line.  An exception group shows its own line only.
    """
    parts: List[str] = []
    seen = set()

    def walk(error: BaseException) -> None:
        seen.add(id(error))
        cause, context = error.__cause__, error.__context__
        if cause is not None and id(cause) not in seen:
            walk(cause)
            parts.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif context is not None and not error.__suppress_context__ and id(context) not in seen:
            walk(context)
            parts.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        if error.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(error.__traceback__))
        for line in traceback.format_exception_only(type(error), error):
            parts.append(shown(line.rstrip("\n")) + "\n")

    walk(exception)
    return "".join(parts).rstrip("\n")


class ShownFormatter(logging.Formatter):
    """A Formatter that escapes every argument of a record and every exception message."""

    def format(self, record: logging.LogRecord) -> str:
        # The record is shared with other handlers: swap and restore, not copy.
        saved = record.msg, record.args, record.exc_text
        if not isinstance(record.msg, str):
            record.msg = shown(record.msg)
        record.args = shown_args(record.args)
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.msg, record.args, record.exc_text = saved

    def formatException(self, ei: Any) -> str:
        if ei[1] is None:
            return super().formatException(ei)
        return format_exception_shown(ei[1])


class PrivateFileHandler(logging.handlers.WatchedFileHandler):
    """A log file reopened when logrotate moves it (WatchedFileHandler), and made 0600 whenever it is made.

    The log holds session ids and commands: a file removed by hand, or by a
    logrotate without `create`, must not come back with the process's umask
    (0644 by hand or under launchd, whose agent sets none).
    """

    def _open(self) -> Any:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(self.baseFilename, flags, 0o600)
        try:
            return os.fdopen(descriptor, "a", encoding=self.encoding, errors=getattr(self, "errors", None))
        except BaseException:
            os.close(descriptor)
            raise


class JournaldFormatter(ShownFormatter):
    """The stream protocol: every line, tracebacks included, prefixed with its priority."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def journal_field(name: str, value: Union[str, bytes]) -> bytes:
    """One field of the native protocol; length-prefixed when the value has a newline."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """journald's native protocol: one record, one datagram, one journal entry.

    While journald does not answer (restarting), a record goes to `fallback`
    (the stream handler, a priority on every line) rather than being lost.
    """

    def __init__(
        self,
        socket_path: str = JOURNAL_SOCKET,
        identifier: str = SYSLOG_IDENTIFIER,
        fallback: Optional[logging.Handler] = None,
    ):
        super().__init__()
        self.socket_path = socket_path
        self.identifier = identifier
        self.fallback = fallback
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # As sd_journal_send does: room for large entries before a memfd is needed.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
        except OSError:
            pass
        try:
            # journald drops an empty datagram; it fails here when nobody listens.
            self.socket.sendto(b"", socket_path)
        except OSError:
            self.socket.close()
            raise

    def metadata(self, record: logging.LogRecord) -> bytes:
        """Every field but MESSAGE."""
        return b"".join(
            [
                journal_field("PRIORITY", str(priority(record.levelno))),
                journal_field("SYSLOG_IDENTIFIER", self.identifier),
                journal_field("CODE_FILE", os.fsencode(record.pathname or "")),
                journal_field("CODE_LINE", str(record.lineno)),
                journal_field("CODE_FUNC", shown(record.funcName or "")),
                journal_field("LOGGER", shown(record.name)),
                journal_field("THREAD_NAME", shown(record.threadName or "")),
            ]
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            metadata = self.metadata(record)
            data = journal_field("MESSAGE", message) + metadata
            try:
                self.socket.sendto(data, self.socket_path)
            except OSError as error:
                if error.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                    self._send_large(data, message, metadata)
                elif self.fallback is not None:
                    self.fallback.handle(record)
                else:
                    raise
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)

    def _send_large(self, data: bytes, message: str, metadata: bytes) -> None:
        try:
            self._send_memfd(data)
        except OSError:
            # No memfd here, or it was refused: the entry is cut to fit, with a mark.
            encoded = message.encode("utf-8", "backslashreplace")
            kept = encoded[:JOURNAL_CUT_BYTES].decode("utf-8", "ignore")
            cut = f"{kept}...[{len(encoded) - len(kept.encode())} more bytes]"
            self.socket.sendto(journal_field("MESSAGE", cut) + metadata, self.socket_path)

    def _send_memfd(self, data: bytes) -> None:
        import fcntl

        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # journald takes a memfd from an unprivileged sender only when it is sealed.
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            )
            self.socket.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.socket_path
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            super().close()


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
    """An error before logging is set up (bad configuration): one line, an error in the journal too.

    The message quotes configuration values, so it goes through shown().
    """
    stream = stream or sys.stderr
    prefix = f"<{_PRIORITIES[logging.ERROR]}>" if under_journald(stream, env) else ""
    stream.write(prefix + shown(message) + "\n")
    stream.flush()


def setup_logging(
    level: str,
    log_file: Optional[Path],
    env: Mapping[str, str] = os.environ,
    stderr: Optional[TextIO] = None,
    stdout: Optional[TextIO] = None,
    journal_socket: str = JOURNAL_SOCKET,
) -> str:
    """Install our handlers on the root logger; returns 'journald', 'file' or 'console'."""
    stderr = stderr or sys.stderr
    stdout = stdout or sys.stdout
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OWN_HANDLER, False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    handlers: List[logging.Handler] = []
    if under_journald(stderr, env):
        # The stream, a priority on every line: when the journal's socket is not there.
        stream = logging.StreamHandler(stderr)
        stream.setFormatter(JournaldFormatter("%(message)s"))
        journal: logging.Handler
        try:
            journal = JournalHandler(journal_socket, fallback=stream)
            journal.setFormatter(ShownFormatter("%(message)s"))
        except OSError:
            journal = stream
        handlers.append(journal)
        mode = "journald"
    else:
        console = logging.StreamHandler(stdout)
        console.setFormatter(ShownFormatter(CONSOLE_FORMAT, "%Y-%m-%d %H:%M:%S"))
        handlers.append(console)
        mode = "console"
        if log_file is not None:
            try:
                log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                file_handler = PrivateFileHandler(str(log_file), encoding="utf-8")
                os.chmod(log_file, 0o600)
                file_handler.setFormatter(ShownFormatter(CONSOLE_FORMAT, "%Y-%m-%d %H:%M:%S"))
                handlers.append(file_handler)
                mode = "file"
            except OSError as error:
                print(f"omnimemory-learner: cannot write log file {shown(log_file)}: {shown(error)}", file=stderr)
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
