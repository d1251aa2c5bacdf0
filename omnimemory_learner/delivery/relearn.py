"""Teaching a forgetful procedural API again: when to reconcile, what to send, what was found.

The job: the API keeps its patterns in memory and a restart forgets them all
(INTERFACES.md). A reconcile is one GET /patterns, compared by
core/reconcile.py with what the history says the API took; the deficit is
taught again from the history, one session per step, most recent first.

The guarantees:

* off the reading path and behind live sessions: the delivery thread takes
  one step (one POST) only when no outbox session is due, and looks at the
  outbox again after each; GET /patterns, which may take long, runs in a
  thread of its own (`PatternsReads`), so no live POST waits behind it;
* nothing taught twice: the plan is made from one answer of the API's own
  counts and the delivery thread is the only sender; any failure mid-way
  (not reachable, an error, no answer) drops the rest of the plan, and the
  next reconcile computes the deficit afresh after the usual backoff, so
  only a POST in flight that the API counted without answering can be
  counted again, and the next reconcile sees that too;
* a listing that does not show what was taught again is not believed twice:
  a pattern taught again since the last GET /patterns and still short in
  the next is left alone for the life of the process (`Plan.unlisted`),
  said once at WARNING: at most one extra teaching per pattern, never a loop;
* POSTs that were sent and never answered (a slow API) are not sent again
  until GET /patterns shows whether they landed (doubts.py).

When: at the thread's start, whenever the API answers again after it could
not be reached (and when its connection drops: see watch.py), after a POST
was left unanswered, every `reconcile_interval_minutes` (0: never
periodically), and when `omnimemory-learner reconcile` asks; never with
`reconcile = false`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from typing import AbstractSet, Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple

from ..config import Config
from ..core.evidence import OutcomeRule
from ..core.fates import Verdict
from ..core.privacy import NO_RULES, Privacy
from ..core.reconcile import SUCCESS, Reconciliation, Taught, reconcile
from ..storage.history import HistoryStore
from ..storage.outbox import PendingSession
from ..storage.secret import SecretError
from ..storage.state import RECONCILE_META, StateStore
from .doubts import Doubts
from .health import Backoff
from .http import BoundedClient
from .learn_api import PLAIN_IDS, Attempt, LearnAPI, PatternsRead, SessionIds, rebuilt_body, sent_names

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


def patterns_timeout(timeout: float) -> float:
    return max(timeout * 3, PATTERNS_TIMEOUT_FLOOR)


class PatternsReads:
    """GET /patterns in a thread of its own when `wake` is set (the service); in the caller's when not (the CLI).

    `wake()` is called when a read is done, for the delivery thread to take it.
    A read is done when its answer is there, not when its thread has ended:
    the delivery thread woken by `wake()` may look before the thread is gone.
    """

    def __init__(self) -> None:
        self.wake: Optional[Callable[[], None]] = None
        self._done: Optional[Tuple[PatternsRead, float]] = None
        self._reading = False

    @property
    def busy(self) -> bool:
        return self._reading and self._done is None

    def start(self, url: str, timeout: float) -> None:
        wake = self.wake
        self._reading = True
        if wake is None:
            self._read(url, timeout, None)
            return
        threading.Thread(target=self._read, args=(url, timeout, wake), name="patterns", daemon=True).start()

    def take(self) -> Optional[Tuple[PatternsRead, float]]:
        """(the answer, when it was asked: wall clock), once; None while none is done."""
        done, self._done = self._done, None
        if done is not None:
            self._reading = False
        return done

    def _read(self, url: str, timeout: float, wake: Optional[Callable[[], None]]) -> None:
        asked_at = time.time()
        read = PatternsRead(None, "GET /patterns failed", answered=False)
        try:
            client = BoundedClient(timeout)
            try:
                read = LearnAPI(client, url).patterns(timeout)
            finally:
                client.close()
        except Exception as error:  # a read is a help; the next one is asked after the backoff
            log.warning("GET /patterns failed", exc_info=True)
            read = PatternsRead(None, f"GET /patterns failed: {type(error).__name__}: {error}", answered=False)
        finally:
            self._done = (read, asked_at)  # always: a read that never ends would stop reconciling for good
            if wake is not None:
                wake()


class Plan:
    """What is left to teach again, what was taught since the last GET /patterns, and what it does not list."""

    def __init__(self) -> None:
        self.keys: Deque[str] = deque()
        self.taught: Counter[Tuple[str, str]] = Counter()  # (pattern id, outcome) taught again since the last read
        self.before: Mapping[str, Tuple[int, int]] = {}  # the counts the last read answered
        self.unlisted: Set[str] = set()

    def __len__(self) -> int:
        return len(self.keys)

    def clear(self) -> None:
        self.keys.clear()

    def not_shown(self, counts: Mapping[str, Tuple[int, int]]) -> Set[str]:
        """Patterns this read shows with fewer than the last read's counts plus what was taught to them since.

        Counts never go down while the API runs: if none did (no pattern of
        the last read holds fewer now, so it did not forget meanwhile), the
        listing misses what it was taught, and believing it again would teach
        those sessions again.
        """
        before, taught = self.before, self.taught
        self.before, self.taught = counts, Counter()
        for pattern_id, (success, failure) in before.items():
            now = counts.get(pattern_id)
            if now is None or now[0] < success or now[1] < failure:
                return set()  # it forgot meanwhile (a restart): its listing is not at fault
        missed = set()
        for (pattern_id, outcome), added in taught.items():
            column = 0 if outcome == SUCCESS else 1
            if counts.get(pattern_id, (0, 0))[column] < before.get(pattern_id, (0, 0))[column] + added:
                missed.add(pattern_id)
        missed -= self.unlisted
        self.unlisted |= missed
        return missed


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
        self.plan = Plan()
        self.doubts = Doubts()
        self.reads = PatternsReads()
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
            self.plan.clear()
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
        """Seconds until a step has work (0: now), None: nothing to do until asked (or a read wakes it)."""
        if self.reads.busy:
            return None
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
        """A POST was answered (the doubts check its pattern id against the one we work out)."""
        self.doubts.answered(attempt)

    def doubt(self, session: PendingSession, attempt: Attempt, store: StateStore) -> None:
        """Sent and never answered: held until GET /patterns tells whether it landed."""
        self.doubts.add(session, attempt, store)
        self.ask(Reasons.UNANSWERED, even_if_off=True)

    def resume(
        self, store: StateStore, fold_repeats: bool, outcome_rule: OutcomeRule, session_ids: SessionIds = PLAIN_IDS
    ) -> None:
        """At the thread's start: the doubts a previous run left are held again, and asked about."""
        if self.doubts.load(store, fold_repeats, outcome_rule, session_ids):
            self.ask(Reasons.UNANSWERED, even_if_off=True)

    @property
    def settles_doubts(self) -> bool:
        """GET /patterns can tell whether an unanswered POST landed."""
        return self.doubts.ids_agree and self.patterns_supported

    def release_doubts(self, store: StateStore) -> List[int]:
        """An API without a usable GET /patterns answered something else: its unanswered POSTs go again."""
        return self.doubts.release(store, "GET /patterns cannot tell whether they landed")

    # -- one step ------------------------------------------------------------------------

    def step(
        self, api: LearnAPI, history: HistoryStore, store: StateStore, timeout: float, privacy: Privacy = NO_RULES
    ) -> Optional[Steps]:
        """One step, if one is due: a GET /patterns asked or taken, or one session taught again; None when idle.

        `privacy`: the exclusion rules; a session they exclude now is never taught again.
        """
        done = self.reads.take()
        if done is not None:
            return self._check(done[0], done[1], history, store, timeout, privacy)
        if self.reads.busy:
            return None
        if self.check_at is not None and self.check_at <= self._clock():
            self.check_at = None  # asked again (or retried) once this read is taken
            self.reads.start(api.url, patterns_timeout(timeout))
            done = self.reads.take()  # at once when the read runs here
            return Steps() if done is None else self._check(done[0], done[1], history, store, timeout, privacy)
        if self.plan:
            return self._teach_one(api, history, store, privacy)
        return None

    def _check(
        self,
        read: PatternsRead,
        read_at: float,
        history: HistoryStore,
        store: StateStore,
        timeout: float,
        privacy: Privacy = NO_RULES,
    ) -> Steps:
        _, taught, found = compared(read, history, store, self.history_days, self.plan.unlisted, privacy)
        if read.counts is None or found is None:
            return self._no_counts(read, store)
        self.patterns_supported = True
        if self._said is not None:
            log.info("GET /patterns can be read again; reconciling")
            self._said = None
        steps = self._settle_doubts(taught, read, read_at, timeout, store) if self.doubts else Steps()
        missed = self.plan.not_shown(read.counts.counts)
        if missed:
            log.warning(
                "GET /patterns does not show what was taught again to %d patterns (a partial listing, or ids "
                "it lists otherwise than it answers): they are not reconciled again until the service restarts",
                len(missed),
            )
            learned_ever = store.counters().get("patterns_learned")
            found = reconcile(taught, read.counts.counts, read.counts.unknown | self.plan.unlisted, learned_ever)
        if not (self.enabled or self._asked):
            # Off: only the doubts still held bring the next GET.
            self.check_at = None if steps.wait is None else self._clock() + steps.wait
            return steps
        self._asked = False
        self.plan.keys = deque(session[3] for session in found.teach)  # the key (the history's rows are plain tuples)
        self._say(found, self._note(store, found, len(read.counts.counts)))
        self._periodic()
        if self.doubts and steps.wait is not None:
            self.check_at = min(self.check_at or float("inf"), self._clock() + steps.wait)
        return steps

    def _say(self, found: Reconciliation, before: Mapping[str, Any]) -> None:
        if found.sessions_lost:
            log.warning(
                "The procedural API has forgotten %d sessions of %d patterns (restarted?); "
                "teaching them again from the history",
                found.sessions_lost,
                found.patterns_lost,
            )
        if found.forgotten_not_in_history and found.forgotten_not_in_history != before.get("forgotten_not_in_history"):
            # Said when the figure changes: it stays for good once the history cannot hold them.
            log.warning(
                "The procedural API has forgotten %d sessions the history no longer holds "
                "(older than history_days, pruned, or history.db lost): they cannot be taught again",
                found.forgotten_not_in_history,
            )

    def _no_counts(self, read: PatternsRead, store: StateStore) -> Steps:
        if read.problem != self._said and (read.connected or not self._said):
            level = logging.INFO if not read.connected else logging.WARNING
            log.log(level, "Cannot reconcile with the procedural API yet: %s", read.problem)
            self._said = read.problem
        released: List[int] = []
        self.patterns_supported = read.supported
        if read.answered and (not read.supported or not self.doubts.ids_agree):
            # Without counts to ask, the API's answer is the best word that it is there again.
            released = self.release_doubts(store)
        elif read.answered:
            released = self.doubts.unreadable_answer(store)
        if not read.supported and not self.enabled:
            self.check_at = None
        elif read.supported:
            self._retry()
        else:
            self.check_at = self._clock() + max(self.interval, 600.0)
        self._record(store, {"problem": read.problem})
        return Steps(released=released)

    def _settle_doubts(
        self, taught: List[Taught], read: PatternsRead, read_at: float, timeout: float, store: StateStore
    ) -> Steps:
        if not self.doubts.ids_agree:
            return Steps(released=self.release_doubts(store))
        settled = self.doubts.settle(taught, read, read_at, timeout)
        if settled.landed or settled.released:
            self.doubts.save(store)
        return Steps(landed=settled.landed, released=settled.released, wait=settled.wait)

    def _teach_one(self, api: LearnAPI, history: HistoryStore, store: StateStore, privacy: Privacy) -> Steps:
        key = self.plan.keys.popleft()
        sent = history.sent_session(key)
        if sent is None:
            return Steps()  # pruned since the plan was made: the next reconcile counts it
        if privacy.active and privacy.excludes_id(sent.session_id):
            return Steps()  # excluded since it was learned: never sent again
        body = sent.body if sent.body is not None else rebuilt_body(sent, self._event_types)
        try:
            body = api.session_ids.retold(body, sent.session_id)  # what send_session_id says now
        except SecretError as error:
            log.error("Teaching the procedural API again waits: cannot hash session ids: %s", error)
            self.plan.clear()
            self._retry()
            return Steps(taught=1)
        attempt = api.post(body, key, sent.session_id, sent_names(body))
        if attempt.verdict in (Verdict.LEARNED, Verdict.NOT_LEARNED):
            answered_id = attempt.detail if attempt.verdict == Verdict.LEARNED else None
            history.mark_retaught(key, time.time(), answered_id)
            if answered_id and sent.outcome is not None:
                self.plan.taught[(answered_id, sent.outcome)] += 1
            self.last["taught"] = self.last.get("taught", 0) + 1
        elif attempt.verdict == Verdict.REJECTED:
            log.error("Procedural API rejected session %s taught again: %s", sent.session_id, attempt.detail)
            self.last["refused"] = self.last.get("refused", 0) + 1
        else:
            log.warning("Teaching the procedural API again stopped: %s; reconciling again later", attempt.detail)
            self.plan.clear()
            self.why = Reasons.BACK
            self._retry()
            return Steps(taught=1)
        if not self.plan:
            log.info(
                "The procedural API has been taught again %d of the %d sessions it had forgotten%s",
                self.last.get("taught", 0),
                self.last.get("sessions_lost", 0),
                f" ({self.last['refused']} refused)" if self.last.get("refused") else "",
            )
            self.last["repaired_at"] = time.time()
        self._record(store, self.last)
        return Steps(taught=1)

    # -- what status shows --------------------------------------------------------------

    def teaching(self) -> Optional[Dict[str, int]]:
        """While a plan is being taught: {"taught", "lost"} (STATUS= says it); else None."""
        if not self.plan:
            return None
        return {"taught": int(self.last.get("taught", 0)), "lost": int(self.last.get("sessions_lost", 0))}

    def _note(self, store: StateStore, found: Reconciliation, patterns: int) -> Dict[str, Any]:
        """A new reconcile's note; the one before it."""
        before = self.last
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
        return before

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


