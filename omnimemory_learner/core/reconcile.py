"""What the procedural API has lost of what it learned from us, and which sessions teach it again.

The job: compare, per pattern id and outcome, the sessions the history says the
API took with the counts GET /patterns answers, and name the deficit. The
guarantee: the deficit is never more than the API lost of ours, so teaching it
adds nothing twice; and it is computed afresh from the API's own counts each
time, so a repair stopped half way is finished by the next reconcile and not
repeated. Pure: no I/O, no threads, no clock; imports nothing of the package.

The rule, per (pattern_id, outcome)::

    taught   sessions of ours the history holds as learned with that pattern id and outcome
    held     the API's success_count (outcome "success") or failure_count ("failure"); 0 if absent
    deficit  max(0, taught - held)
    teach    the `deficit` most recent of those sessions (last event time, then key)

Other clients only ever add to counts and no endpoint lowers one, so held < taught
proves the API lost at least the difference; held >= taught proves nothing and
asks for nothing (a loss hidden by other clients' additions stays hidden: the
deficit is a lower bound of the loss, never above it). Within one
(pattern_id, outcome) the sessions are interchangeable for the API (one pattern
id is one normalised sequence, counted the same way), so which of them is taught
does not change what it learns; the most recent are taken so that a second
reconcile after a partial repair names a subset of the first one's sessions.
They are often the very sessions a restart spared (delivered last), which is
why a re-teach must not be recorded as "this session was lost".

`teach` is ordered most recent first over all patterns (ties by key, as
`history` lists them): a repair cut short has restored the recent work.

Forgotten by the API, not in the history (`forgotten_not_in_history`): the
sessions the ledger counts as learned (`learned_ever`: sessions the API answered
with a pattern id, each counted once at its first delivery) beyond those the
history still holds (the sessions given here), that is
max(0, learned_ever - history sessions), counted only when a loss shows:

* some (pattern_id, outcome) has a deficit, or
* every pattern's counts were readable and all of them together (ours and other
  clients') are fewer than `learned_ever`: nothing lowers a count, so the API
  lost some of ours even if the history names none of them (history.db lost).

It is 0 when no loss shows or `learned_ever` is unknown (None). It rests on the
API's one way of losing, a restart that forgets everything held then: the
sessions beyond the history are the oldest the learner taught (retention prunes
the oldest first; a history.db started again holds only what came after), so a
loss that reached any session of the history reached them too. A session first
taught after such a restart and pruned since would be counted though the API
holds it; no count here can tell.

Never counted: sessions whose POST /learn answered no pattern id (pattern_id
None), sessions with an outcome the learner does not send, a second entry of
the same key, and entries of GET /patterns with no usable pattern id. A pattern
whose entry is unreadable (counts not non-negative integers, or listed twice) is
`unknown`: nothing is taught for it, as its deficit cannot be known.
"""

from __future__ import annotations

