"""Hearing the procedural API go away: one idle TCP connection, held open, that sends nothing.

The job: a restart of the API forgets everything it learned, and while the
learner has nothing to send it would not notice until the next periodic
reconcile. A connection that sends no request costs nothing while idle (a
thread blocked in recv, no timer, no wake-up); when the API's process exits
or restarts, the kernel or the server closes it and recv returns. The
watcher then connects again (after 0.5 s, doubling up to 8 s while refused)
and, once the API listens again, says so: the delivery thread reconciles.

The guarantee: it never sends a byte, never raises into its caller, and a
server that closes idle connections itself (a proxy, a read timeout) is
told apart from a restart: closed again soon after CLOSES_TO_GIVE_UP
reconnections that found the API listening at once, it stops watching and
says so once (the periodic reconcile still catches a restart then).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Optional, Tuple
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# While the API refuses: the first wait, doubled up to the longest (an outage costs a
# connection attempt every 10 s; a restart is heard within about as long of it listening).
FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 8.0
CONNECT_TIMEOUT_SECONDS = 2.0
# A connection the server closed sooner than this after it was made, while the API
# stayed reachable, was closed by the server's own rule rather than by a restart.
SHORT_LIVED_SECONDS = 120.0
CLOSES_TO_GIVE_UP = 3
# Then the watch rests this long before it tries again (the server's rule may change, or the server).
REST_SECONDS = 1800.0


def address_of(url: str) -> Optional[Tuple[str, int]]:
    """(host, port) of an http(s) URL, or None when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port


class ApiWatch:
    """`on_back()` is called (in the watcher's thread) when the API listens again after its connection dropped."""

    def __init__(self, on_back: Callable[[], None]):
        self._on_back = on_back
        self._address: Optional[Tuple[str, int]] = None
        self._sock: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.gave_up = False

    def start(self, url: str) -> None:
        address = address_of(url)
        if address is None:
            return
        if self._thread is not None and self._thread.is_alive() and address == self._address:
            return
        self.stop()
        self._address, self._stop = address, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(address, self._stop), name="api-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the recv
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(CONNECT_TIMEOUT_SECONDS + 1.0)
        self._thread = None

    def _run(self, address: Tuple[str, int], stop: threading.Event) -> None:
        try:
            self._watch(address, stop)
        except Exception:  # watching is a help, never a failure of the service
            log.debug("Watching the procedural API's connection failed", exc_info=True)

    def _watch(self, address: Tuple[str, int], stop: threading.Event) -> None:
        refused = 0
        short_closes = 0
        first = True
        while not stop.is_set():
            sock = self._connect(address)
            if sock is None:
                # Soon after a drop (a restart takes seconds), rarely in a long outage.
                stop.wait(min(FIRST_RETRY_SECONDS * 2**refused, LONGEST_RETRY_SECONDS))
                refused = min(refused + 1, 30)
                continue
            if not (first and not refused):
                self._on_back()  # listening again (or for the first time since the learner started)
            first, refused = False, 0
            opened = time.monotonic()
            self._hold(sock)
            if stop.is_set():
                return
            if time.monotonic() - opened < SHORT_LIVED_SECONDS and self._reachable(address):
                short_closes += 1
                if short_closes >= CLOSES_TO_GIVE_UP:
                    self._on_back()  # this close may have been a restart all the same
                    if not self.gave_up:
                        log.info(
                            "The procedural API closes idle connections; its restarts are noticed by the periodic "
                            "reconcile (reconcile_interval_minutes) or when it next answers; watching again in "
                            "%.0f minutes",
                            REST_SECONDS / 60,
                        )
                    self.gave_up = True  # said once
                    if stop.wait(REST_SECONDS):
                        return
                    short_closes, first = 0, True
            else:
                short_closes = 0

    def _connect(self, address: Tuple[str, int]) -> Optional[socket.socket]:
        try:
            sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_SECONDS)
        except OSError:
            return None
        sock.settimeout(None)
        with self._lock:
            self._sock = sock
        return sock

    def _hold(self, sock: socket.socket) -> None:
        """Block until the connection ends (the server closed it, or stop() shut it down)."""
        try:
            while sock.recv(4096):
                pass  # a server that speaks first: not a close
        except OSError:
            pass
        finally:
            with self._lock:
                if self._sock is sock:
                    self._sock = None
            sock.close()

    @staticmethod
    def _reachable(address: Tuple[str, int]) -> bool:
        try:
            socket.create_connection(address, timeout=CONNECT_TIMEOUT_SECONDS).close()
        except OSError:
            return False
        return True
