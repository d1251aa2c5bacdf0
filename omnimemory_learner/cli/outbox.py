"""`outbox`: list, retry or drop the sessions the API has not taken.

Exit statuses (the man page's EXIT STATUS): 0 when the action did something
or the list shows what was asked for; 1 when it was refused or found nothing
(`list ID` with no such session, `retry` with nothing rejected, `drop` of an
unknown id); 2 for a wrong command line; 4 when there is no state store.
"""

from __future__ import annotations

import sys
import time
from typing import List

from ..config import Config
from ..core.evidence import OutcomeRule
from ..core.fates import Fate
from ..core.privacy import NO_RULES, Privacy
from ..delivery.settle import Settler
from ..storage.state import StateError, StateStore
from .exits import EX_FAILURE, EX_NO_STATE, EX_OK, EX_USAGE
from .output import echo, error, print_json, shown

SESSION_CHARACTERS = 40
# Wide enough for a parked session's count of failures and a redirect's target.
ERROR_WIDTH = 160


def _next_try(entry: dict) -> str:
    """When a pending session is tried again: "now", or the time it backs off until."""
    if entry["status"] != Fate.PENDING:
        return "-"
    due = entry.get("next_attempt_at")
    if due is None or due <= time.time():
        return "now"
    return time.strftime("%H:%M:%S", time.localtime(due))


def outbox(config: Config, action: str, ids: List[int], yes: bool, as_json: bool) -> int:
    try:
        store = StateStore(config.state_dir, create=False)
    except StateError as problem:
        error(str(problem))
        return EX_NO_STATE
    try:
        if action == "list":
            return _list(store, ids, as_json, config.outcome, config.privacy)
        if action == "retry":
            return _retry(store, ids)
        return _drop(config, store, ids, yes)
    finally:
        store.close()


def _list(
    store: StateStore, ids: List[int], as_json: bool, outcome_rule: OutcomeRule, privacy: Privacy = NO_RULES
) -> int:
    entries = store.outbox.entries(outcome_rule=outcome_rule)
    if privacy.active:  # committed before a rule excluded them: the delivery thread removes them unsent
        entries = [entry for entry in entries if not privacy.excludes_id(entry["session_id"])]
    if ids:
        entries = [entry for entry in entries if entry["id"] in ids]
    if as_json:
        print_json(entries)
    elif not entries and ids:
        counts = store.status_counts()
        error(
            f"no session with id {', '.join(map(str, ids))} in the outbox "
            f"({counts.get(Fate.PENDING, 0)} pending, {counts.get(Fate.REJECTED, 0)} rejected)"
        )
    elif not entries:
        echo("The outbox is empty: every closed session was delivered.")
    else:
        # Session ids are shown escaped, cut with a mark past 40 characters; the column fits them.
        sessions = [shown(entry["session_id"], SESSION_CHARACTERS) for entry in entries]
        width = max(len("SESSION"), *(len(session) for session in sessions))
        echo(
            f"{'ID':>8}  {'STATUS':8}  {'SESSION':{width}}  {'CMDS':>5}  {'OUTCOME':8}  {'TRIES':>5}  "
            f"{'NEXT TRY':8}  LAST ERROR"
        )
        for entry, session in zip(entries, sessions):
            echo(
                f"{entry['id']:>8}  {entry['status']:8}  {session:{width}}  "
                f"{entry['commands']:>5}  {shown(entry['outcome'] or ''):8}  {entry['attempts']:>5}  "
                f"{_next_try(entry):8}  {shown(entry['last_error'] or '', ERROR_WIDTH)}"
            )
    return EX_FAILURE if ids and not entries else EX_OK


def _retry(store: StateStore, ids: List[int]) -> int:
    moved = store.outbox.retry_rejected(ids or None)
    if not moved:
        error(
            "no rejected session"
            + (f" with id {', '.join(map(str, ids))}" if ids else "")
            + " to retry; see 'omnimemory-learner outbox'"
        )
        return EX_FAILURE
    echo(f"{moved} rejected session(s) moved back to pending; the running service sends them within a minute.")
    return EX_OK


def _drop(config: Config, store: StateStore, ids: List[int], yes: bool) -> int:
    if len(ids) != 1:
        error("outbox drop takes exactly one ID")
        return EX_USAGE
    if not yes:
        if not sys.stdin.isatty():
            error("refusing to drop without confirmation; add --yes")
            return EX_FAILURE
        answer = input(f"Drop session {ids[0]} for good? It will never be learned. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            echo("Not dropped.")
            return EX_FAILURE
    settler = Settler(config.state_dir)
    settler.outcome_rule = config.outcome
    try:
        dropped = settler.dropped(store, ids[0])
    finally:
        settler.close()
    if dropped:
        echo(f"Session {ids[0]} dropped.")
        return EX_OK
    error(f"no pending or rejected session with id {ids[0]}")
    return EX_FAILURE
