"""Teaching a forgetful procedural API again: when to reconcile, what to send, what was found.

The job: the API keeps its patterns in memory and a restart forgets them all
(INTERFACES.md). A reconcile is one GET /patterns, compared by
core/reconcile.py with what the history says the API took; the deficit is
taught again from the history, one session per step, most recent first.

The guarantees:

* off the reading path and behind live sessions: the delivery thread takes
  one step (one request) only when no outbox session is due, and looks at
  the outbox again after each;
* nothing taught twice: the plan is made from one answer of the API's own
  counts and the delivery thread is the only sender; any failure mid-way
  (not reachable, an error, no answer) drops the rest of the plan, and the
  next reconcile computes the deficit afresh after the usual backoff, so
  only a POST in flight that the API counted without answering can be
  counted again, and the next reconcile sees that too;
* POSTs that were sent and never answered (`doubts`: a slow API) are not
  sent again until GET /patterns shows whether they landed (core.reconcile.landed).

When: at the thread's start, whenever the API answers again after it could
not be reached (and when its connection drops: see watch.py), after a POST
was left unanswered, every `reconcile_interval_minutes` (0: never
periodically), and when `omnimemory-learner reconcile` asks; never with
`reconcile = false`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ..config import Config
from ..core.fates import Verdict
from ..core.reconcile import Doubt, Reconciliation, Taught, expected_pattern_id, landed, reconcile
from ..storage.history import HistoryStore
from ..storage.outbox import PendingSession
from ..storage.state import RECONCILE_META, StateStore
from .health import Backoff
from .learn_api import Attempt, LearnAPI, PatternsRead, rebuilt_body, sent_names

log = logging.getLogger(__name__)

# GET /patterns lists every pattern: it gets longer than a POST (and is never on the reading path).
PATTERNS_TIMEOUT_FLOOR = 30.0
# After a failed GET /patterns: the first wait (doubled up to retry_max_seconds; while the API is
# not reachable the watch, watch.py, says at once when it listens again).
FIRST_WAIT_SECONDS = 0.5


class Reasons:
    START = "start"
    BACK = "the API answers again"
    DROPPED = "the API's connection was dropped"
    UNANSWERED = "a POST was left unanswered"
    PERIODIC = "periodic"
    ASKED = "asked by omnimemory-learner reconcile"


class Relearner:
    """The delivery thread's reconciling: the schedule, the plan and the unanswered POSTs."""

    def __init__(
        self,
        enabled: bool = False,
        interval_minutes: float = 10.0,
        history_days: float = 30.0,
        event_map: Optional[Mapping[str, str]] = None,
        retry_max_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self.enabled = enabled
        self.interval = interval_minutes * 60.0
        self.history_days = history_days
        self._event_types = _reverse(event_map or {})
        self._backoff = Backoff(retry_max_seconds, FIRST_WAIT_SECONDS)
        self.check_at: Optional[float] = clock() if self.enabled else None
        self.why = Reasons.START
        self.plan: Deque[str] = deque()
        self.doubts: Dict[int, Tuple[PendingSession, Doubt, Attempt]] = {}
        # An API whose pattern ids are not ours to work out: its unanswered POSTs are sent again.
        self.ids_agree = True
        self.patterns_supported = True  # False: GET /patterns answered that it has none
        self.last: Dict[str, Any] = {}
        self._said: Optional[str] = None  # the last problem said, said once
        self._asked = False  # `reconcile` asked: one reconcile and its teaching, even with reconcile = false

    @classmethod
    def from_config(cls, config: Config) -> Relearner:
        return cls(
            config.reconcile,
            config.reconcile_interval_minutes,
            config.history_days,
            config.event_map,
            config.retry_max_seconds,
        )

    def configure(self, config: Config) -> None:
        was = self.enabled
        self.enabled = config.reconcile
        self.interval = config.reconcile_interval_minutes * 60.0
        self.history_days = config.history_days
        self._event_types = _reverse(config.event_map)
        self._backoff.cap = config.retry_max_seconds
        if not self.enabled:
            self.plan = deque()
            if not self.doubts:
                self.check_at = None
        elif not was:
            self.ask(Reasons.START)

    # -- the schedule ---------------------------------------------------------------

    def ask(self, why: str, even_if_off: bool = False) -> None:
        """Reconcile at the next step (already asked: the first reason stays).

        `even_if_off`: for unanswered POSTs, which are settled by GET /patterns even with reconcile = false.
        `omnimemory-learner reconcile` (Reasons.ASKED) is always heard: the user asked.
        """
        if why == Reasons.ASKED:
            self._asked = True
        elif not (self.enabled or even_if_off):
            return
        if self.check_at is None or self.check_at > self._clock():
            self.check_at, self.why = self._clock(), why

    def wait_left(self) -> Optional[float]:
        """Seconds until a step has work (0: now), None: nothing to do until asked."""
        if self.plan:
            return 0.0
        if self.check_at is None:
            return None
        return max(self.check_at - self._clock(), 0.0)

    def _retry(self) -> None:
        self.check_at = self._clock() + self._backoff.next_delay()

    def _periodic(self) -> None:
        self._backoff.reset()
        if self.enabled and self.interval:
            self.check_at, self.why = self._clock() + self.interval, Reasons.PERIODIC
        else:
            self.check_at, self.why = None, ""

    # -- what the delivery thread tells it --------------------------------------------

    def answered(self, attempt: Attempt) -> None:
        """A POST was answered: check that the API's pattern ids are the ones we work out."""
        if (
            attempt.verdict == Verdict.LEARNED
            and attempt.names
            and self.ids_agree
            and expected_pattern_id(attempt.names) != attempt.detail
        ):
            self.ids_agree = False
            log.info(
                "The procedural API's pattern ids are not the MD5 of the command names; a POST left "
                "unanswered is sent again once the API answers (it may then be counted twice)"
            )

    def doubt(self, session: PendingSession, attempt: Attempt) -> None:
        """Sent and never answered: held until GET /patterns tells whether it landed."""
        doubt = Doubt(session.content_key, expected_pattern_id(attempt.names), session.outcome)
        self.doubts[session.id] = (session, doubt, attempt)
        self.ask(Reasons.UNANSWERED, even_if_off=True)

    @property
    def settles_doubts(self) -> bool:
        """GET /patterns can tell whether an unanswered POST landed."""
        return self.ids_agree and self.patterns_supported

    def release_doubts(self) -> List[int]:
        """An API without a usable GET /patterns answered something else: its unanswered POSTs go again."""
        ids = list(self.doubts)
        self.doubts.clear()
        return ids

    # -- one step ------------------------------------------------------------------------

    def step(self, api: LearnAPI, history: HistoryStore, store: StateStore, timeout: float) -> Optional[Steps]:
        """One request, if one is due: a GET /patterns or one session taught again; None when idle."""
        if self.check_at is not None and self.check_at <= self._clock():
            return self._check(api, history, store, timeout)
        if self.plan:
            return self._teach_one(api, history, store)
        return None

    def _check(self, api: LearnAPI, history: HistoryStore, store: StateStore, timeout: float) -> Steps:
        read, taught, found = survey(api, history, store, timeout, self.history_days)
        if read.counts is None or found is None:
            return self._no_counts(read, store)
        self.patterns_supported = True
        if self._said is not None:
            log.info("GET /patterns can be read again; reconciling")
            self._said = None
        steps = Steps()
        if self.doubts:
            steps = self._settle_doubts(taught, read)
        if not (self.enabled or self._asked):
            self.check_at = None
            return steps
        self._asked = False
        self.plan = deque(session[3] for session in found.teach)  # the key (the history's rows are plain tuples)
        self._note(store, found, len(read.counts.counts))
        if found.sessions_lost:
            log.warning(
                "The procedural API has forgotten %d sessions of %d patterns (restarted?); "
                "teaching them again from the history",
                found.sessions_lost,
                found.patterns_lost,
            )
        if found.forgotten_not_in_history:
            log.warning(
                "The procedural API has forgotten %d sessions the history no longer holds "
                "(older than history_days, pruned, or history.db lost): they cannot be taught again",
                found.forgotten_not_in_history,
            )
        self._periodic()
        return steps

    def _no_counts(self, read: PatternsRead, store: StateStore) -> Steps:
        if read.problem != self._said and (read.connected or not self._said):
            level = logging.INFO if not read.connected else logging.WARNING
            log.log(level, "Cannot reconcile with the procedural API yet: %s", read.problem)
            self._said = read.problem
        released: List[int] = []
        self.patterns_supported = read.supported
        if read.answered and (not read.supported or not self.ids_agree):
            # Without counts to ask, the API's answer is the best word that it is there again.
            released = self.release_doubts()
        if not read.supported and not self.enabled:
            self.check_at = None
        elif read.supported:
            self._retry()
        else:
            self.check_at = self._clock() + max(self.interval, 600.0)
        self._record(store, {"problem": read.problem})
        return Steps(released=released)

    def _settle_doubts(self, taught: List[Taught], read: PatternsRead) -> Steps:
        assert read.counts is not None
        held = self.doubts
        if not self.ids_agree:
            return Steps(released=self.release_doubts())
        by_key = {doubt.key: outbox_id for outbox_id, (_, doubt, _) in held.items()}
        yes, no, _ = landed([doubt for _, doubt, _ in held.values()], taught, read.counts.counts, read.counts.unknown)
        steps = Steps(
            landed=[(held[by_key[key]][0], held[by_key[key]][1].pattern_id, held[by_key[key]][2]) for key in yes],
            released=[by_key[key] for key in no],
        )
        for key in yes + no:
            del held[by_key[key]]
        return steps

    def _teach_one(self, api: LearnAPI, history: HistoryStore, store: StateStore) -> Steps:
        key = self.plan.popleft()
        sent = history.sent_session(key)
        if sent is None:
            return Steps()  # pruned since the plan was made: the next reconcile counts it
        body = sent.body if sent.body is not None else rebuilt_body(sent, self._event_types)
        attempt = api.post(body, key, sent.session_id, sent_names(body))
        if attempt.verdict in (Verdict.LEARNED, Verdict.NOT_LEARNED):
            history.mark_retaught(key, time.time())
            self.last["taught"] = self.last.get("taught", 0) + 1
            if not self.plan:
                log.info(
                    "The procedural API has been taught again the %d sessions it had forgotten",
                    self.last["taught"],
                )
                self.last["repaired_at"] = time.time()
            self._record(store, self.last)
        elif attempt.verdict == Verdict.REJECTED:
            log.error("Procedural API rejected session %s taught again: %s", sent.session_id, attempt.detail)
            self.last["refused"] = self.last.get("refused", 0) + 1
        else:
            log.warning("Teaching the procedural API again stopped: %s; reconciling again later", attempt.detail)
            self.plan.clear()
            self.why = Reasons.BACK
            self._retry()
        return Steps(taught=1)

    # -- what status shows --------------------------------------------------------------

    def teaching(self) -> Optional[Dict[str, int]]:
        """While a plan is being taught: {"taught", "lost"} (STATUS= says it); else None."""
        if not self.plan:
            return None
        return {"taught": int(self.last.get("taught", 0)), "lost": int(self.last.get("sessions_lost", 0))}

    def _note(self, store: StateStore, found: Reconciliation, patterns: int) -> None:
        self.last = {
            "at": time.time(),
            "why": self.why,
            "patterns_held": patterns,
            "sessions_lost": found.sessions_lost,
            "patterns_lost": found.patterns_lost,
            "forgotten_not_in_history": found.forgotten_not_in_history,
            "unknown_patterns": found.unknown_patterns,
            "taught": 0,
        }
        self._record(store, self.last)

    def _record(self, store: StateStore, note: Mapping[str, Any]) -> None:
        try:
            store.note(RECONCILE_META, json.dumps({**self.last, **note}, separators=(",", ":")))
        except Exception:  # a status note never stops delivery
            log.debug("Could not record the last reconcile", exc_info=True)


class Survey(NamedTuple):
    """One GET /patterns against the history: what `omnimemory-learner reconcile --dry-run` shows."""

    read: PatternsRead
    taught: List[Taught]
    found: Optional[Reconciliation]  # None: the API's counts could not be had (read.problem says why)


def survey(api: LearnAPI, history: HistoryStore, store: StateStore, timeout: float, history_days: float) -> Survey:
    """What the API holds against what the history says it was taught (within history_days); writes nothing."""
    read = api.patterns(max(timeout * 3, PATTERNS_TIMEOUT_FLOOR))
    if read.counts is None:
        return Survey(read, [], None)
    taught = history.taught(time.time() - history_days * 86400.0)
    learned_ever = store.counters().get("patterns_learned")
    return Survey(read, taught, reconcile(taught, read.counts.counts, read.counts.unknown, learned_ever))


class Steps:
    """What a step leaves the delivery thread to do with outbox sessions."""

    __slots__ = ("landed", "released", "taught")

    def __init__(
        self,
        landed: Optional[List[Tuple[PendingSession, str, Attempt]]] = None,
        released: Optional[List[int]] = None,
        taught: int = 0,
    ):
        self.landed = landed or []  # unanswered POSTs the API counted: (session, its pattern id, the attempt)
        self.released = released or []  # outbox ids of unanswered POSTs to send again
        self.taught = taught


def _reverse(event_map: Mapping[str, str]) -> Dict[str, str]:
    """Command name -> the first event type that maps to it (to rebuild an old body's contexts)."""
    names: Dict[str, str] = {}
    for event_type, name in event_map.items():
        names.setdefault(name, event_type)
    return names
