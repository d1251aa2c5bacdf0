"""Delivering closed sessions to the procedural API's POST /learn, in a thread.

Two kinds of trouble, told apart by the sessions around a failure:

* the API is down or failing everything (connection refused, or two sessions
  in a row answered with a failure): backoff belongs to the API, one session
  at a time probes it, so ten thousand pending sessions cost no more than
  one, and once it answers the outbox drains oldest first at full speed;
* one session fails on its own (it failed and the next session was taken):
  that session backs off by itself while the others go on, and once it has
  failed `session_retry_limit` times over at least `session_retry_seconds`
  it is parked as rejected with its last error (`outbox`, `outbox retry`).

Every request has one deadline, `request_timeout_seconds`, for connecting,
sending and reading the whole answer, and at most ANSWER_CAP bytes of an
answer are read: a slow, dripping or huge answer costs neither time nor
memory beyond those bounds.  Redirects are not followed.  Every attempt of a
session carries the same Idempotency-Key.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import sys
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Tuple

import httpx

from .config import Config
from .core.fates import TAKEN_BY_API, Fate, Verdict
from .core.sessions import ClosedSession
from .core.unusual import UnusualDetector
from .logs import NOTICE
from .storage.history import (
    HistoryStore,
    settled_entry,
    unsent_entry,
)
from .storage.state import PendingSession, StateError, StateStore

log = logging.getLogger(__name__)

USER_AGENT = "omnimemory-learner"
FIRST_BACKOFF_SECONDS = 1.0
SWITCH_INTERVAL_SECONDS = 0.001
# The most of an answer that is read; the connection is dropped past it.  The
# API's answers are a few hundred bytes; 64 KiB keeps any error text in full.
ANSWER_CAP = 64 * 1024
# The most of an error kept in the outbox and the log.
ERROR_TEXT_CAP = 500
# Longest wait for the delivery thread with nothing due (a wake comes sooner).
IDLE_WAIT_SECONDS = 60.0
# The unusual-session model is built at start from this many recent sessions of the history.
UNUSUAL_MODEL_SESSIONS = 20_000
# Sessions settled without being sent, waiting here for the history; past this
# the reading thread records them itself (bounds the memory they hold).
UNSENT_QUEUE_CAP = 2_000
# History retention while idle: at most this many batches (of 500) before looking for work again.
PRUNE_BATCHES_PER_IDLE = 20


# 4xx answers that say "again later", not "never": retried like 5xx.
RETRIED_4XX = frozenset({408, 409, 425, 429})
# Answers whose Retry-After is honoured (capped by retry_max_seconds).
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Answer(NamedTuple):
    """An HTTP answer read within the bounds: at most ANSWER_CAP bytes of its body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    truncated: bool  # the body was longer than the cap (and the connection was dropped)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _shown(text: str, limit: int = ERROR_TEXT_CAP) -> str:
    """Untrusted text cut to `limit`, marked when cut, and storable.

    A lone surrogate (JSON can carry one: "\\ud800") cannot be stored as
    SQLite text; it becomes its escape, so recording the answer cannot fail.
    """
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _body_text(answer: Answer) -> str:
    text = _shown(answer.text)
    return text + (f" (answer longer than {ANSWER_CAP // 1024} KiB; not read further)" if answer.truncated else "")


def redirect_target(answer: Answer) -> Optional[str]:
    if 300 <= answer.status_code < 400:
        return _shown(answer.headers.get("location") or "(no Location)", 300)
    return None


def _earlier_flag(value: Optional[str]) -> Optional[Tuple[float, str]]:
    """An earlier build's flag, JSON [score, "a -> b"], or None (also for anything else)."""
    try:
        flag = json.loads(value) if value else None
    except ValueError:
        return None
    if isinstance(flag, list) and len(flag) == 2 and isinstance(flag[0], (int, float)) and isinstance(flag[1], str):
        return float(flag[0]), flag[1]
    return None


