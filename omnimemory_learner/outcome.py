"""Whether a workflow session ended well, judged as the original service did."""

from typing import Sequence

SUCCESS_INDICATORS = frozenset({"commit_changes", "push_changes", "save_file", "command_completed"})
FAILURE_INDICATORS = frozenset({"delete_file"})
# Only the end of a session says how it went.
OUTCOME_WINDOW = 3


def infer_outcome(commands: Sequence[str]) -> str:
    """'success' or 'failure' from the last three command names."""
    tail = commands[-OUTCOME_WINDOW:]
    if any(command in SUCCESS_INDICATORS for command in tail):
        return "success"
    if any(command in FAILURE_INDICATORS for command in tail):
        return "failure"
    return "success"
