"""Delivering closed sessions to the procedural API's POST /learn, in a thread.

Backoff belongs to the API, not to each session: while the API is down one
session at a time probes it, so ten thousand pending sessions cost no more
than one; once it answers, the outbox drains at full speed.  Every attempt of
a session carries the same Idempotency-Key.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import httpx

from .config import Config
from .storage.state import PendingSession, StateError, StateStore

log = logging.getLogger(__name__)

USER_AGENT = "omnimemory-learner"
FIRST_BACKOFF_SECONDS = 1.0
SWITCH_INTERVAL_SECONDS = 0.001


class Verdict:
    """What one answer of POST /learn means for the session (not its success/failure outcome)."""

    LEARNED = "learned"
    NOT_LEARNED = "not_learned"
    REJECTED = "rejected"
    RETRY = "retry"


def classify(response: httpx.Response):
    """(verdict, pattern_id or error text) for one answer of POST /learn."""
    status = response.status_code
    if status == 200:
        try:
            body = response.json()
        except ValueError:
            # A 200 that is not JSON did not come from the procedural API
            # (a proxy, a captive page): it is not proof of learning.
            return Verdict.RETRY, f"200 with a body that is not JSON: {response.text[:200]!r}"
        if not isinstance(body, dict) or "pattern_id" not in body:
            return Verdict.RETRY, f"200 without pattern_id: {response.text[:200]!r}"
        pattern_id = body["pattern_id"]
        if pattern_id is None:
            return Verdict.NOT_LEARNED, None
        return Verdict.LEARNED, str(pattern_id)
    if status == 429 or status >= 500 or status < 200 or 300 <= status < 400:
        return Verdict.RETRY, f"HTTP {status}: {response.text[:500]}"
    if 400 <= status < 500:
        return Verdict.REJECTED, f"HTTP {status}: {response.text[:2000]}"
    return Verdict.RETRY, f"unexpected HTTP {status}"


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, cap: float, first: float = FIRST_BACKOFF_SECONDS, rng: Optional[random.Random] = None):
        self.cap = cap
        self.first = min(first, cap)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * (2 ** min(self.failures, 30)))
        self.failures += 1
        # Half fixed, half random: spreads retries yet never retries at once.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


class Deliverer:
    """The delivery thread.  `wake()` after new sessions enter the outbox."""

    def __init__(
        self,
        state_dir: Path,
        api_url: str,
        timeout: float = 10.0,
        retry_max_seconds: float = 300.0,
        on_progress=None,
    ):
        self.state_dir = state_dir
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.backoff = Backoff(retry_max_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._on_progress = on_progress
        self.in_flight = False
        self.api_down_since: Optional[float] = None
        self.last_error: Optional[str] = None
        self.retry_at: Optional[float] = None  # wall-clock time of the next probe

    @classmethod
    def from_config(cls, config: Config) -> Deliverer:
        return cls(config.state_dir, config.api_url, config.request_timeout_seconds, config.retry_max_seconds)

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration: the next request uses it."""
        self.api_url = config.api_url.rstrip("/")
        self.timeout = config.request_timeout_seconds
        self.backoff.cap = config.retry_max_seconds

    def start(self) -> None:
        # The delivery thread waits on the network; during a catch-up the main
        # thread computes.  With the default 5 ms GIL switch interval every
        # answer waits up to 5 ms for the GIL, which halves delivery to a
        # server that answers in 5 ms; 1 ms costs the reader little.
        if sys.getswitchinterval() > SWITCH_INTERVAL_SECONDS:
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, grace: float) -> bool:
        """Ask the thread to stop; a POST in flight gets `grace` seconds. True if it stopped."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(grace)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        store = None
        client = None
        try:
            store = StateStore(self.state_dir, synchronous="NORMAL")
            client = httpx.Client(
                timeout=self.timeout,
                headers={"User-Agent": USER_AGENT},
                # Request headers and body are two writes: without TCP_NODELAY the
                # body can wait for the server's delayed ACK (40 ms a session).
                transport=httpx.HTTPTransport(
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                ),
                # No proxies from the environment: the API is local.
                trust_env=False,
            )
            while not self._stop.is_set():
                delivered_any = self._drain(store, client)
                if self._stop.is_set():
                    break
                if not delivered_any:
                    self._wake.wait(60.0)
                    self._wake.clear()
        except Exception:
            log.exception("Delivery thread failed; the service will restart it")
        finally:
            if client is not None:
                client.close()
            if store is not None:
                store.close()

    def _drain(self, store: StateStore, client: httpx.Client) -> bool:
        """Send what is pending; False when there was nothing to send."""
        after_id = 0
        sent = False
        while not self._stop.is_set():
            self._wake.clear()
            batch = store.pending(limit=100, after_id=after_id)
            if not batch:
                return sent
            for session in batch:
                if self._stop.is_set():
                    return True
                announce = True
                while not self._deliver_one(store, client, session, announce):
                    announce = False
                    # The API is down: wait, then probe again with the same session.
                    delay = self.backoff.next_delay()
                    self.retry_at = time.time() + delay
                    log.info("Will retry in %.1f s (%s)", delay,
                             time.strftime("%H:%M:%S", time.localtime(self.retry_at)))
                    if self._stop.wait(delay):
                        return True
                sent = True
                after_id = session.id
        return True

    def _record(self, write, *args) -> bool:
        """Write a delivery result, retrying while the state store cannot be written.

        False only when the service stops before the record could be made.
        """
        wait = FIRST_BACKOFF_SECONDS
        while True:
            try:
                write(*args)
                return True
            except StateError as error:
                log.error("Cannot record a delivery result (will retry in %.0f s): %s", wait, error)
            if self._stop.wait(wait):
                return False
            wait = min(wait * 2, 30.0)

    def _deliver_one(self, store: StateStore, client: httpx.Client, session: PendingSession, announce: bool) -> bool:
        """One attempt; True when the session is settled (learned, not learned, rejected)."""
        body = session.body()
        if announce:
            log.info(
                "Learning from session %s: %d commands, outcome=%s",
                session.session_id, len(body["session_commands"]), session.outcome,
            )
        self.in_flight = True
        try:
            response = client.post(
                self.api_url + "/learn",
                content=json.dumps(body, separators=(",", ":")),
                headers={"Content-Type": "application/json", "Idempotency-Key": session.idempotency_key},
            )
            verdict, detail = classify(response)
            problem = f"Procedural API failed for session {session.session_id}: {detail}"
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            verdict, detail = Verdict.RETRY, f"{type(error).__name__}: {error or 'connection refused'}"
            problem = f"Failed to connect to procedural API: {error or 'connection refused'}"
        except httpx.HTTPError as error:
            verdict, detail = Verdict.RETRY, f"{type(error).__name__}: {error or 'no answer'}"
            problem = f"Procedural API did not answer: {detail}"
        finally:
            self.in_flight = False
        if verdict == Verdict.RETRY:
            log.error("%s", problem)
            self._record(store.note_failure, session.id, detail or "")
            if self.api_down_since is None:
                self.api_down_since = time.time()
            self.last_error = detail
            return False
        if verdict == Verdict.REJECTED:
            log.error(
                "Procedural API rejected session %s; kept as rejected (see 'omnimemory-learner outbox'): %s",
                session.session_id, detail,
            )
            self._record(store.mark_rejected, session.id, detail or "")
        else:
            # The API has learned it: from here on only the record may be
            # retried, never the POST (that would teach the session twice).
            if not self._record(store.mark_delivered, session.id, detail):
                return True  # stopping: unrecorded, it is resent with the same key after a restart
            if detail:
                log.info(
                    "Successfully learned pattern %s from session %s (%d commands)",
                    detail, session.session_id, len(body["session_commands"]),
                )
            else:
                log.info("Session %s was not learned (the API judged it too short)", session.session_id)
        if self.api_down_since is not None:
            log.info("Procedural API is answering again after %.0f s", time.time() - self.api_down_since)
            self.api_down_since = None
        self.backoff.reset()
        self.retry_at = None
        if self._on_progress:
            self._on_progress()
        return True