def classify(answer: Answer) -> Tuple[str, Optional[str]]:
    """(verdict, pattern_id or error text) for one answer of POST /learn."""
    status = answer.status_code
    if status == 200:
        try:
            body = answer.json()
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
            # A 200 that is not JSON did not come from the procedural API
            # (a proxy, a captive page): it is not proof of learning.
            return Verdict.RETRY, f"200 with a body that is not JSON: {_body_text(answer)!r}"
        if not isinstance(body, dict) or "pattern_id" not in body:
            return Verdict.RETRY, f"200 without pattern_id: {_body_text(answer)!r}"
        pattern_id = body["pattern_id"]
        if pattern_id is None:
            return Verdict.NOT_LEARNED, None
        return Verdict.LEARNED, _shown(str(pattern_id), 200)
    target = redirect_target(answer)
    if target is not None:
        # Following it would send the session where the operator did not point
        # api_url; every session gets the same answer, so this is the API's trouble.
        return Verdict.RETRY, f"HTTP {status} redirect to {target} (not followed: set api_url to it if that is the API)"
    if 400 <= status < 500 and status not in RETRIED_4XX:
        return Verdict.REJECTED, f"HTTP {status}: {_body_text(answer)}"
    return Verdict.RETRY, f"HTTP {status}: {_body_text(answer)}"


