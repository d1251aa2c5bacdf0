"""Settling a session: its outbox status, its history entry and whether it was unusual, written in one place.

Guarantee: every settled session is written here, and only here: by the
delivery thread (learned, not learned, rejected, parked, already delivered),
by `outbox drop`, and for the sessions the pipeline settled without sending
(too short, below min_quality), which reach the history through the handover
queue or at once in the caller's thread.  The outbox is written first: a
StateError leaves nothing else written, so the caller may retry the whole
call.  The history never stops learning (HistoryStore swallows its own
failures); the unusual-session judgement is made once per session the API
took, and said once, at NOTICE.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Callable, Deque, Iterable, List, NamedTuple, Optional, Tuple

from ..core.evidence import OutcomeRule
from ..core.fates import TAKEN_BY_API, Fate
from ..core.sessions import ClosedSession
from ..core.unusual import UnusualDetector
from ..logs import NOTICE
from ..storage.history import HistoryStore, settled_entry, unsent_entry
from ..storage.outbox import PendingSession
from ..storage.state import READER_CACHE_KIB, StateStore
from .health import Blame

log = logging.getLogger(__name__)

# The unusual-session model is built at start from this many recent sessions of the history.
UNUSUAL_MODEL_SESSIONS = 20_000
# Sessions settled without being sent, waiting for the delivery thread; past
# this the caller records them itself (bounds the memory they hold).
UNSENT_QUEUE_CAP = 2_000
# Sessions settled without being sent written to the history in one transaction.
UNSENT_BATCH = 1_000
# History retention while idle: at most this many batches (of 500) before looking for work again.
PRUNE_BATCHES_PER_IDLE = 20


class Retention(NamedTuple):
    """How much history is kept: history_days and history_max_sessions."""

    days: float
    max_sessions: int


class Settler:
    """The writer of settled sessions, with its own connection to the history (opened when first needed)."""

    def __init__(self, state_dir: Path, cache_kib: Optional[int] = None):
        self._state_dir = state_dir
        self._cache_kib = cache_kib  # the history connection's page cache (None: SQLite's default)
        self._history: Optional[HistoryStore] = None
        # The user's transition model (judge_from_history): in the delivery
        # thread, not the reading thread, which closes sessions far faster
        # than the API takes them during a catch-up.
        self._unusual: Optional[UnusualDetector] = None
        # outcome_rule: what judges a session reaching the history unjudged (see PendingSession.judged).
        self.outcome_rule = OutcomeRule()
        # Sessions settled without a POST because the ledger had their key: said once a run.
        self._already_delivered_said = False

    @property
    def history(self) -> HistoryStore:
        if self._history is None:
            self._history = HistoryStore(self._state_dir, cache_kib=self._cache_kib)
        return self._history

    def close(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None

    def judge_from_history(self) -> None:
        """Judge the sessions the API takes from here on, against a model of the recent history."""
        # Read twice from history.db (model, then scores), never held: see UnusualDetector.
        self._unusual = UnusualDetector(self.history.command_lists(UNUSUAL_MODEL_SESSIONS, TAKEN_BY_API))

    # -- sessions of the outbox ------------------------------------------------------

    def in_ledger(self, session: PendingSession) -> bool:
        """The history has this session's key: it was delivered before.

        A key settled as `rejected` does not count: `outbox retry` sends it again on purpose.
        """
        return bool(self.history.delivered([session.content_key], excluding=(Fate.REJECTED,)))

    def already_delivered(self, store: StateStore, session: PendingSession) -> None:
        """Settled without a POST: the ledger had its key (its history entry is there already)."""
        store.outbox.mark_already_delivered(session.id)
        if not self._already_delivered_said:
            self._already_delivered_said = True
            log.info(
                "Session %s was delivered before (the history has its content key): not sent again; "
                "such sessions are counted as sessions_already_delivered and not logged again this run",
                session.session_id,
            )

    def taken(
        self, store: StateStore, session: PendingSession, pattern_id: Optional[str], commands: int, sent: bytes = b""
    ) -> None:
        """The API answered 2xx: learned (with its pattern id) or not learned (None).

        `sent`: the body as POSTed, kept in the history of a learned session
        to teach it again should the API forget it.
        """
        store.outbox.mark_delivered(session.id, pattern_id)
        settled = Fate.LEARNED if pattern_id else Fate.NOT_LEARNED
        self._remember(session, settled, pattern_id, sent if pattern_id else b"")
        if pattern_id:
            log.info(
                "Successfully learned pattern %s from session %s (%d commands)",
                pattern_id,
                session.session_id,
                commands,
            )
        else:
            log.info("Session %s was not learned (the API judged it too short)", session.session_id)

    def rejected(self, store: StateStore, session: PendingSession, error: str) -> None:
        """The API refused the session (a 4xx that sending again will not change)."""
        log.error(
            "Procedural API rejected session %s; kept as rejected (see 'omnimemory-learner outbox'): %s",
            session.session_id,
            error,
        )
        store.outbox.mark_rejected(session.id, error)
        self._remember(session, Fate.REJECTED)

    def blamed(self, store: StateStore, session: PendingSession, blame: Optional[Blame], error: str) -> None:
        """A failure that was the session's own, as health judged it (None: the session settled meanwhile)."""
        written = blame is not None and store.outbox.blame_failure(
            session.id, blame.error, blame.failures, blame.first_failed_at, blame.next_attempt_at, blame.parked
        )
        if written and blame is not None and blame.parked:
            self._remember(session, Fate.REJECTED)
            log.error(
                "Session %s failed %d times over %.0f s while the API took other sessions; parked as rejected "
                "(see 'omnimemory-learner outbox'; 'omnimemory-learner outbox retry' sends it again): %s",
                session.session_id,
                blame.failures,
                blame.span,
                error,
            )
        else:
            log.warning(
                "Session %s failed while the API took the next one; it backs off on its own", session.session_id
            )

    def dropped(self, store: StateStore, session_id: int) -> bool:
        """The operator dropped an undelivered session; False when there is none with that id.

        Into the history, and so the delivered ledger: a rewritten database
        read again never sends a dropped session.
        """
        dropped = store.outbox.undelivered(session_id)
        if not store.outbox.drop(session_id):
            return False
        if dropped is not None:
            self._remember(dropped, Fate.DROPPED)
        return True

    # -- sessions settled without being sent -------------------------------------------

    def unsent(self, sessions: Iterable[ClosedSession]) -> None:
        """Too short or below min_quality: into the history only (the outbox has them as markers)."""
        rule = self.outcome_rule
        entries = [unsent_entry(session, rule) for session in sessions]
        if entries:
            self.history.record(entries)

    def prune(self, retention: Retention, interrupted: Callable[[], bool]) -> None:
        """History retention, in small batches until `interrupted()` (reading never waits for it)."""
        for _ in range(PRUNE_BATCHES_PER_IDLE):
            if interrupted() or not self.history.prune_some(retention.days, retention.max_sessions):
                return

    def _remember(
        self, session: PendingSession, settled: Fate, pattern_id: Optional[str] = None, sent: bytes = b""
    ) -> None:
        if session.rule is None:  # not judged on its way here (dropped by the operator, say)
            session = session.judged(self.outcome_rule)
        unusual = self._judge(session) if settled in TAKEN_BY_API else None
        self.history.record(
            [settled_entry(session, settled, pattern_id, unusual)], {session.content_key: sent} if sent else None
        )

    def _judge(self, session: PendingSession) -> Optional[Tuple[float, str]]:
        """Score a session the API took against the user's model, then teach the model it.

        (score, rarest transition) when it is unusual, which is said once, at NOTICE.
        """
        detector = self._unusual
        if detector is None:
            return None
        score, flagged = detector.observe([command for command, _, _ in session.commands])
        if not flagged or score is None:
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


