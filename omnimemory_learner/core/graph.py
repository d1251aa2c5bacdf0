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
"""

from __future__ import annotations

import heapq
from collections import Counter
from itertools import groupby
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

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
