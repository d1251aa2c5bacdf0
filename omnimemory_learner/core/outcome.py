"""Whether a workflow session ended well, judged as the original service did."""

from __future__ import annotations

from typing import Sequence

SUCCESS_INDICATORS = frozenset({"commit_changes", "push_changes", "save_file", "command_completed"})
FAILURE_INDICATORS = frozenset({"delete_file"})
# Only the end of a session says how it went.
OUTCOME_WINDOW = 3


def infer_outcome(commands: Sequence[str]) -> str:
    """'success' or 'failure' from the last three command names."""
    tail = commands[-OUTCOME_WINDOW:]
    # isdisjoint: the same test as any(... in ...), without a generator per session.
    if not SUCCESS_INDICATORS.isdisjoint(tail):
        return "success"
    if not FAILURE_INDICATORS.isdisjoint(tail):
        return "failure"
    return "success"


def has_outcome_indicator(commands: Sequence[str]) -> bool:
    """Whether the outcome comes from an indicator in the last three commands, not the default."""
    tail = commands[-OUTCOME_WINDOW:]
    return not (SUCCESS_INDICATORS.isdisjoint(tail) and FAILURE_INDICATORS.isdisjoint(tail))
