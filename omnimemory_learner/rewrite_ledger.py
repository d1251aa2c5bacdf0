"""A rewritten database's sessions against the ledger: which were delivered before (database_identity.py).

Up to the rewrite head, a session read again may have been sent before: the
history's content keys and the outbox's say which; past the history's horizon
nobody can say, and it is not sent.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .core.sessions import ClosedSession
from .storage.history import HistoryStore
from .storage.state import StateStore

log = logging.getLogger(__name__)


class RewriteLedger:
    """The ledger asked at each commit while a rewritten database is read again."""

    def __init__(self, state_dir: Path, state: StateStore):
        self._history = HistoryStore(state_dir)
        self._state = state
        self._said: set = set()  # what was said once this run

    def against(
        self, closed: List[ClosedSession], counters: Dict[str, int], history_days: float, rewrite_head: Optional[int]
    ) -> Tuple[List[ClosedSession], List[ClosedSession]]:
        """(fresh, known): after a rewrite, leave out what was sent before; counted in `counters`.

        A session read again from a rewritten database (a restored backup, a
        history edited) whose content key the ledger (the history) or the
        outbox has is not committed again; nor one whose last event is older
        than the history's horizon (history_days), or no newer than the
        newest session the ledger ever pruned (by count too, and before
        history_days was raised): the ledger cannot say whether it was sent,
        and re-sending it could teach it twice.  Both are counted and said
        once a run.
        """
        if rewrite_head is None:
            return closed, []
        candidates = [session for session in closed if session.first_rowid <= rewrite_head]
        if not candidates:
            return closed, []
        keys = {id(session): session.key for session in candidates}
        seen = self._history.delivered(list(keys.values())) | self._state.outbox_keys()
        horizon = time.time() - history_days * 86400.0
        pruned = self._history.ledger_horizon()
        if pruned is not None:
            horizon = max(horizon, math.nextafter(pruned, math.inf))  # the newest pruned is past it too
        fresh: List[ClosedSession] = []
        known: List[ClosedSession] = []
        already = past = 0
        for session in closed:
            key = keys.get(id(session))
            if key is None:
                fresh.append(session)
            elif key in seen:
                known.append(session)
                already += 1
            elif len(session.times) and max(session.times) < horizon:
                known.append(session)  # kept as a replay marker like the others
                past += 1
            else:
                fresh.append(session)
        if already:
            counters["sessions_already_delivered"] = counters.get("sessions_already_delivered", 0) + already
            self._say_once(
                "already",
                "%d session(s) read again from the rewritten database were delivered before (the "
                "history has their content keys): not sent again; counted as sessions_already_delivered",
                already,
            )
        if past:
            counters["sessions_past_horizon"] = counters.get("sessions_past_horizon", 0) + past
            self._say_once(
                "past",
                "%d session(s) read again from the rewritten database end before the history's horizon "
                "(history_days = %g), past which delivered sessions are forgotten: not sent, to be sure "
                "none goes twice; counted as sessions_past_horizon",
                past,
                history_days,
            )
        return fresh, known

    def close(self) -> None:
        self._history.close()

    def _say_once(self, what: str, message: str, *args: object) -> None:
        if what not in self._said:
            self._said.add(what)
            log.info(message, *args)
