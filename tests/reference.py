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
