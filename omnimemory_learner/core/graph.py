"""What a history of sessions says about the user's workflows (pure).

* the most frequent workflows: command sequences with repeats folded, with
  their counts and success rates;
* the directly-follows summary: how often command b comes right after a, and
  the share of those transitions that were in successful sessions (repeats
  folded, so `edit_code -> edit_code` does not drown everything else);
* recurrence: how many sessions repeat a sequence an earlier session had,
  with and without folding (what the procedural API, which keys patterns by
  their exact sequence, gets to count more than once);
* the graph of those transitions as Graphviz DOT.

WorkflowCounter gives the first three over a history read one row at a time
(the report's 10^5 sessions), with the functions' results.
"""

from __future__ import annotations

import heapq
import json
import sys
from array import array
from collections import Counter
from hashlib import blake2b
from itertools import compress, groupby
from operator import ne
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from .folding import folded_length

SUCCESS = "success"


class SessionSummary(NamedTuple):
    """What the report needs of one settled session (make it with summarize())."""

    names: Tuple[str, ...]  # command names before folding
    outcome: str  # success / failure
    folded: Tuple[str, ...]  # the names with repeats folded, computed once


def summarize(names: Sequence[str], outcome: str) -> SessionSummary:
    return SessionSummary(tuple(names), outcome, fold_names(names))


class Tally(NamedTuple):
    occurrences: int
    successes: int
    rework: int = 0  # verifications or builds made again after edits, over the sessions counted

    @property
    def rework_per_session(self) -> float:
        return self.rework / self.occurrences if self.occurrences else 0.0

    @property
    def success_share(self) -> float:
        return self.successes / self.occurrences if self.occurrences else 0.0


def fold_names(names: Sequence[str]) -> Tuple[str, ...]:
    return tuple(name for name, _ in groupby(names))


def workflows(sessions: Iterable[SessionSummary], top: Optional[int] = None) -> List[Tuple[Tuple[str, ...], Tally]]:
    """Folded sequences, most frequent first (ties: the sequence, for a stable order); the first `top`."""
    counts: Counter = Counter()
    successes: Counter = Counter()
    for session in sessions:
        counts[session.folded] += 1
        if session.outcome == SUCCESS:
            successes[session.folded] += 1
    order = ((-count, sequence) for sequence, count in counts.items())
    ranked = sorted(order) if top is None else heapq.nsmallest(top, order)
    return [(sequence, Tally(-negative, successes[sequence])) for negative, sequence in ranked]


def directly_follows(sessions: Iterable[SessionSummary]) -> Dict[Tuple[str, str], Tally]:
    """(a, b) -> how often b came right after a (repeats folded), and in how many successes."""
    counts: Counter = Counter()
    successes: Counter = Counter()
    for session in sessions:
        folded = session.folded
        pairs = list(zip(folded, folded[1:]))
        counts.update(pairs)
        if session.outcome == SUCCESS:
            successes.update(pairs)
    return {pair: Tally(count, successes[pair]) for pair, count in counts.items()}


def recurrence(sessions: Iterable[SessionSummary]) -> Tuple[int, int]:
    """(exact, folded): sessions, in the order given, whose sequence an earlier one already had."""
    seen_exact: Set[Tuple[str, ...]] = set()
    seen_folded: Set[Tuple[str, ...]] = set()
    exact = folded = 0
    for session in sessions:
        sequence = session.names
        short = session.folded
        exact += sequence in seen_exact
        folded += short in seen_folded
        seen_exact.add(sequence)
        seen_folded.add(short)
    return exact, folded


def _dot_string(text: str) -> str:
    # DOT's quoted strings: a backslash and a quote are escaped; a control
    # character would break the line-oriented file, so it is shown escaped.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(ch if ch.isprintable() else f"\\\\x{ord(ch):02x}" for ch in escaped) + '"'


def share_colour(share: float) -> str:
    """Red (no success) through amber to green (all successful), as #rrggbb."""
    share = min(1.0, max(0.0, share))
    red = round(220 * min(1.0, 2 * (1 - share)))
    green = round(170 * min(1.0, 2 * share))
    return f"#{red:02x}{green:02x}30"