class Handover:
    """Sessions settled without being sent, on their way from the reading thread to the history.

    `offer` queues them for the delivery thread (`record_into`), so that a
    catch-up never waits on the history; what it refuses, and what is left
    when the thread stops, is recorded in the caller's thread with a
    connection of its own (`record_now`).  deque.extend and popleft are
    thread-safe: each session is taken off the queue, and recorded, once.
    """

    def __init__(self, state_dir: Path):
        self._queue: Deque[ClosedSession] = deque()
        # The reading thread's own connection, which appends what a catch-up settles unsent: a small cache.
        self._own = Settler(state_dir, READER_CACHE_KIB)

    def offer(self, sessions: List[ClosedSession]) -> bool:
        """Queued for the delivery thread; False when the queue has no room for them."""
        if len(self._queue) + len(sessions) > UNSENT_QUEUE_CAP:
            return False
        self._queue.extend(sessions)
        return True

    def record_into(self, settler: Settler) -> None:
        """The delivery thread's side: what is queued, into the history through its settler."""
        queue = self._queue
        while queue:
            batch = []
            try:
                for _ in range(min(len(queue), UNSENT_BATCH)):
                    batch.append(queue.popleft())
            except IndexError:  # taken meanwhile by take_back
                pass
            settler.unsent(batch)

    @property
    def outcome_rule(self) -> OutcomeRule:
        return self._own.outcome_rule

    @outcome_rule.setter
    def outcome_rule(self, rule: OutcomeRule) -> None:
        self._own.outcome_rule = rule

    def record_now(self, sessions: List[ClosedSession]) -> None:
        """In the caller's thread, with its own connection to the history."""
        self._own.unsent(sessions)

    def take_back(self) -> List[ClosedSession]:
        """What is queued and not recorded yet, off the queue."""
        taken = []
        while self._queue:
            try:
                taken.append(self._queue.popleft())
            except IndexError:  # the thread took the last one meanwhile
                break
        return taken

    def record_left(self) -> None:
        """After the thread stopped: what it had not recorded, recorded here."""
        left = self.take_back()
        if left:
            self._own.unsent(left)

    def close(self) -> None:
        """The caller's connection (made again if anything is recorded after this)."""
        self._own.close()