def retry_after(answer: Answer, now: float) -> Optional[float]:
    """Seconds the API asked us to wait (Retry-After on 429 and 503), or None."""
    if answer.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = (answer.headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # "²".isdigit() is true, and float() refuses it
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is None or when.tzinfo is None:
            return None  # an HTTP date is GMT; one without a zone is not one
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


# -- one bounded request ------------------------------------------------------------


class _DeadlineStream:
    """A connection whose every read and write waits no longer than the request's deadline.

    httpx has per-phase timeouts only: an answer dripped a byte at a time
    never trips a read timeout.  Clipping each socket operation to the time
    left makes the deadline hold for the status line, headers and body alike.
    """

    def __init__(self, inner: Any, clock: _Deadline):
        self._inner = inner
        self._clock = clock

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, self._clock.clip(timeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._inner.write(buffer, self._clock.clip(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> _DeadlineStream:
        return _DeadlineStream(self._inner.start_tls(*args, **kwargs), self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend:
    """httpcore's network backend, making _DeadlineStreams with TCP_NODELAY set."""

    def __init__(self, inner: Any, clock: _Deadline):
        self._inner = inner
        self._clock = clock

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None, *args: Any, **kwargs: Any) -> Any:
        stream = self._inner.connect_tcp(host, port, self._clock.clip(timeout), *args, **kwargs)
        sock = stream.get_extra_info("socket")
        if sock is not None:
            # For httpx < 0.24, which cannot be given socket options (see _transport).
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return _DeadlineStream(stream, self._clock)

    def __getattr__(self, name: str) -> Any:  # connect_unix_socket, sleep: as they are
        return getattr(self._inner, name)


class _Deadline:
    def __init__(self) -> None:
        self.at = float("inf")  # time.monotonic() of the current request's deadline

    def left(self) -> float:
        return self.at - time.monotonic()

    def clip(self, timeout: Optional[float]) -> float:
        # At least a millisecond: a socket timeout of 0 would mean non-blocking.
        left = max(self.left(), 0.001)
        return left if timeout is None else min(timeout, left)


class DeadlineExceeded(httpx.TimeoutException):
    """The whole request took longer than its deadline."""


class BoundedClient:
    """HTTP requests with one deadline each and a capped answer; no redirects, no proxies.

    Works with httpx 0.23 (Debian bookworm) to 0.28: the deadline is applied
    through httpcore's network backend where the transport exposes it
    (`deadline_per_operation`); otherwise each phase's timeout is the time
    left and the answer's body is read against the deadline, which bounds
    everything but a status line and headers dripped a byte at a time.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._deadline = _Deadline()
        transport = _transport()
        self.deadline_per_operation = _install_deadline(transport, self._deadline)
        self._client = httpx.Client(
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            transport=transport,
            follow_redirects=False,
            # No proxies from the environment: the API is local.
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BoundedClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def request(
        self, method: str, url: str, content: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None
    ) -> Answer:
        """One request, finished within `timeout` seconds; raises httpx.HTTPError otherwise."""
        start = time.monotonic()
        self._deadline.at = start + self.timeout
        try:
            with self._client.stream(
                method, url, content=content, headers=headers, timeout=httpx.Timeout(max(self._deadline.left(), 0.001))
            ) as response:
                chunks: List[bytes] = []
                size = 0
                truncated = False
                for chunk in response.iter_raw():
                    if self._deadline.left() <= 0:
                        raise DeadlineExceeded(f"no whole answer within {self.timeout:g} s")
                    chunks.append(chunk[: ANSWER_CAP - size])
                    size += len(chunks[-1])
                    if size >= ANSWER_CAP:
                        # Leaving the block unread closes the connection.
                        truncated = True
                        break
                body = _decoded(b"".join(chunks), response.headers.get("content-encoding", ""))
                return Answer(response.status_code, response.headers, body, truncated)
        except httpx.TimeoutException as error:
            if self._deadline.left() <= 0 and not isinstance(error, DeadlineExceeded):
                raise DeadlineExceeded(f"no whole answer within {self.timeout:g} s") from error
            raise
        finally:
            self._deadline.at = float("inf")


def _install_deadline(transport: httpx.HTTPTransport, deadline: _Deadline) -> bool:
    """Put _DeadlineBackend under the transport's connection pool; False where it has none.

    httpx 0.23 to 0.28 keep an httpcore pool in `_pool`, and the pool its
    network backend in `_network_backend`, read whenever it connects.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None or not hasattr(backend, "connect_tcp"):
        return False
    pool._network_backend = _DeadlineBackend(backend, deadline)  # type: ignore[union-attr]
    return True


def _transport() -> httpx.HTTPTransport:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    try:
        # Request headers and body are two writes: without TCP_NODELAY the
        # body can wait for the server's delayed ACK (40 ms a session).
        return httpx.HTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    except TypeError:
        # httpx < 0.24 has no socket_options: _DeadlineBackend sets it instead.
        return httpx.HTTPTransport(limits=limits)


def _decoded(raw: bytes, encoding: str) -> bytes:
    """The body without its Content-Encoding, never more than ANSWER_CAP bytes.

    We ask for identity; a server that compresses anyway is decoded with a
    bounded output (a small gzip can unpack to gigabytes).
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            # 32 + MAX_WBITS: a gzip or zlib header, found by itself.
            return zlib.decompressobj(32 + zlib.MAX_WBITS).decompress(raw, ANSWER_CAP)
        except zlib.error:
            try:
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, ANSWER_CAP)
            except zlib.error:
                pass
    return f"(a body in Content-Encoding {_shown(encoding, 40)!r}, not decoded)".encode()


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, cap: float, first: float = FIRST_BACKOFF_SECONDS, rng: Optional[random.Random] = None):
        self.cap = cap
        self.first = min(first, cap)
        self.failures = 0
        self._rng = rng or random.Random()

    def delay_after(self, failures: int) -> float:
        """The wait after `failures` failures in a row (the first wait after 0)."""
        ceiling = min(self.cap, self.first * (2 ** min(failures, 30)))
        # Half fixed, half random: spreads retries yet never retries at once.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def next_delay(self) -> float:
        delay = self.delay_after(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class _Failure(NamedTuple):
    session: PendingSession
    error: str
    at: float  # wall-clock time


class Deliverer:
    """The delivery thread.  `wake()` after new sessions enter the outbox."""

    def __init__(
        self,
        state_dir: Path,
        api_url: str,
        timeout: float = 10.0,
        retry_max_seconds: float = 300.0,
        on_progress: Optional[Callable[[], None]] = None,
        session_retry_limit: int = 10,
        session_retry_seconds: float = 3600.0,
        fold_repeats: bool = False,
        history_days: float = 30.0,
        history_max_sessions: int = 100_000,
    ):
        self.state_dir = state_dir
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.backoff = Backoff(retry_max_seconds)
        self.session_retry_limit = session_retry_limit
        self.session_retry_seconds = session_retry_seconds
        self.fold_repeats = fold_repeats
        self.history_days = history_days
        self.history_max_sessions = history_max_sessions
        self._history: Optional[HistoryStore] = None
        # The user's transition model: built from the history when the thread
        # starts, taught each session the API takes.  Here, not in the reading
        # thread: a catch-up closes sessions far faster than the API takes
        # them, and scoring each there cost it a third of its speed.
        self._unusual: Optional[UnusualDetector] = None
        # Sessions settled without being sent (too short, below min_quality),
        # handed over by the reading thread for the history (take_unsent).
        self._unsent: Deque[ClosedSession] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._on_progress = on_progress
        self.in_flight = False
        self.api_down_since: Optional[float] = None
        self.last_error: Optional[str] = None
        self.retry_at: Optional[float] = None  # wall-clock time of the next probe
        # The last failure the API answered, judged by the next attempt of
        # another session: taken, the failure was the session's own; failed
        # too, the API is in trouble and the failure counts against neither.
        self._suspect: Optional[_Failure] = None
        # Sessions that failed since the API last settled one: a probe for an
        # API in trouble goes to another session, so two sessions that always
        # fail cannot hold up the rest.
        self._tried: Dict[int, None] = {}
        # Sessions settled without a POST because the ledger had their key: said once a run.
        self._already_delivered_said = False

    @classmethod
    def from_config(cls, config: Config, on_progress: Optional[Callable[[], None]] = None) -> Deliverer:
        return cls(
            config.state_dir,
            config.api_url,
            config.request_timeout_seconds,
            config.retry_max_seconds,
            on_progress=on_progress,
            session_retry_limit=config.session_retry_limit,
            session_retry_seconds=config.session_retry_seconds,
            fold_repeats=config.fold_repeats,
            history_days=config.history_days,
            history_max_sessions=config.history_max_sessions,
        )

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration: the next request uses it."""
        self.api_url = config.api_url.rstrip("/")
        self.timeout = config.request_timeout_seconds
        self.backoff.cap = config.retry_max_seconds
        self.session_retry_limit = config.session_retry_limit
        self.session_retry_seconds = config.session_retry_seconds
        self.fold_repeats = config.fold_repeats
        self.history_days = config.history_days
        self.history_max_sessions = config.history_max_sessions

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

    def take_unsent(self, sessions: List[ClosedSession]) -> bool:
        """Sessions settled without being sent, to record in the history here; False: record them yourself.

        The reading thread hands them over (Pipeline's on_unsent) so that a
        catch-up does not wait on the history.  deque.extend and popleft are
        thread-safe.
        """
        if not self.alive or self.retry_at is not None or len(self._unsent) + len(sessions) > UNSENT_QUEUE_CAP:
            return False  # not running, or waiting out an API outage: they would sit in memory
        self._unsent.extend(sessions)
        self._wake.set()
        return True

    def take_back_unsent(self) -> List[ClosedSession]:
        """What was handed over and not recorded yet (after stop(): a POST in flight outlived the grace)."""
        taken = []
        while self._unsent:
            try:
                taken.append(self._unsent.popleft())
            except IndexError:  # the thread took the last one meanwhile
                break
        return taken

    def _record_unsent(self) -> None:
        unsent = self._unsent
        while unsent and self._history is not None:
            entries = [unsent_entry(unsent.popleft()) for _ in range(min(len(unsent), 1000))]
            self._history.record(entries)

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
            self._history = HistoryStore(self.state_dir)
            self._unusual = UnusualDetector(
                entry.commands for entry in self._history.sessions(limit=UNUSUAL_MODEL_SESSIONS, settled=TAKEN_BY_API)
            )
            client = BoundedClient(self.timeout)
            while not self._stop.is_set():
                self._record_unsent()
                idle = self._drain(store, client)
                if self._stop.is_set():
                    break
                if idle > 0:
                    self._prune_history()
                    self._wake.wait(min(idle, IDLE_WAIT_SECONDS))
                    self._wake.clear()
        except Exception:
            log.exception("Delivery thread failed; the service will restart it")
        finally:
            if client is not None:
                client.close()
            if store is not None:
                store.close()
            if self._history is not None:
                try:
                    self._record_unsent()
                except Exception:
                    log.exception("Could not record sessions settled without being sent in the history")
                self._history.close()
                self._history = None

    def _drain(self, store: StateStore, client: BoundedClient) -> float:
        """Send what is due, oldest first; the seconds until something is due again."""
        after_id = 0
        wrapped = False  # this pass started again from the oldest
        passed_over = False  # this pass skipped due sessions that failed since the API last took one
        while not self._stop.is_set():
            self._wake.clear()
            self._record_unsent()  # between batches too: a long catch-up hands over many
            now = time.time()
            due = store.pending(limit=100, after_id=after_id, due_by=now)
            batch = [session for session in due if session.id not in self._tried]
            if not batch:
                if due:
                    passed_over = True
                    after_id = due[-1].id
                    continue
                if after_id and not wrapped:
                    wrapped, after_id = True, 0  # earlier sessions may be due again
                    continue
                if passed_over:
                    # Every due session failed since the API last took one:
                    # start again from the oldest (the API's backoff was waited).
                    self._tried.clear()
                    wrapped, passed_over, after_id = False, False, 0
                    continue
                next_due = store.next_due(now)
                return IDLE_WAIT_SECONDS if next_due is None else max(next_due - time.time(), 0.001)
            for session in batch:
                if self._stop.is_set():
                    return 0.0
                wait = self._deliver_one(store, client, session)
                wrapped = passed_over = False
                if wait is None:
                    after_id = session.id
                    continue
                # The API is down or failing (wait), or sessions became due
                # again (0): go on with the oldest due session.
                if wait > 0 and self._wait(wait):
                    return 0.0
                after_id = 0
                break
        return 0.0

    def _prune_history(self) -> None:
        """History retention, in small batches while nothing is due (reading never waits for it)."""
        history = self._history
        for _ in range(PRUNE_BATCHES_PER_IDLE):
            if history is None or self._stop.is_set() or self._wake.is_set():
                return
            if not history.prune_some(self.history_days, self.history_max_sessions):
                return

    def _remember(self, session: PendingSession, settled: str, pattern_id: Optional[str] = None) -> None:
        """A settled session into the history (losing it never stops delivery)."""
        unusual = self._judge(session) if settled in TAKEN_BY_API else None
        if self._history is not None:
            self._history.record([settled_entry(session, settled, pattern_id, unusual)])

    def _judge(self, session: PendingSession) -> Optional[Tuple[float, str]]:
        """Score a session the API took against the user's model, then teach the model it.

        (score, rarest transition) when it is unusual, which is said once, at NOTICE.
        """
        detector = self._unusual
        score, flagged = None, False
        if detector is not None:
            score, flagged = detector.observe([command for command, _, _ in session.commands])
        earlier = _earlier_flag(session.unusual)
        if earlier is not None:
            return earlier  # flagged, and said at NOTICE, by the build that read it
        if detector is None or not flagged or score is None:
            return None
        rarest = f"{score.rarest[0]} -> {score.rarest[1]}"
        log.log(
            NOTICE,
            "Unusual session %s: its rarest transition is %s (score %.2f, above the %gth "
            "percentile %.2f of your history)",
            session.session_id,
            rarest,
            score.value,
            detector.flag_percentile,
            detector.threshold,
        )
        return round(score.value, 3), rarest

    def _wait(self, delay: float) -> bool:
        """Wait `delay` seconds for the API; True when the service stops meanwhile."""
        self.retry_at = time.time() + delay
        self._record_unsent()  # what was handed over before the outage; take_unsent refuses meanwhile
        log.info("Will retry in %.1f s (%s)", delay, time.strftime("%H:%M:%S", time.localtime(self.retry_at)))
        return self._stop.wait(delay)

    def _record(self, write: Callable[..., Any], *args: Any) -> Tuple[bool, Any]:
        """Write a delivery result, retrying while the state store cannot be written.

        (True, what `write` returned); (False, None) only when the service
        stops before the record could be made.
        """
        wait = FIRST_BACKOFF_SECONDS
        while True:
            try:
                return True, write(*args)
            except StateError as error:
                log.error("Cannot record a delivery result (will retry in %.0f s): %s", wait, error)
            if self._stop.wait(wait):
                return False, None
            wait = min(wait * 2, 30.0)

    def _already_delivered(self, store: StateStore, session: PendingSession) -> bool:
        """The ledger (the history) has this session's key: settle it without a POST.

        A key settled as `rejected` does not count: `outbox retry` sends it again on purpose.
        """
        if self._history is None or not self._history.delivered([session.content_key], excluding=(Fate.REJECTED,)):
            return False
        if not self._record(store.mark_already_delivered, session.id)[0]:
            return True  # stopping: the next run asks the ledger again
        if not self._already_delivered_said:
            self._already_delivered_said = True
            log.info(
                "Session %s was delivered before (the history has its content key): not sent again; "
                "such sessions are counted as sessions_already_delivered and not logged again this run",
                session.session_id,
            )
        return True

    def _deliver_one(self, store: StateStore, client: BoundedClient, session: PendingSession) -> Optional[float]:
        """One attempt.  None to go on with the next session; else seconds to wait for the API."""
        if self._already_delivered(store, session):
            return None
        body = session.body(self.fold_repeats)
        if session.attempts == 0:
            log.info(
                "Learning from session %s: %d commands, outcome=%s",
                session.session_id,
                len(body["session_commands"]),
                session.outcome,
            )
        client.timeout = self.timeout  # a reload may have changed it
        self.in_flight = True
        connected = True
        asked_wait: Optional[float] = None
        try:
            answer = client.request(
                "POST",
                self.api_url + "/learn",
                content=json.dumps(body, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json", "Idempotency-Key": session.idempotency_key},
            )
            try:
                verdict, detail = classify(answer)
                asked_wait = retry_after(answer, time.time())
            except Exception as error:  # noqa: BLE001 - an answer we cannot read must not kill the thread
                # (which would resend the session after a restart of the thread, even after a 200).
                verdict, detail = Verdict.RETRY, f"an answer that cannot be read ({type(error).__name__})"
            problem = f"Procedural API failed for session {session.session_id}: {detail}"
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            connected = False
            verdict, detail = Verdict.RETRY, f"{type(error).__name__}: {error or 'connection refused'}"
            problem = f"Failed to connect to procedural API: {error or 'connection refused'}"
        except httpx.HTTPError as error:
            verdict, detail = Verdict.RETRY, f"{type(error).__name__}: {error or 'no answer'}"
            problem = f"Procedural API did not answer for session {session.session_id}: {detail}"
        finally:
            self.in_flight = False
        if verdict == Verdict.RETRY:
            return self._failed_attempt(store, session, detail or "", problem, connected, asked_wait)
        if verdict == Verdict.REJECTED:
            log.error(
                "Procedural API rejected session %s; kept as rejected (see 'omnimemory-learner outbox'): %s",
                session.session_id,
                detail,
            )
            self._record(store.mark_rejected, session.id, detail or "")
            self._remember(session, Fate.REJECTED)
        else:
            # The API has learned it: from here on only the record may be
            # retried, never the POST (that would teach the session twice).
            if not self._record(store.mark_delivered, session.id, detail)[0]:
                return None  # stopping: unrecorded, it is resent with the same key after a restart
            self._remember(session, Fate.LEARNED if detail else Fate.NOT_LEARNED, detail)
            if detail:
                log.info(
                    "Successfully learned pattern %s from session %s (%d commands)",
                    detail,
                    session.session_id,
                    len(body["session_commands"]),
                )
            else:
                log.info("Session %s was not learned (the API judged it too short)", session.session_id)
        restart = self._api_answered(store, session)
        if self._on_progress:
            self._on_progress()
        return 0.0 if restart else None

    def _failed_attempt(
        self,
        store: StateStore,
        session: PendingSession,
        detail: str,
        problem: str,
        connected: bool,
        asked_wait: Optional[float],
    ) -> Optional[float]:
        log.error("%s", problem)
        self.last_error = detail
        if not connected:
            # Nothing was sent: the API is down, whatever the session holds.
            # It stays due, so the oldest session probes and the order holds.
            self._record(store.note_failure, session.id, detail, None)
            return self._api_down(True, None)
        now = time.time()
        suspect = self._suspect
        self._suspect = _Failure(session, detail, now)
        self._tried[session.id] = None
        # Out of the way for its own backoff, so the next session shows
        # whether it is this session or the API that fails.
        self._record(store.note_failure, session.id, detail, now + self.backoff.delay_after(session.failures))
        if suspect is not None or asked_wait is not None:
            # Two failures in a row (or the API asked us to wait): the API is
            # in trouble, and the earlier failure is not held against its session.
            return self._api_down(suspect is not None, asked_wait)
        return None

    def _api_down(self, failing: bool, asked_wait: Optional[float]) -> float:
        """The wait before the next request: the API's backoff while it fails, at least what it asked."""
        if self.api_down_since is None:
            self.api_down_since = time.time()
        delay = self.backoff.next_delay() if failing else 0.0
        if asked_wait is not None:
            delay = max(delay, min(asked_wait, self.backoff.cap))
        # Never 0: that would mean "go on at once" to the loop.
        return max(delay, 0.001)

    def _api_answered(self, store: StateStore, settled: PendingSession) -> bool:
        """The API settled a session: judge the last failure.  True when others are due again."""
        suspect, self._suspect = self._suspect, None
        if suspect is not None and suspect.session.id != settled.id:
            # It failed and the next session was taken: its own failure.
            self._blame(store, suspect)
        # The others failed while the API was in trouble: no mark against
        # them, and they are due again now, oldest first.
        excused = [
            session_id
            for session_id in self._tried
            if session_id != settled.id and (suspect is None or session_id != suspect.session.id)
        ]
        self._tried.clear()
        if excused:
            self._record(store.reschedule, excused, None)
        if self.api_down_since is not None:
            log.info("Procedural API is answering again after %.0f s", time.time() - self.api_down_since)
            self.api_down_since = None
        self.backoff.reset()
        self.retry_at = None
        return bool(excused)

    def _blame(self, store: StateStore, failure: _Failure) -> None:
        session = failure.session
        _, parked = self._record(
            store.blame_failure,
            session.id,
            failure.error,
            failure.at,
            failure.at + self.backoff.delay_after(session.failures + 1),
            self.session_retry_limit,
            self.session_retry_seconds,
        )
        if parked:
            self._remember(session, Fate.REJECTED)
            log.error(
                "Session %s failed %d times over %.0f s while the API took other sessions; parked as rejected "
                "(see 'omnimemory-learner outbox'; 'omnimemory-learner outbox retry' sends it again): %s",
                session.session_id,
                parked[0],
                parked[1],
                failure.error,
            )
        else:
            log.warning(
                "Session %s failed while the API took the next one; it backs off on its own", session.session_id
            )
