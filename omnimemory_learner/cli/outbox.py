"""`outbox`: list, retry or drop the sessions the API has not taken."""

from __future__ import annotations

import sys
import time
from typing import List

from ..config import Config
from ..storage.state import StateError, StateStore
from .exits import EX_FAILURE, EX_NO_STATE, EX_OK, EX_USAGE
from .output import echo, error, print_json

# Wide enough for a parked session's count of failures and a redirect's target.
ERROR_WIDTH = 160


def _printable(text: str) -> str:
    """The API's text on one line: control characters shown escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _next_try(entry: dict) -> str:
    """When a pending session is tried again: "now", or the time it backs off until."""
    if entry["status"] != "pending":
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
            entries = store.outbox()
            if ids:
                entries = [entry for entry in entries if entry["id"] in ids]
            if as_json:
                print_json(entries)
            elif not entries:
                echo("The outbox is empty: every closed session was delivered.")
            else:
                echo(f"{'ID':>8}  {'STATUS':8}  {'SESSION':24}  {'CMDS':>5}  {'OUTCOME':8}  {'TRIES':>5}  "
                     f"{'NEXT TRY':8}  LAST ERROR")
                for entry in entries:
                    echo(f"{entry['id']:>8}  {entry['status']:8}  {_printable(entry['session_id'])[:24]:24}  "
                          f"{entry['commands']:>5}  {entry['outcome'] or '':8}  {entry['attempts']:>5}  "
                          f"{_next_try(entry):8}  {_printable(entry['last_error'] or '')[:ERROR_WIDTH]}")
            return EX_OK
        if action == "retry":
            moved = store.retry_rejected(ids or None)
            echo(f"{moved} rejected session(s) moved back to pending; the running service sends them "
                  "within a minute.")
            return EX_OK
        # drop
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
        if store.drop(ids[0]):
            echo(f"Session {ids[0]} dropped.")
            return EX_OK
        error(f"no pending or rejected session with id {ids[0]}")
        return EX_FAILURE
    finally:
        store.close()
