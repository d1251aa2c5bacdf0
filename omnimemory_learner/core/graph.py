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

from typing import Dict, Iterable, List, NamedTuple, Sequence, Set, Tuple

from .folding import folded_length

SUCCESS = "success"


class SessionSummary(NamedTuple):
    """What the report needs of one settled session."""

    names: Sequence[str]  # command names before folding
    outcome: str  # success / failure


class Tally(NamedTuple):
    occurrences: int
    successes: int

    @property
    def success_share(self) -> float:
        return self.successes / self.occurrences if self.occurrences else 0.0


def fold_names(names: Sequence[str]) -> Tuple[str, ...]:
    return tuple(name for index, name in enumerate(names) if index == 0 or names[index - 1] != name)


def _tally(counts: Dict, key: object, success: bool) -> None:
    count, successes = counts.get(key, (0, 0))
    counts[key] = (count + 1, successes + (1 if success else 0))


def workflows(sessions: Iterable[SessionSummary]) -> List[Tuple[Tuple[str, ...], Tally]]:
    """Folded sequences, most frequent first (ties: the sequence, for a stable order)."""
    counts: Dict[Tuple[str, ...], Tuple[int, int]] = {}
    for session in sessions:
        _tally(counts, fold_names(session.names), session.outcome == SUCCESS)
    ranked = sorted(counts.items(), key=lambda item: (-item[1][0], item[0]))
    return [(sequence, Tally(*tally)) for sequence, tally in ranked]


def directly_follows(sessions: Iterable[SessionSummary]) -> Dict[Tuple[str, str], Tally]:
    """(a, b) -> how often b came right after a (repeats folded), and in how many successes."""
    counts: Dict[Tuple[str, str], Tuple[int, int]] = {}
    for session in sessions:
        folded = fold_names(session.names)
        success = session.outcome == SUCCESS
        for pair in zip(folded, folded[1:]):
            _tally(counts, pair, success)
    return {pair: Tally(*tally) for pair, tally in counts.items()}


def recurrence(sessions: Iterable[SessionSummary]) -> Tuple[int, int]:
    """(exact, folded): sessions, in the order given, whose sequence an earlier one already had."""
    seen_exact: Set[Tuple[str, ...]] = set()
    seen_folded: Set[Tuple[str, ...]] = set()
    exact = folded = 0
    for session in sessions:
        sequence = tuple(session.names)
        short = fold_names(sequence)
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
    lines = [f"digraph {_dot_string(title)} {{", "  rankdir=LR;", '  node [shape=box, style=rounded, fontname="sans"];',
             '  edge [fontname="sans"];']
    lines += [f"  {_dot_string(name)};" for name in nodes]
    for (source, target), tally in sorted(edges.items()):
        width = 1.0 + 4.0 * tally.occurrences / heaviest
        lines.append(
            f"  {_dot_string(source)} -> {_dot_string(target)} "
            f"[label=\"{tally.occurrences}\", weight={tally.occurrences}, "
            f"penwidth={width:.2f}, color=\"{share_colour(tally.success_share)}\", "
            f"tooltip=\"{tally.successes} of {tally.occurrences} in successful sessions\"];"
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
