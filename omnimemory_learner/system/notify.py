"""Telling the service manager how we are: sd_notify through `sdnotify`.

sdnotify 0.3.2 swallows errors unless debug=True, encodes Latin-1 (anything
else is silently dropped) and connects once.  This wrapper sends ASCII only,
counts and logs failures, and reconnects when a send fails.  Outside systemd
(no NOTIFY_SOCKET) every call is a silent no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping, Optional

log = logging.getLogger(__name__)

MAX_STATUS_LENGTH = 200


def ascii_text(text: str) -> str:
    """Printable ASCII on one line: what STATUS= can carry safely."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text.replace("\n", " "))
    return cleaned[:MAX_STATUS_LENGTH]


class Notifier:
    def __init__(self, env: Mapping[str, str] = os.environ):
        self.socket_address = env.get("NOTIFY_SOCKET") or None
        self.failures = 0
        self._notifier = None
        self._last_failure_log = float("-inf")
        self.watchdog_interval = self._watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self.socket_address is not None

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> Optional[float]:
        """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or not env.get("NOTIFY_SOCKET"):
            return None
        if pid and pid.strip() != str(os.getpid()):
            return None
        try:
            microseconds = int(usec)
        except ValueError:
            return None
        return microseconds / 2e6 if microseconds > 0 else None

    def _connect(self):
        import sdnotify

        # sdnotify takes its address from os.environ at construction and
        # connects once; we connect to the address we were given (the "@"
        # form is an abstract socket) and let it do the sending, with
        # debug=True so that errors reach us.
        address = self.socket_address or ""
        if address.startswith("@"):
            address = "\0" + address[1:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        notifier = sdnotify.SystemdNotifier.__new__(sdnotify.SystemdNotifier)
        notifier.debug = True
        notifier.socket = sock
        return notifier

    def send(self, message: str) -> bool:
        if not self.enabled:
            return False
        for attempt in (1, 2):
            try:
                notifier = self._notifier
                if notifier is None:
                    notifier = self._notifier = self._connect()
                notifier.notify(message)
                return True
            except (OSError, UnicodeEncodeError) as error:
                # The socket may have gone away: connect afresh and try once more.
                self._close()
                if attempt == 2:
                    self.failures += 1
                    now = time.monotonic()
                    if now - self._last_failure_log > 60:
                        self._last_failure_log = now
                        log.warning("Cannot notify the service manager (%d failures so far): %s", self.failures, error)
        return False

    def _close(self) -> None:
        if self._notifier is not None and getattr(self._notifier, "socket", None) is not None:
            try:
                self._notifier.socket.close()
            except OSError:
                pass
        self._notifier = None

    def ready(self, status: Optional[str] = None) -> bool:
        message = "READY=1"
        if status:
            message += "\nSTATUS=" + ascii_text(status)
        return self.send(message + f"\nMAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + ascii_text(text))

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")
