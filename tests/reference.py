"""An independent reference for where sessions are cut, written from the rule, not from sessions.py.

The rule (issue 10), over the whole stream in rowid order, per session id: an event starts a new
session of its id when its time is at least `idle` after the latest time of that id's current
session, or when that session already holds `max_commands` events (a chunk); otherwise it joins it.
With close_on (issue 11), a row in `closing` ends its session right after it joins it: the id's next
row starts a new one.
"""


def reference_sessions(events, idle, max_commands=None, closing=frozenset()):
    """events: (rowid, session_id, time) in rowid order -> [(session_id, (rowid, ...)), ...]."""
    current, latest, sessions = {}, {}, []
    for rowid, sid, t in events:
        rows = current.get(sid)
        if rows is None or t - latest[sid] >= idle or (max_commands and len(rows) >= max_commands):
            rows = current[sid] = []
            sessions.append((sid, rows))
            latest[sid] = t
        rows.append(rowid)
        latest[sid] = max(latest[sid], t)
        if rowid in closing:
            current[sid] = None
    return [(sid, tuple(rows)) for sid, rows in sessions]


# -- outcomes (issue 27) ---------------------------------------------------------------

KINDS = {
    "edit_code": "edit",
    "modify_file": "edit",
    "create_file": "edit",
    "save_file": "save",
    "run_tests": "verify",
    "command_completed": "verify",
    "build_project": "attempt",
    "commit_changes": "commit",
    "push_changes": "commit",
    "delete_file": "delete",
}


def reference_verdict(commands):
    """(rule, rework) of the evidence rule (issue 27) over the whole list, each a lookup of its own."""
    kinds = [KINDS.get(command) for command in commands]

    def last(*wanted):
        return max([index for index, kind in enumerate(kinds) if kind in wanted], default=-1)

    rework = 0
    for i, kind in enumerate(kinds):
        if kind in ("verify", "attempt"):
            before = [j for j in range(i) if commands[j] == commands[i]]
            if before and "edit" in kinds[before[-1] + 1 : i]:
                rework += 1
    edit, check = last("edit"), last("verify", "attempt")
    if last("delete") > last("save", "commit"):
        return "deleted", rework
    if last("commit") > edit:
        return "committed", rework
    if rework and last("commit") < check:
        return "rework", rework
    if check > edit:
        return ("verified" if kinds[check] == "verify" else "inconclusive"), rework
    return ("abandoned" if check >= 0 else "inconclusive"), rework


_FAILING = {"deleted", "rework", "abandoned"}


def reference_outcome(commands, rule="evidence", inconclusive="success"):
    """What the API is told: the evidence rule as above, or the original's (last three commands)."""
    if rule == "last3":
        tail = list(commands)[-3:]
        if any(name in ("commit_changes", "push_changes", "save_file", "command_completed") for name in tail):
            return "success"
        return "failure" if "delete_file" in tail else "success"
    name, _ = reference_verdict(commands)
    if name == "inconclusive":
        return inconclusive
    return "failure" if name in _FAILING else "success"
