"""The delivery thread: takes the outbox oldest first and sends each session to the API, exactly once.

Guarantee: after a 2xx only the record is retried, never the POST.  Once the
API has answered 2xx, the result is written to the state store until it is
written (or the service stops; then the session is sent again after a
restart, with the same Idempotency-Key); the session is never sent again in
this run.  Before each POST the ledger (the history) is asked whether the
session's content key was delivered before; if so it is settled without one.

One attempt goes `LearnAPI.learn` (the answer as a Verdict) -> `Health` (what
it says of the API and of the session) -> `Settler` (the one writer of a
settled session).  The order: due sessions oldest first; a session that
failed since the API last settled one is passed over while others are due,
so a few sessions that always fail never hold up the rest; while the API is
down one session at a time probes it.  `stop()` gives a POST in flight a
grace, and records in the caller's thread what was handed over and not yet
recorded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from ..config import Config
from ..core.fates import Verdict
from ..core.sessions import ClosedSession
from ..storage.outbox import PendingSession
from ..storage.state import StateError, StateStore
from .health import FIRST_BACKOFF_SECONDS, Backoff, Failure, Health
from .http import BoundedClient
from .learn_api import Attempt, LearnAPI
from .relearn import Reasons, Relearner, Steps
from .settle import Handover, Settler
from .watch import ApiWatch

log = logging.getLogger(__name__)

SWITCH_INTERVAL_SECONDS = 0.001
# Longest wait for the delivery thread with nothing due (a wake comes sooner).
IDLE_WAIT_SECONDS = 60.0
# Longest wait between tries of a record the state store refused.
RECORD_RETRY_MAX_SECONDS = 30.0


class _Run(NamedTuple):
    """What one run of the thread opened, in the thread."""

    store: StateStore
    api: LearnAPI
    settler: Settler


def _record(stop: threading.Event, write: Callable[..., Any], *args: Any) -> Tuple[bool, Any]:
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
        if stop.wait(wait):
            return False, None
        wait = min(wait * 2, RECORD_RETRY_MAX_SECONDS)


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
        relearner: Optional[Relearner] = None,
    ):
        self.state_dir = state_dir
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.fold_repeats = fold_repeats
        self.history_days = history_days
        self.history_max_sessions = history_max_sessions
        # Kept across restarts of the thread: an API that was down still is.
        self.health: Health[PendingSession] = Health(retry_max_seconds, session_retry_limit, session_retry_seconds)
        self.handover = Handover(state_dir)
        # The thread's writer of settled sessions; its history connection is
        # opened in the thread and closed when a run of the thread ends.
        self._settler = Settler(state_dir)
        # Reconciling with a forgetful API, and the POSTs it left unanswered (kept across thread restarts).
        self.relearner = relearner or Relearner()
        self._watch = ApiWatch(self._heard_back)
        self.last_error: Optional[str] = None
        self._on_progress = on_progress
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

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
            relearner=Relearner.from_config(config),
        )

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration: the next request uses it."""
        self.api_url = config.api_url.rstrip("/")
        self.timeout = config.request_timeout_seconds
        self.health.configure(config.retry_max_seconds, config.session_retry_limit, config.session_retry_seconds)
        self.fold_repeats = config.fold_repeats
        self.history_days = config.history_days
        self.history_max_sessions = config.history_max_sessions
        self.relearner.configure(config)
        self._watch_api()
        self._wake.set()  # a reconcile turned on, or sooner, is due now

    # -- what the service reads -------------------------------------------------------

    @property
    def api_down_since(self) -> Optional[float]:
        return self.health.down_since

    @property
    def retry_at(self) -> Optional[float]:
        """Wall-clock time of the next probe while the API is in trouble, else None."""
        return self.health.retry_at

    @property
    def backoff(self) -> Backoff:
        return self.health.backoff

    @property
    def session_retry_limit(self) -> int:
        return self.health.limit

    @property
    def session_retry_seconds(self) -> float:
        return self.health.limit_seconds

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- start, wake, hand over, stop -----------------------------------------------

    def start(self) -> None:
        # The delivery thread waits on the network; during a catch-up the main
        # thread computes.  With the default 5 ms GIL switch interval every
        # answer waits up to 5 ms for the GIL, which would halve delivery to a
        # server that answers in 5 ms; 1 ms costs the reader little.
        if sys.getswitchinterval() > SWITCH_INTERVAL_SECONDS:
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()
        self._watch_api()

    def _watch_api(self) -> None:
        if self.relearner.enabled:
            self._watch.start(self.api_url)
        else:
            self._watch.stop()

    def _heard_back(self) -> None:
        """The watcher's thread: the API listens again after its connection dropped (restarted?)."""
        self.relearner.ask(Reasons.DROPPED)
        self._wake.set()

    def reconcile_now(self) -> None:
        """`omnimemory-learner reconcile` asked (SIGUSR1): reconcile at the thread's next step."""
        self.relearner.ask(Reasons.ASKED)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def hand_over(self, sessions: List[ClosedSession]) -> None:
        """Sessions settled without being sent (too short, below min_quality), for the history; never raises.

        Queued for the thread, so that a catch-up does not wait on the
        history; recorded at once in the caller's thread when the thread is
        not running, is waiting out an API outage (they would sit in memory
        for minutes), or the queue is full.
        """
        try:
            if not self._offer(sessions):
                self.handover.record_now(sessions)
        except Exception:  # the history never stops reading
            log.exception("Could not record sessions settled without being sent in the history")

    def _offer(self, sessions: List[ClosedSession]) -> bool:
        if not self.alive or self.health.retry_at is not None or not self.handover.offer(sessions):
            return False
        self._wake.set()
        return True

    def stop(self, grace: float) -> bool:
        """Ask the thread to stop; a POST in flight gets `grace` seconds.  True if it stopped.

        Then what was handed over and not recorded yet (the thread stopped
        first, or a POST outlived the grace) is recorded here.
        """
        self._stop.set()
        self._wake.set()
        self._watch.stop()
        stopped = True
        if self._thread is not None:
            self._thread.join(grace)
            stopped = not self._thread.is_alive()
        try:
            self.handover.record_left()
        except Exception:  # the history never stops a shutdown
            log.exception("Could not record sessions settled without being sent in the history")
        return stopped

    def close(self) -> None:
        """After stop(): the caller's own connection to the history."""
        self.handover.close()

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        store: Optional[StateStore] = None
        client: Optional[BoundedClient] = None
        settler: Optional[Settler] = None
        try:
            store = StateStore(self.state_dir, synchronous="NORMAL")
            settler = self._settler
            settler.judge_from_history()
            client = BoundedClient(self.timeout)
            run = _Run(store, LearnAPI(client, self.api_url), settler)
            while not self._stop.is_set():
                self.handover.record_into(settler)
                idle = self._drain(run)
                if self._stop.is_set():
                    break
                if idle > 0 and not self._relearn(run):
                    settler.prune(self.history_days, self.history_max_sessions, self._interrupted)
                    left = self.relearner.wait_left()
                    self._wake.wait(min(idle, IDLE_WAIT_SECONDS, IDLE_WAIT_SECONDS if left is None else left))
                    self._wake.clear()
        except Exception:
            log.exception("Delivery thread failed; the service will restart it")
        finally:
            if client is not None:
                client.close()
            if store is not None:
                store.close()
            if settler is not None:
                try:
                    self.handover.record_into(settler)
                except Exception:
                    log.exception("Could not record sessions settled without being sent in the history")
                settler.close()

    def _interrupted(self) -> bool:
        return self._stop.is_set() or self._wake.is_set()

    def _drain(self, run: _Run) -> float:
        """Send what is due, oldest first; the seconds until something is due again."""
        after_id = 0
        wrapped = False  # this pass started again from the oldest
        passed_over = False  # this pass skipped due sessions that failed since the API last took one
        while not self._stop.is_set():
            self._wake.clear()
            self.handover.record_into(run.settler)  # between batches too: a long catch-up hands over many
            now = time.time()
            # No backoff reaches past its cap: a schedule beyond it predates a clock stepped back.
            latest = now + self.health.backoff.cap + 1.0
            due = run.store.outbox.pending(limit=100, after_id=after_id, due_by=now, latest=latest)
            doubts = self.relearner.doubts  # unanswered POSTs: held until GET /patterns says if they landed
            undoubted = [session for session in due if session.id not in doubts]
            batch = [session for session in undoubted if not self.health.passed_over(session.id)]
            if not batch:
                if due:
                    passed_over = passed_over or bool(undoubted)
                    after_id = due[-1].id
                    continue
                if after_id and not wrapped:
                    wrapped, after_id = True, 0  # earlier sessions may be due again
                    continue
                if passed_over:
                    # Every due session failed since the API last took one:
                    # start again from the oldest (the API's backoff was waited).
                    self.health.start_over()
                    wrapped, passed_over, after_id = False, False, 0
                    continue
                next_due = run.store.outbox.next_due(now)
                return IDLE_WAIT_SECONDS if next_due is None else max(next_due - time.time(), 0.001)
            for session in batch:
                if self._stop.is_set():
                    return 0.0
                wait = self._deliver_one(run, session)
                wrapped = passed_over = False
                if wait is None:
                    after_id = session.id
                    continue
                # The API is down or failing (wait), or sessions became due
                # again (0): go on with the oldest due session.
                if wait > 0 and self._wait(run, wait):
                    return 0.0
                after_id = 0
                break
        return 0.0

    def _wait(self, run: _Run, delay: float) -> bool:
        """Wait `delay` seconds for the API; True when the service stops meanwhile."""
        self.handover.record_into(run.settler)  # what was handed over before the outage; _offer refuses meanwhile
        retry_at = self.health.retry_at  # set by health with the wait it asked for
        when = time.strftime("%H:%M:%S", time.localtime(retry_at if retry_at is not None else time.time() + delay))
        log.info("Will retry in %.1f s (%s)", delay, when)
        return self._stop.wait(delay)

    # -- one session -----------------------------------------------------------------

    def _deliver_one(self, run: _Run, session: PendingSession) -> Optional[float]:
        """One attempt.  None to go on with the next session; else seconds to wait for the API."""
        if run.settler.in_ledger(session):
            _record(self._stop, run.settler.already_delivered, run.store, session)
            return None  # if stopping unrecorded, the next run asks the ledger again
        run.api.configure(self.api_url, self.timeout)  # a reload may have changed them
        attempt = run.api.learn(session, self.fold_repeats)
        if attempt.verdict == Verdict.RETRY:
            return self._failed(run, session, attempt)
        if attempt.verdict == Verdict.REJECTED:
            recorded, _ = _record(self._stop, run.settler.rejected, run.store, session, attempt.detail or "")
        else:
            # The API has learned it: from here on only the record may be
            # retried, never the POST (that would teach the session twice).
            self.relearner.answered(attempt)
            recorded, _ = _record(
                self._stop, run.settler.taken, run.store, session, attempt.detail, attempt.commands, attempt.body
            )
        if not recorded:
            return None  # stopping: unrecorded, it is resent with the same key after a restart
        restart = self._answered(run, session)
        if self._on_progress:
            self._on_progress()
        return 0.0 if restart else None

    def _failed(self, run: _Run, session: PendingSession, attempt: Attempt) -> Optional[float]:
        log.error("%s", attempt.problem)
        detail = attempt.detail or ""
        self.last_error = detail
        now = time.time()
        if not attempt.connected:
            # Nothing was sent: the API is down, whatever the session holds.
            # It stays due, so the oldest session probes and the order holds.
            _record(self._stop, run.store.outbox.note_failure, session.id, detail, None)
            return self.health.unreachable(now)
        if attempt.unanswered:
            self.relearner.doubt(session, attempt)
        failed = self.health.failed(session, detail, now, attempt.asked_wait)
        _record(self._stop, run.store.outbox.note_failure, session.id, detail, failed.retry_at)
        return failed.wait

    def _answered(self, run: _Run, session: PendingSession) -> bool:
        """The API settled a session: judge the failures before it.  True when others are due again."""
        settled = self.health.settled(session.id, time.time())
        if settled.blamed is not None:
            self._blame(run, settled.blamed)
        # Excused: they are due again now, oldest first.
        if settled.excused:
            _record(self._stop, run.store.outbox.reschedule, settled.excused, None)
        if settled.down_for is not None:
            log.info("Procedural API is answering again after %.0f s", settled.down_for)
            self.relearner.ask(Reasons.BACK)
        released = [] if self.relearner.settles_doubts else self.relearner.release_doubts()
        if released:
            # Without GET /patterns to ask, the API answering another session is the best sign it is
            # there again: what it left unanswered goes again (counted twice if it had landed).
            _record(self._stop, run.store.outbox.reschedule, released, None)
        return bool(settled.excused or released)

    # -- reconciling ---------------------------------------------------------------

    def _relearn(self, run: _Run) -> bool:
        """One request of the relearner's, when it has one due; True if it made one."""
        run.api.configure(self.api_url, self.timeout)
        steps: Optional[Steps] = self.relearner.step(run.api, run.settler.history, run.store, self.timeout)
        if steps is None:
            return False
        for session, pattern_id, attempt in steps.landed:
            log.info("GET /patterns shows that session %s, left unanswered, was learned", session.session_id)
            _record(self._stop, run.settler.taken, run.store, session, pattern_id, attempt.commands, attempt.body)
            self._answered(run, session)
        if steps.released:
            _record(self._stop, run.store.outbox.reschedule, steps.released, None)
        return True

    def _blame(self, run: _Run, failure: Failure[PendingSession]) -> None:
        session = failure.session
        _, recorded = _record(self._stop, run.store.outbox.failure_record, session.id)
        blame = None if recorded is None else self.health.blame(failure, recorded)
        _record(self._stop, run.settler.blamed, run.store, session, blame, failure.error)