import hashlib
import re
from operator import itemgetter
from typing import (
    AbstractSet,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

SUCCESS = "success"
FAILURE = "failure"
_COLUMN = {SUCCESS: 0, FAILURE: 1}  # the index into (success_count, failure_count)


class Taught(NamedTuple):
    """One session the history holds as learned by the API (a plain tuple in this order will do)."""

    pattern_id: Optional[str]
    outcome: str
    last_time: float
    key: str


class Deficit(NamedTuple):
    pattern_id: str
    outcome: str
    taught: int
    held: int
    forgotten: int


class PatternCounts(NamedTuple):
    """GET /patterns read at the boundary.

    usable False: the answer as a whole cannot be trusted (not the shape, or a
    partial list); reconcile must not run on it, since every pattern missing
    from it would look lost.
    """

    counts: Dict[str, Tuple[int, int]]
    unknown: FrozenSet[str]
    problems: Tuple[str, ...]
    usable: bool


class Reconciliation(NamedTuple):
    deficits: Tuple[Deficit, ...]  # only forgotten > 0, by pattern id then outcome
    teach: Tuple[Taught, ...]  # most recent first; len(teach) == sessions_lost
    sessions_lost: int
    patterns_lost: int
    forgotten_not_in_history: int
    loss_seen: bool
    ignored: int  # history entries not counted (no pattern id, other outcome, repeated key)
    unknown_patterns: int  # patterns of ours left alone: their counts could not be read

    def forgotten(self, pattern_id: str, outcome: str) -> int:
        for deficit in self.deficits:
            if deficit.pattern_id == pattern_id and deficit.outcome == outcome:
                return deficit.forgotten
        return 0


def _count(value: Any) -> Optional[int]:
    # bool is an int in Python, and 3.0 is not what the API writes: neither is a count.
    if type(value) is int and value >= 0:
        return value
    return None


def parse_patterns(answer: Any) -> PatternCounts:
    """The decoded JSON of GET /patterns -> pattern_id -> (success_count, failure_count).

    Usable only when it is whole: a `total` equal to the patterns listed (a
    first page without one, or with the page's size, would make every pattern
    of ours beyond it look lost), and every entry with a pattern id (an entry
    of another shape may be one of ours). Counts that are not counts leave
    that pattern alone; so does a pattern listed twice.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("patterns"), list):
        return _unusable("not a patterns answer")
    entries = answer["patterns"]
    total = answer.get("total")
    if type(total) is not int:
        return _unusable("no total: the answer cannot be told whole")
    if total != len(entries):
        return _unusable(f"partial answer: {len(entries)} patterns listed, total {total}")
    problems: List[str] = []
    counts: Dict[str, Tuple[int, int]] = {}
    unknown: Set[str] = set()
    for entry in entries:
        pattern_id = entry.get("pattern_id") if isinstance(entry, dict) else None
        if not isinstance(pattern_id, str) or not pattern_id:
            return _unusable("an entry without a pattern id (it may be one of ours)")
        success, failure = _count(entry.get("success_count")), _count(entry.get("failure_count"))
        if success is None or failure is None:
            problems.append(f"{pattern_id}: counts not non-negative integers, left alone")
            unknown.add(pattern_id)
        elif pattern_id in counts or pattern_id in unknown:
            problems.append(f"{pattern_id}: listed twice, left alone")
            unknown.add(pattern_id)
        else:
            counts[pattern_id] = (success, failure)
    for pattern_id in unknown:
        counts.pop(pattern_id, None)
    return PatternCounts(counts, frozenset(unknown), tuple(problems), True)


def _unusable(problem: str) -> PatternCounts:
    return PatternCounts({}, frozenset(), (problem,), False)


_BY_KEY = itemgetter(3)
_BY_TIME = itemgetter(2)


def _most_recent_first(sessions: List[Taught]) -> None:
    # Two stable sorts on C-level keys: key ascending, then time descending (reverse keeps ties stable).
    sessions.sort(key=_BY_KEY)
    sessions.sort(key=_BY_TIME, reverse=True)


def reconcile(
    taught: Iterable[Taught],
    held: Mapping[str, Tuple[int, int]],
    unknown: AbstractSet[str] = frozenset(),
    learned_ever: Optional[int] = None,
) -> Reconciliation:
    """The deficit of `held` (GET /patterns, as parse_patterns reads it) against the history's `taught`."""
    groups: Dict[Tuple[str, str], List[Taught]] = {}
    seen: Set[str] = set()
    ignored = 0
    for session in taught:
        pattern_id, outcome, _, key = session
        if not pattern_id or outcome not in _COLUMN or key in seen:
            ignored += 1
            continue
        seen.add(key)
        group = groups.get((pattern_id, outcome))
        if group is None:
            groups[(pattern_id, outcome)] = [session]
        else:
            group.append(session)

    deficits: List[Deficit] = []
    chosen: List[Taught] = []
    skipped: Set[str] = set()
    for (pattern_id, outcome), sessions in groups.items():
        if pattern_id in unknown:
            skipped.add(pattern_id)
            continue
        counts = held.get(pattern_id)
        have = counts[_COLUMN[outcome]] if counts is not None else 0
        missing = len(sessions) - have
        if missing <= 0:
            continue
        deficits.append(Deficit(pattern_id, outcome, len(sessions), have, missing))
        if missing < len(sessions):
            _most_recent_first(sessions)
            chosen.extend(sessions[:missing])
        else:
            chosen.extend(sessions)
    _most_recent_first(chosen)
    deficits.sort()

    in_history = len(seen)
    loss_seen = bool(deficits)
    if not loss_seen and learned_ever is not None and not unknown:
        loss_seen = sum(s + f for s, f in held.values()) < learned_ever
    forgotten = max(0, learned_ever - in_history) if loss_seen and learned_ever is not None else 0
    return Reconciliation(
        deficits=tuple(deficits),
        teach=tuple(chosen),
        sessions_lost=len(chosen),
        patterns_lost=len({deficit.pattern_id for deficit in deficits}),
        forgotten_not_in_history=forgotten,
        loss_seen=loss_seen,
        ignored=ignored,
        unknown_patterns=len(skipped),
    )


# -- the API's pattern id, as INTERFACES.md gives it ---------------------------------

# The server's normalisation, in its order: a URL would otherwise be taken for a file name.
_URL = re.compile(r"https?://[^\s]+")
_FILE = re.compile(r"[/\w]+\.\w+")
_NUMBER = re.compile(r"\b\d+\b")


def expected_pattern_id(names: Sequence[str]) -> str:
    """The pattern id the procedural API gives these command names (after any folding of ours).

    The first 16 hex digits of the MD5 of the normalised names joined with
    " -> ". Used to ask GET /patterns whether a POST whose answer was lost
    landed, and checked against every answered pattern id first (an API
    that counts otherwise is never asked this way).
    """
    normalised = (_NUMBER.sub("<NUM>", _FILE.sub("<FILE>", _URL.sub("<URL>", name))).strip() for name in names)
    return hashlib.md5(" -> ".join(normalised).encode()).hexdigest()[:16]


class Doubt(NamedTuple):
    """A session whose POST /learn was sent and never answered: the API may have learned it."""

    key: str
    pattern_id: str  # expected_pattern_id of what was sent
    outcome: str


def landed(
    doubts: Sequence[Doubt], taught: Iterable[Taught], held: Mapping[str, Tuple[int, int]], unknown: AbstractSet[str]
) -> Tuple[List[str], List[str], List[str]]:
    """Which unanswered POSTs the API counted: (landed keys, not landed keys, undecided keys).

    Per (pattern_id, outcome): the API holds `held`; the history says it took
    `taught` of ours; what it holds beyond those is at most what the doubtful
    POSTs added (or other clients: then a POST is taken for landed that was
    not, and the API holds one fewer of ours than we think, never one more).
    The first `held - taught` doubts of the group (oldest first, the order
    given) landed; the rest did not and are sent again. A pattern whose
    counts could not be read is undecided.
    """
    ours: Dict[Tuple[str, str], int] = {}
    seen: Set[str] = set()
    for pattern_id, outcome, _, key in taught:
        if pattern_id and outcome in _COLUMN and key not in seen:
            seen.add(key)
            ours[(pattern_id, outcome)] = ours.get((pattern_id, outcome), 0) + 1
    spare: Dict[Tuple[str, str], int] = {}
    yes: List[str] = []
    no: List[str] = []
    undecided: List[str] = []
    for doubt in doubts:
        group = (doubt.pattern_id, doubt.outcome)
        if doubt.pattern_id in unknown or doubt.outcome not in _COLUMN:
            undecided.append(doubt.key)
            continue
        if group not in spare:
            counts = held.get(doubt.pattern_id)
            have = counts[_COLUMN[doubt.outcome]] if counts is not None else 0
            spare[group] = have - ours.get(group, 0)
        if spare[group] > 0:
            spare[group] -= 1
            yes.append(doubt.key)
        else:
            no.append(doubt.key)
    return yes, no, undecided
