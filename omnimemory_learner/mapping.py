"""Which activity events are workflow commands, and what they are called."""

from typing import Dict, Mapping, Optional

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


def map_events(events, event_map: Mapping[str, str]):
    """Turn read events into commands; events of other types are left out.

    `events` holds (rowid, session_id, timestamp, event_type) tuples; the
    result holds (rowid, session_id, command, timestamp, event_type) tuples
    and the number of events left out.
    """
    lookup = event_map.get
    commands = []
    append = commands.append
    for rowid, session_id, timestamp, event_type in events:
        command = lookup(event_type)
        if command is not None:
            append((rowid, session_id, command, timestamp, event_type))
    return commands, len(events) - len(commands)
