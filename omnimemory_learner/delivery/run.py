"""One run of the delivery thread: what it opened, and one session's way from POST to record.

Guarantee: after a 2xx only the record is retried, never the POST (`record`
retries a write the state store refused until it is made or the service
stops; a session left unrecorded is sent again after a restart, with the same
Idempotency-Key).  Before each POST the ledger (the history) is asked whether
the session's content key was delivered before; if so it is settled without one.

One attempt goes `LearnAPI.learn` (the answer as a Verdict) -> `Health` (what
it says of the API and of the session) -> `Settler` (the one writer of a
settled session); a POST left unanswered is the `Relearner`'s doubt until
GET /patterns says whether it landed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Tuple

from ..core.fates import Verdict
from ..core.privacy import NO_RULES, Privacy
from ..storage.outbox import PendingSession
from ..storage.state import StateError, StateStore
from .health import FIRST_BACKOFF_SECONDS, Failure, Health
from .learn_api import PLAIN_IDS, Attempt, LearnAPI, SessionIds
from .relearn import Reasons, Relearner, Steps
from .settle import Settler

log = logging.getLogger(__name__)

# Longest wait between tries of a record the state store refused.
RECORD_RETRY_MAX_SECONDS = 30.0


def record(stop: threading.Event, write: Callable[..., Any], *args: Any) -> Tuple[bool, Any]:
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


def excluded(privacy: Privacy, session: PendingSession) -> bool:
    """A session in the outbox the rules exclude now (its id, or one of its event types)."""
    return privacy.active and privacy.excludes_session(session.session_id, (command[2] for command in session.commands))


class Target(NamedTuple):
    """Where and how a POST goes; read again for every attempt, since a reload may change it."""

    api_url: str
    timeout: float
    fold_repeats: bool
    privacy: Privacy = NO_RULES  # what may not be sent (core/privacy.py), as of the last reload
    session_ids: SessionIds = PLAIN_IDS  # what a body's session_id says (send_session_id)


class Run:
    """What one run of the thread opened (in the thread), and what it does with one session."""

    def __init__(
        self,
        store: StateStore,
        api: LearnAPI,
        settler: Settler,
        health: Health[PendingSession],
        relearner: Relearner,
        stop: threading.Event,
        on_progress: Optional[Callable[[], None]] = None,
    ):
        self.store = store
        self.api = api
        self.settler = settler
        self.health = health
        self.relearner = relearner
        self._stop = stop
        self._on_progress = on_progress

    def deliver_one(self, session: PendingSession, target: Target) -> Optional[float]:
        """One attempt.  None to go on with the next session; else seconds to wait for the API."""
        if excluded(target.privacy, session):
            # Committed before a rule (a reload) excluded it: removed unsent, not recorded anywhere else.
            record(self._stop, self.store.outbox.drop, session.id)
            return None
        if self.settler.in_ledger(session):
            record(self._stop, self.settler.already_delivered, self.store, session)
            return None  # if stopping unrecorded, the next run asks the ledger again
        session = session.judged(self.settler.outcome_rule)
        self.api.configure(target.api_url, target.timeout, target.session_ids)
        attempt = self.api.learn(session, target.fold_repeats)
        if attempt.verdict == Verdict.RETRY:
            return self._failed(session, attempt)
        if attempt.verdict == Verdict.REJECTED:
            recorded, _ = record(self._stop, self.settler.rejected, self.store, session, attempt.detail or "")
        else:
            # The API has learned it: from here on only the record may be
            # retried, never the POST (that would teach the session twice).
            self.relearner.answered(attempt)
            recorded, _ = record(
                self._stop, self.settler.taken, self.store, session, attempt.detail, attempt.commands, attempt.body
            )
        if not recorded:
            return None  # stopping: unrecorded, it is resent with the same key after a restart
        restart = self._answered(session)
        if self._on_progress:
            self._on_progress()
        return 0.0 if restart else None

    def _failed(self, session: PendingSession, attempt: Attempt) -> Optional[float]:
        log.error("%s", attempt.problem)
        detail = attempt.detail or ""
        now = time.time()
        if not attempt.connected:
            # Nothing was sent: the API is down, whatever the session holds.
            # It stays due, so the oldest session probes and the order holds.
            record(self._stop, self.store.outbox.note_failure, session.id, detail, None)
            return self.health.unreachable(now)
        if attempt.unanswered:
            self.relearner.doubt(session, attempt, self.store)
        failed = self.health.failed(session, detail, now, attempt.asked_wait)
        record(self._stop, self.store.outbox.note_failure, session.id, detail, failed.retry_at)
        return failed.wait

    def _answered(self, session: PendingSession) -> bool:
        """The API settled a session: judge the failures before it.  True when others are due again."""
        settled = self.health.settled(session.id, time.time())
        if settled.blamed is not None:
            self._blame(settled.blamed)
        # Excused: they are due again now, oldest first.
        if settled.excused:
            record(self._stop, self.store.outbox.reschedule, settled.excused, None)
        if settled.down_for is not None:
            log.info("Procedural API is answering again after %.0f s", settled.down_for)
            self.relearner.ask(Reasons.BACK)
        released = [] if self.relearner.settles_doubts else self.relearner.release_doubts(self.store)
        if released:
            # Without GET /patterns to ask, the API answering another session is the best sign it is
            # there again: what it left unanswered goes again (counted twice if it had landed).
            record(self._stop, self.store.outbox.reschedule, released, None)
        return bool(settled.excused or released)

    def _blame(self, failure: Failure[PendingSession]) -> None:
        session = failure.session
        _, recorded = record(self._stop, self.store.outbox.failure_record, session.id)
        blame = None if recorded is None else self.health.blame(failure, recorded)
        record(self._stop, self.settler.blamed, self.store, session, blame, failure.error)

    def relearn(self, target: Target) -> bool:
        """One request of the relearner's, when it has one due; True if it made one."""
        self.api.configure(target.api_url, target.timeout, target.session_ids)
        steps: Optional[Steps] = self.relearner.step(
            self.api, self.settler.history, self.store, target.timeout, target.privacy
        )
        if steps is None:
            return False
        for session, pattern_id, attempt in steps.landed:
            log.info("GET /patterns shows that session %s, left unanswered, was learned", session.session_id)
            record(self._stop, self.settler.taken, self.store, session, pattern_id, attempt.commands, attempt.body)
            self._answered(session)
        if steps.released:
            record(self._stop, self.store.outbox.reschedule, steps.released, None)
        return True
