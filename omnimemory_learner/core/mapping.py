"""Which activity events are workflow commands, and what they are called."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

# The fifteen mappings of the original service; `[event_map]` in the
# configuration adds to or overrides them.
DEFAULT_EVENT_MAP: Dict[str, str] = {
    "file_open": "open_file",
    "file_save": "save_file",
    "file_create": "create_file",
    "file_delete": "delete_file",
    "file_modify": "modify_file",
    "process_start": "execute_command",
    "process_end": "command_completed",
    "editor_open": "open_editor",
    "editor_close": "close_editor",
    "code_edit": "edit_code",
    "test_run": "run_tests",
    "build_start": "build_project",
    "git_commit": "commit_changes",
    "git_push": "push_changes",
    "git_pull": "pull_changes",
}


def build_event_map(overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The defaults with the user's additions and overrides applied."""
    event_map = dict(DEFAULT_EVENT_MAP)
    if overrides:
        event_map.update(overrides)
    return event_map


def command_pairs(event_map: Mapping[str, str]) -> Dict[str, Tuple[str, str]]:
    """event_type -> (command, event_type), one shared tuple per type.

    events.validate_rows() applies it while it validates: an event of a type
    not in it is left out before its other fields are parsed.

    A session keeps a reference to the shared pair per command instead of a
    new tuple and a new string per event: 10,000 open sessions of 50 commands
    then cost a few MB instead of a hundred.
    """
    return {event_type: (command, event_type) for event_type, command in event_map.items()}