def to_dot(edges: Dict[Tuple[str, str], Tally], title: str = "workflows") -> str:
    """The directly-follows graph: edge label and width = count, colour = success share."""
    heaviest = max((tally.occurrences for tally in edges.values()), default=1)
    nodes = sorted({name for pair in edges for name in pair})
    lines = [
        f"digraph {_dot_string(title)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="sans"];',
        '  edge [fontname="sans"];',
    ]
    lines += [f"  {_dot_string(name)};" for name in nodes]
    for (source, target), tally in sorted(edges.items()):
        width = 1.0 + 4.0 * tally.occurrences / heaviest
        lines.append(
            f"  {_dot_string(source)} -> {_dot_string(target)} "
            f'[label="{tally.occurrences}", weight={tally.occurrences}, '
            f'penwidth={width:.2f}, color="{share_colour(tally.success_share)}", '
            f'tooltip="{tally.successes} of {tally.occurrences} in successful sessions"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def folded_share(sessions: Iterable[SessionSummary]) -> float:
    """Commands left after folding, as a share of all commands (1.0: no repeats)."""
    total = folded = 0
    for session in sessions:
        total += len(session.names)
        folded += folded_length(session.names)
    return folded / total if total else 1.0


# -- the report's counts, one session at a time ----------------------------------------------


def name_tokens(text: bytes) -> Optional[Tuple[bytes, List[bytes]]]:
    """A history row's commands (its JSON text) as (the exact sequence's canonical text, one token per name).

    A token is the name as JSON writes it between its quotes (ASCII, escaped),
    so equal tokens are equal names.  What the store writes (compact, ASCII,
    usually without a backslash) is split as it is; anything else goes through
    json.  None: not a JSON list of strings.
    """
    if text[:2] == b'["' and text[-2:] == b'"]' and text.isascii() and b"\\" not in text:
        tokens = text[2:-2].split(b'","')
        if text.count(b'"') == 2 * len(tokens):
            return text, tokens
    try:
        names = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    tokens = [json.dumps(name)[1:-1].encode("ascii") for name in names]
    return b'["' + b'","'.join(tokens) + b'"]', tokens


def _folded(tokens: List[bytes]) -> List[bytes]:
    folded = list(compress(tokens, map(ne, tokens, tokens[1:])))
    folded.append(tokens[-1])
    return folded


def workflow_key(ids: Sequence[int]) -> bytes:
    """A folded workflow's name ids as one key: a byte a name, or b"\\xff" and 4 bytes a name once an id is past 254."""
    if max(ids, default=0) < 255:
        return bytes(ids)
    return b"\xff" + array("I", ids).tobytes()


def workflow_of(text: bytes, id_of: Callable[[bytes], int]) -> Optional[Tuple[bytes, bytes]]:
    """A history row's commands (JSON) as (its folded workflow's key, a 16-byte digest of its exact sequence).

    What the history keeps beside the commands when it records a session
    (storage/history.py: `id_of` gives a name's token its id there), so
    that the report folds and digests nothing.  None: not a JSON list of
    names, or an empty one.
    """
    parsed = name_tokens(text)
    if parsed is None or not parsed[1]:
        return None
    exact, tokens = parsed
    return workflow_key([id_of(token) for token in _folded(tokens)]), blake2b(exact, digest_size=16).digest()


def _pair_of(window: int) -> Tuple[int, int]:
    """Two one-byte name ids read together as one 16-bit number (the machine's byte order)."""
    first, second = window.to_bytes(2, sys.byteorder)
    return first, second


class WorkflowCounter:
    """workflows(), directly_follows() and recurrence() over sessions given one at a time.

    Memory is per distinct name and per distinct folded sequence (a byte per
    name, or 4 for a user of more than 254 names), plus a 16-byte digest per
    distinct exact sequence: never a session's command list.  Transitions are
    counted once per distinct folded sequence, weighted by its count.
    """

    def __init__(self, ids: Optional[Mapping[bytes, int]] = None) -> None:
        """`ids`: the history's names (token -> id), the ids its workflow keys are made of."""
        self.sessions = 0  # with at least one command
        self._ids: Dict[bytes, int] = dict(ids or {})
        self._next_id = max(self._ids.values(), default=-1) + 1
        self._exact: Set[bytes] = set()
        self._counts: Dict[bytes, int] = {}
        self._successes: Dict[bytes, int] = {}
        self._rework: Dict[bytes, int] = {}

    def add(self, text: bytes, success: bool, rework: int = 0) -> None:
        """A session by its commands (JSON)."""
        parsed = name_tokens(text)
        if parsed is None or not parsed[1]:
            return
        exact, tokens = parsed
        self._count_key(self._key(_folded(tokens)), blake2b(exact, digest_size=16).digest(), success, rework)

    def add_workflow(self, key: Optional[bytes], exact: Optional[bytes], success: bool, rework: int = 0) -> None:
        """A session by what workflow_of made of its commands (the history keeps it): nothing to fold."""
        if not isinstance(key, bytes) or not isinstance(exact, bytes) or not key:
            return  # not as workflow_of makes them: a history edited by hand
        wide = key[:1] == b"\xff"
        if (wide and len(key) % 4 != 1) or max(self._id_list(key)) >= self._next_id:
            return  # an id the names table does not have: the same
        self._count_key(key, exact, success, rework)

    def _count_key(self, key: bytes, exact: bytes, success: bool, rework: int) -> None:
        self.sessions += 1
        self._exact.add(exact)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if success:
            self._successes[key] = self._successes.get(key, 0) + 1
        if rework:
            self._rework[key] = self._rework.get(key, 0) + rework

    def _key(self, folded: List[bytes]) -> bytes:
        """workflow_key() of the tokens' ids, a name not seen before given the next id."""
        ids = self._ids
        try:
            key = bytes(map(ids.__getitem__, folded))
        except (KeyError, ValueError):  # a new name, or an id past 255 (bytes() stops at either)
            for token in folded:
                if token not in ids:
                    ids[token] = self._next_id
                    self._next_id += 1
            return workflow_key([ids[token] for token in folded])
        if b"\xff" in key:  # an id of 255: wide, as workflow_key makes it
            key = workflow_key(list(key))
        return key

    @staticmethod
    def _id_list(key: bytes) -> Sequence[int]:
        return array("I", key[1:]) if key[:1] == b"\xff" else key

    def _names(self) -> List[str]:
        names = [""] * self._next_id
        for token, number in self._ids.items():
            names[number] = json.loads(b'"' + token + b'"', strict=False)
        return names

    def workflows(self, top: int) -> List[Tuple[Tuple[str, ...], Tally]]:
        """As workflows(sessions, top): the `top` most frequent folded sequences, ties by the sequence."""
        if top <= 0 or not self._counts:
            return []
        names = self._names()
        floor = heapq.nlargest(top, self._counts.values())[-1]
        candidates = [
            (-count, tuple(names[number] for number in self._id_list(key)), key)
            for key, count in self._counts.items()
            if count >= floor
        ]
        ranked = heapq.nsmallest(top, candidates)
        return [
            (sequence, Tally(-negative, self._successes.get(key, 0), self._rework.get(key, 0)))
            for negative, sequence, key in ranked
        ]

    def directly_follows(self) -> Dict[Tuple[str, str], Tally]:
        """As directly_follows(sessions)."""
        counts, successes = self._weighted_pairs()
        names = self._names()
        edges: Dict[Tuple[str, str], Tally] = {}
        for (a, b), count in counts.items():
            pair = (names[a], names[b])
            before = edges.get(pair, Tally(0, 0))  # two spellings of one name add up
            edges[pair] = Tally(before.occurrences + count, before.successes + successes.get((a, b), 0))
        return edges

    def _weighted_pairs(self) -> Tuple[Counter, Counter]:
        """(pair -> sessions, pair -> successful sessions), over the distinct folded sequences once.

        Sequences of one (count, successes) weight are counted together in C,
        then scaled; a one-byte-a-name sequence's pairs are its overlapping
        two-byte windows, read as 16-bit numbers (array does it in C), not tuples.
        """
        by_weight: Dict[Tuple[int, int], List[bytes]] = {}
        successes = self._successes
        for key, weight in self._counts.items():
            by_weight.setdefault((weight, successes.get(key, 0)), []).append(key)
        total: Counter = Counter()
        good: Counter = Counter()
        for (weight, succeeded), keys in by_weight.items():
            windows: Counter = Counter()
            pairs: Counter = Counter()
            for key in keys:
                if key[:1] == b"\xff":
                    numbers = self._id_list(key)
                    pairs.update(zip(numbers, numbers[1:]))
                else:
                    windows.update(array("H", key[: len(key) & ~1]))
                    windows.update(array("H", key[1 : 1 + ((len(key) - 1) & ~1)]))
            for window, count in windows.items():
                pairs[_pair_of(window)] += count
            for pair, count in pairs.items():
                total[pair] += count * weight
                if succeeded:
                    good[pair] += count * succeeded
        return total, good

    def recurrence(self) -> Tuple[int, int]:
        """As recurrence(sessions): sessions whose exact, and folded, sequence an earlier one had."""
        return self.sessions - len(self._exact), self.sessions - len(self._counts)
