"""POSTs sent and never answered (a slow API): held until GET /patterns says whether they landed.

The guarantees:

* a doubt is never sent again on a GET /patterns that may not show it yet:
  "not landed" is believed only of a POST sent at least SETTLE_AFTER seconds
  (or three request timeouts) before the GET began (a busy server may
  learn it later than it answers a GET); "landed" is believed at once;
* doubts outlive the process: state.db keeps their outbox ids (meta
  UNANSWERED_META), so a stop while one is held does not send it again at
  the next start before a GET /patterns has been asked;
* a doubt is not held for ever: an API without a usable GET /patterns (none,
  pattern ids that are not ours to work out, or UNREADABLE_LIMIT unreadable
  answers in a row) has its doubts sent again once it answers, said at
  WARNING (it may count them twice).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..core.evidence import OutcomeRule
from ..core.fates import Verdict
from ..core.reconcile import Doubt, Taught, expected_pattern_id, landed
from ..storage.outbox import PendingSession
from ..storage.secret import SecretError
from ..storage.state import StateStore
from .learn_api import OMITTED_IDS, PLAIN_IDS, Attempt, PatternsRead, SessionIds, encoded_learn_body

log = logging.getLogger(__name__)

UNANSWERED_META = "unanswered"
SETTLE_AFTER_SECONDS = 30.0
UNREADABLE_LIMIT = 3


class Held(NamedTuple):
    session: PendingSession
    doubt: Doubt
    attempt: Attempt
    sent_at: float  # wall-clock time of the POST


class Settled(NamedTuple):
    landed: List[Tuple[PendingSession, str, Attempt]]  # (session, its pattern id, the attempt)
    released: List[int]  # outbox ids to send again
    wait: Optional[float]  # seconds until the youngest undecided doubt can be decided; None: none left


class Doubts:
    """The unanswered POSTs, by outbox id."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self.held: Dict[int, Held] = {}
        # An API whose pattern ids are not ours to work out: GET /patterns cannot tell.
        self.ids_agree = True
        self.unreadable = 0  # GET /patterns answers in a row that could not be read

    def __contains__(self, outbox_id: int) -> bool:
        return outbox_id in self.held

    def __len__(self) -> int:
        return len(self.held)

    def __iter__(self) -> Iterator[int]:
        return iter(self.held)

    def add(self, session: PendingSession, attempt: Attempt, store: StateStore) -> None:
        doubt = Doubt(session.content_key, expected_pattern_id(attempt.names), session.told)
        self.held[session.id] = Held(session, doubt, attempt, self._clock())
        self.save(store)

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

    def release(self, store: Optional[StateStore] = None, why: str = "") -> List[int]:
        """Send them all again (an API that cannot say whether they landed answered something)."""
        ids = list(self.held)
        if ids and why:
            log.warning(
                "Sending again %d sessions the procedural API left unanswered: %s (it may count them twice)",
                len(ids),
                why,
            )
        self.held.clear()
        if store is not None:
            self.save(store)
        return ids

    def unreadable_answer(self, store: StateStore) -> List[int]:
        """GET /patterns answered, unreadably: after UNREADABLE_LIMIT in a row, the doubts go again."""
        self.unreadable += 1
        if self.unreadable < UNREADABLE_LIMIT or not self.held:
            return []
        return self.release(store, f"GET /patterns answered {self.unreadable} times in a row unreadably")

    def settle(self, taught: List[Taught], read: PatternsRead, read_at: float, timeout: float) -> Settled:
        """What one readable GET /patterns (begun at `read_at`, wall clock) says of the doubts."""
        assert read.counts is not None
        self.unreadable = 0
        settle_after = max(SETTLE_AFTER_SECONDS, 3 * timeout)
        order = list(self.held.items())
        by_key: Dict[str, List[int]] = {}
        for outbox_id, held in order:
            by_key.setdefault(held.doubt.key, []).append(outbox_id)  # one session's copies share a key
        yes, no, _ = landed([held.doubt for _, held in order], taught, read.counts.counts, read.counts.unknown)
        settled = Settled([], [], None)
        for key in yes:
            held = self.held.pop(by_key[key].pop(0))
            settled.landed.append((held.session, held.doubt.pattern_id, held.attempt))
        for key in no:
            outbox_id = by_key[key].pop(0)
            if self.held[outbox_id].sent_at + settle_after <= read_at:
                del self.held[outbox_id]
                settled.released.append(outbox_id)
        left = [held.sent_at + settle_after - read_at for held in self.held.values()]
        return settled._replace(wait=max(min(left), 0.0) if left else None)

    # -- kept in state.db --------------------------------------------------------------

    def save(self, store: StateStore) -> None:
        kept = {str(outbox_id): held.sent_at for outbox_id, held in self.held.items()}
        try:
            store.note(UNANSWERED_META, json.dumps(kept, separators=(",", ":")))
        except Exception:  # kept in memory all the same; a stop then sends them again
            log.warning("Could not keep the unanswered POSTs in the state store", exc_info=True)

    def load(
        self, store: StateStore, fold_repeats: bool, outcome_rule: OutcomeRule, session_ids: SessionIds = PLAIN_IDS
    ) -> int:
        """The doubts a previous run left (their sessions still pending); how many.

        Their bodies made again as deliver_one made them: judged by `outcome_rule`, folded or not.
        """
        try:
            kept = json.loads(store.meta_value(UNANSWERED_META) or "{}")
        except ValueError:
            kept = {}
        if not isinstance(kept, dict):
            kept = {}
        for text, sent_at in kept.items():
            try:
                outbox_id, sent_at = int(text), float(sent_at)
            except (TypeError, ValueError):
                continue
            session = store.outbox.undelivered(outbox_id)
            if session is None or outbox_id in self.held:
                continue
            session = session.judged(outcome_rule)
            try:
                body, names = encoded_learn_body(session, fold_repeats, session_ids)
            except SecretError:  # its names are what decides; the body is told again when taught again
                body, names = encoded_learn_body(session, fold_repeats, OMITTED_IDS)
            attempt = Attempt(Verdict.RETRY, None, commands=len(names), body=body, unanswered=True, names=names)
            doubt = Doubt(session.content_key, expected_pattern_id(names), session.told)
            self.held[outbox_id] = Held(session, doubt, attempt, sent_at)
        return len(self.held)
