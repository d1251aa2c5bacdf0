"""The delivery thread: takes the outbox oldest first and sends each session to the API, exactly once.

The order: due sessions oldest first; a session that failed since the API
last settled one is passed over while others are due, so a few sessions that
always fail never hold up the rest; while the API is down one session at a
time probes it; a POST left unanswered is held until GET /patterns says
whether it landed.  What one attempt does, and its guarantee (after a 2xx
only the record is retried), is run.py's.  `stop()` gives a POST in flight a
grace, and records in the caller's thread what was handed over and not yet
recorded.  While the reading thread drains a backlog the thread holds its
POSTs (BacklogHold): the sessions wait in the outbox, the reader keeps the GIL.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

from ..config import Config
from ..core.evidence import DEFAULT_OUTCOME_RULE, OutcomeRule
from ..core.privacy import NO_RULES, Privacy
from ..core.sessions import ClosedSession
from ..storage.outbox import PendingSession
from ..storage.state import StateStore
from .health import Health
from .http import BoundedClient
from .learn_api import PLAIN_IDS, LearnAPI, SessionIds
from .relearn import Reasons, Relearner
from .run import Run, Target
from .settle import Handover, Retention, Settler
from .watch import ApiWatch

log = logging.getLogger(__name__)

SWITCH_INTERVAL_SECONDS = 0.001
# Longest wait for the delivery thread with nothing due (a wake comes sooner).
IDLE_WAIT_SECONDS = 60.0
# Longest hold of delivery while the reading thread drains a backlog (a writer that never stops).
BACKLOG_HOLD_SECONDS = 60.0


class BacklogHold:
    """The reading thread drains a backlog (batch after full batch): delivery waits for the drain's end.

    Both threads run Python under one GIL: during a catch-up every POST,
    record and handover the delivery thread made was CPU taken from the
    reader, which went at 0.6 of its speed with the API down.  The
    sessions are durable in the outbox meanwhile, and a catch-up's sessions
    are not live ones: a caught-up service reads one short batch at a time
    and never holds.  The hold ends with the drain, or `limit` seconds
    after the drain began, so that a writer that never stops cannot starve
    delivery.
    """

    def __init__(self, limit: float = BACKLOG_HOLD_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self._clock = clock
        self._changed = threading.Condition()
        self._since: Optional[float] = None  # when the backlog's drain began

    def reading(self, backlog: bool) -> None:
        """The reading thread: a drain found more than one batch waiting (True), or it ended (False)."""
        with self._changed:
            if not backlog:
                self._since = None
                self._changed.notify_all()
            elif self._since is None:
                self._since = self._clock()

    @property
    def holding(self) -> bool:
        since = self._since
        return since is not None and self._clock() - since < self.limit

    def wait(self, stop: threading.Event) -> None:
        """The delivery thread: wait while holding (until the drain ends, the limit, or `release()` for a stop)."""
        with self._changed:
            while not stop.is_set() and self._since is not None:
                left = self._since + self.limit - self._clock()
                if left <= 0:
                    return
                self._changed.wait(left)

    def release(self) -> None:
        with self._changed:
            self._changed.notify_all()


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
        outcome_rule: OutcomeRule = DEFAULT_OUTCOME_RULE,
        privacy: Privacy = NO_RULES,
        session_ids: SessionIds = PLAIN_IDS,
    ):
        self.state_dir = state_dir
        # Where and how each POST goes, and what may not be sent: one value, replaced on reload.
        self.target = Target(api_url.rstrip("/"), timeout, fold_repeats, privacy, session_ids)
        self.retention = Retention(history_days, history_max_sessions)
        # Kept across restarts of the thread: an API that was down still is.
        self.health: Health[PendingSession] = Health(retry_max_seconds, session_retry_limit, session_retry_seconds)
        self.handover = Handover(state_dir)
        # The thread's writer of settled sessions; its history connection is
        # opened in the thread and closed when a run of the thread ends.
        self._settler = Settler(state_dir)
        # Reconciling with a forgetful API, and the POSTs it left unanswered (kept across thread restarts).
        self.relearner = relearner or Relearner()
        self.relearner.reads.wake = self.wake  # GET /patterns in its own thread wakes this one when done
        self._watch = ApiWatch(self._heard_back)
        self._on_progress = on_progress
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.hold = BacklogHold()
        self.outcome_rule = outcome_rule

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
            outcome_rule=config.outcome,
            privacy=config.privacy,
            session_ids=SessionIds(config.send_session_id, config.state_dir),
        )

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration: the next request uses it."""
        session_ids = self.target.session_ids  # its secret kept, when the policy stays
        if session_ids.policy != config.send_session_id:
            session_ids = SessionIds(config.send_session_id, self.state_dir)
        self.target = Target(
            config.api_url.rstrip("/"), config.request_timeout_seconds, config.fold_repeats, config.privacy, session_ids
        )
        self.health.configure(config.retry_max_seconds, config.session_retry_limit, config.session_retry_seconds)
        self.outcome_rule = config.outcome
        self.retention = Retention(config.history_days, config.history_max_sessions)
        self.relearner.configure(config)
        self._watch_api()
        self._wake.set()  # a reconcile turned on, or sooner, is due now

    @property
    def outcome_rule(self) -> OutcomeRule:
        return self._settler.outcome_rule

    @outcome_rule.setter
    def outcome_rule(self, rule: OutcomeRule) -> None:
        # Both writers of settled sessions judge by it: this thread's, and the reading thread's (the handover's).
        self._settler.outcome_rule = self.handover.outcome_rule = rule

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

    def reading(self, backlog: bool) -> None:
        """The reading thread drains a backlog (True) or ended its drain (False): see BacklogHold."""
        self.hold.reading(backlog)

    def _offer(self, sessions: List[ClosedSession]) -> bool:
        # Held for a backlog, the thread would leave them in memory until the drain's end.
        if not self.alive or self.health.retry_at is not None or self.hold.holding or not self.handover.offer(sessions):
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
        self.hold.release()
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
            # The unanswered POSTs a previous run left.
            self.relearner.resume(store, self.target.fold_repeats, settler.outcome_rule, self.target.session_ids)
            client = BoundedClient(self.timeout)
            api = LearnAPI(client, self.api_url, self.target.session_ids)
            run = Run(store, api, settler, self.health, self.relearner, self._stop, self._on_progress)
            while not self._stop.is_set():
                self.handover.record_into(settler)
                idle = self._drain(run)
                if self._stop.is_set():
                    break
                if idle > 0 and not run.relearn(self._target()):
                    settler.prune(self.retention, self._interrupted)
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

    def _drain(self, run: Run) -> float:
        """Send what is due, oldest first; the seconds until something is due again."""
        after_id = 0
        wrapped = False  # this pass started again from the oldest
        passed_over = False  # this pass skipped due sessions that failed since the API last took one
        while not self._stop.is_set():
            self.hold.wait(self._stop)
            if self._stop.is_set():
                break
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
                wait = run.deliver_one(session, self._target())
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

    def _wait(self, run: Run, delay: float) -> bool:
        """Wait `delay` seconds for the API; True when the service stops meanwhile."""
        self.handover.record_into(run.settler)  # what was handed over before the outage; _offer refuses meanwhile
        retry_at = self.health.retry_at  # set by health with the wait it asked for
        when = time.strftime("%H:%M:%S", time.localtime(retry_at if retry_at is not None else time.time() + delay))
        log.info("Will retry in %.1f s (%s)", delay, when)
        return self._stop.wait(delay)

    def _target(self) -> Target:
        return self.target

    @property
    def api_url(self) -> str:
        return self.target.api_url

    @property
    def timeout(self) -> float:
        return self.target.timeout

    @property
    def fold_repeats(self) -> bool:
        return self.target.fold_repeats