def survey(
    api: LearnAPI,
    history: HistoryStore,
    store: StateStore,
    timeout: float,
    history_days: float,
    unlisted: AbstractSet[str] = frozenset(),
    privacy: Privacy = NO_RULES,
) -> Survey:
    """What the API holds against what the history says it was taught (within history_days); writes nothing.

    `unlisted`: patterns whose listing cannot be believed (Plan.unlisted), left alone like unreadable ones.
    """
    return compared(api.patterns(patterns_timeout(timeout)), history, store, history_days, unlisted, privacy)


def compared(
    read: PatternsRead,
    history: HistoryStore,
    store: StateStore,
    history_days: float,
    unlisted: AbstractSet[str],
    privacy: Privacy = NO_RULES,
) -> Survey:
    """One answer of GET /patterns against the history; sessions the rules exclude now count as never taught."""
    if read.counts is None:
        return Survey(read, [], None)
    taught = history.taught(time.time() - history_days * 86400.0)
    if privacy.active:
        hidden = history.keys_of_ids(privacy.excludes_id)
        taught = [session for session in taught if session[3] not in hidden]
    learned_ever = store.counters().get("patterns_learned")
    unknown = read.counts.unknown | unlisted
    return Survey(read, taught, reconcile(taught, read.counts.counts, unknown, learned_ever))


class Steps:
    """What a step leaves the delivery thread to do with outbox sessions."""

    __slots__ = ("landed", "released", "taught", "wait")

    def __init__(
        self,
        landed: Optional[List[Tuple[PendingSession, str, Attempt]]] = None,
        released: Optional[List[int]] = None,
        taught: int = 0,
        wait: Optional[float] = None,
    ):
        self.landed = landed or []  # unanswered POSTs the API counted: (session, its pattern id, the attempt)
        self.released = released or []  # outbox ids of unanswered POSTs to send again
        self.taught = taught
        self.wait = wait  # seconds until held doubts can be decided


def _reverse(event_map: Mapping[str, str]) -> Dict[str, str]:
    """Command name -> the first event type that maps to it (to rebuild an old body's contexts)."""
    names: Dict[str, str] = {}
    for event_type, name in event_map.items():
        names.setdefault(name, event_type)
    return names
