"""Repeat folding: a run of the same command becomes one command (pure).

The procedural API identifies a pattern by its exact command sequence, so
`open_file, edit_code x37, save_file` and the same workflow with twelve edits
are two unrelated patterns.  Folded, both are `open_file, edit_code, save_file`
and the run's length travels in the command's context:

    {"command": "edit_code", "timestamp": <first of the run>,
     "context": {"event_type": "code_edit", "repeat": 37, "last_timestamp": <last of the run>}}

A run is a maximal stretch of consecutive commands with the same command
name; its event_type is the first one's (an event map may send two types to
one command).  A run of one stays exactly as it was, with no `repeat` key, so
a session without repeats gives the same payload folded or not.  The outcome
is inferred on the commands before folding (see outcome.py); expanding
`repeat` gives the command names back (expand_names).
"""

from __future__ import annotations

from operator import ne
from typing import List, NamedTuple, Sequence, Tuple

# (command, timestamp, event_type), as core.sessions.Command.
Command = Tuple[str, float, str]


class FoldedCommand(NamedTuple):
    command: str
    timestamp: float  # the run's first
    event_type: str  # the run's first
    repeat: int
    last_timestamp: float

    def as_payload(self) -> dict:
        context: dict = {"event_type": self.event_type}
        if self.repeat > 1:
            context["repeat"] = self.repeat
            context["last_timestamp"] = self.last_timestamp
        return {"command": self.command, "timestamp": self.timestamp, "context": context}


def fold_runs(commands: Sequence[Command]) -> List[FoldedCommand]:
    """Consecutive commands of the same name, folded into one each."""
    folded: List[FoldedCommand] = []
    for command, timestamp, event_type in commands:
        if folded and folded[-1].command == command:
            run = folded[-1]
            folded[-1] = run._replace(repeat=run.repeat + 1, last_timestamp=timestamp)
        else:
            folded.append(FoldedCommand(command, timestamp, event_type, 1, timestamp))
    return folded


def expand_names(folded: Sequence[FoldedCommand]) -> List[str]:
    """The command names before folding: the inverse of fold_runs on names."""
    names: List[str] = []
    for run in folded:
        names.extend([run.command] * run.repeat)
    return names


def folded_length(names: Sequence[str]) -> int:
    """How many commands a session has once folded (without building it).

    One plus the places where a name differs from the one before; map(ne)
    runs in C (this is asked of every closed session of a catch-up).
    """
    if not names:
        return 0
    return 1 + sum(map(ne, names[1:], names))
