"""`history`: the sessions the learner settled, newest first, read and shown one at a time."""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import re
import sys
import time
from typing import Any, Iterable, Iterator, List, Optional, Sequence

from ..config import Config
from ..storage.files import HISTORY_FILE
from ..storage.history import Entry, HistoryStore
from .exits import EX_NO_STATE, EX_OK, EX_USAGE
from .output import echo, error, print_json, shown

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class BadTime(ValueError):
    """A --since/--until value that is neither relative nor an ISO date."""


def parse_when(text: str, now: Optional[float] = None) -> float:
    """Unix seconds from '2h', '7d', '30m', '1w' (that long ago) or an ISO date or date-time (local)."""
    now = time.time() if now is None else now
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadTime(
            f"cannot read {text!r} as a time: give an ISO date (2026-11-20, 2026-11-20T09:30) "
            "or a time ago (30m, 2h, 7d, 1w)"
        ) from None
    return moment.timestamp()


def local_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def sequence_text(names: Sequence[str], limit: int = 8) -> str:
    """open_file > edit_code x37 > save_file, cut after `limit` steps."""
    runs: List[List] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    parts = [f"{name} x{count}" if count > 1 else name for name, count in runs]
    if len(parts) > limit:
        parts = [*parts[:limit], f"... {len(parts) - limit} more"]
    return " > ".join(parts)


HEADER = (
    f"{'LAST EVENT':<19}  {'SETTLED':<11}  {'OUTCOME':<7}  {'BY RULE':<13}  {'REWORK':>6}  {'QUALITY':<6}  "
    f"{'':>9}  {'SESSION':<40}  COMMANDS"
)


def entry_line(entry: Entry) -> str:
    quality = f"q={entry.quality:.2f}" if entry.quality is not None else "q=-"
    flag = "  UNUSUAL" if entry.unusual else ""
    rework = "-" if entry.rework is None else str(entry.rework)
    return (
        f"{local_time(entry.last_time)}  {entry.settled:<11}  {entry.outcome or '-':<7}  "
        f"{shown(entry.rule or '-'):<13}  {rework:>6}  {quality}  "
        f"{len(entry.commands):>4} cmds  {shown(entry.session_id, 40)}  {shown(sequence_text(entry.commands))}"
        f"{flag}"
    )


def open_history(config: Config) -> Optional[HistoryStore]:
    if not (config.state_dir / HISTORY_FILE).exists():
        return None
    store = HistoryStore(config.state_dir, create=False)
    if store.problem is not None:
        return None  # the store has said why (a newer version's history, a corrupt file)
    return store


def history(
    config: Config,
    since: Optional[str],
    until: Optional[str],
    session: Optional[str],
    limit: Optional[int],
    as_json: bool,
) -> int:
    try:
        start = parse_when(since) if since else None
        end = parse_when(until) if until else None
    except BadTime as problem:
        error(str(problem))
        return EX_USAGE
    if limit is not None and limit < 1:
        error("--limit takes a positive number")
        return EX_USAGE
    store = open_history(config)
    if store is None:
        if as_json:
            print_json([])
        else:
            echo(
                f"No history yet in {shown(str(config.state_dir))}: the learner keeps one once it has "
                "settled a session."
            )
        return EX_NO_STATE
    try:
        if as_json:
            _print_json_list(entry.as_json() for entry in _allowed(config, store, start, end, session, limit))
            return EX_OK
        shown_any = False
        for entry in _allowed(config, store, start, end, session, limit):
            if not shown_any:
                echo(HEADER)
                shown_any = True
            echo(entry_line(entry))
        if not shown_any:
            echo("No session matches.")
        return EX_OK
    finally:
        store.close()


def _allowed(
    config: Config,
    store: HistoryStore,
    start: Optional[float],
    end: Optional[float],
    session: Optional[str],
    limit: Optional[int],
) -> Iterator[Entry]:
    """The entries the exclusion rules let be shown (a session recorded before a rule excluded it is not)."""
    privacy = config.privacy
    if not privacy.active:
        return store.entries(start, end, session, limit)
    allowed = (entry for entry in store.entries(start, end, session) if not privacy.excludes_id(entry.session_id))
    return itertools.islice(allowed, limit)


def _print_json_list(items: Iterable[Any]) -> None:
    """print_json(list(items)), byte for byte, one item at a time: the history is never held whole."""
    first = True
    for item in items:
        text = json.dumps(item, indent=2, sort_keys=False, default=str)
        sys.stdout.write(("[\n  " if first else ",\n  ") + text.replace("\n", "\n  "))
        first = False
    sys.stdout.write("[]\n" if first else "\n]\n")
