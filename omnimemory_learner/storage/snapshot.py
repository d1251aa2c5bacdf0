"""The statistics snapshot the service publishes for `status` and `doctor`.

Written to a temporary file and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from ..core.fates import Fate
from .files import SNAPSHOT_FILE
from .state import StateStore

# The original service's statistics, in its words; the rest is ours.
ORIGINAL_STATS = ("events_processed", "sessions_created", "patterns_learned", "errors")
# The service publishes every 5 s (also between batches of a catch-up); a
# snapshot older than this, or of another pid, says nothing about the process.
STALE_AFTER_SECONDS = 30.0


def write_snapshot(state_dir: Path, snapshot: dict) -> None:
    state_dir = Path(state_dir)
    fd, temporary = tempfile.mkstemp(prefix=".status.", dir=str(state_dir))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(snapshot, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, state_dir / SNAPSHOT_FILE)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def read_snapshot(state_dir: Path) -> Optional[dict]:
    try:
        with open(Path(state_dir) / SNAPSHOT_FILE) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def statistics(store: StateStore, open_sessions: int = 0) -> dict:
    """The `stats` object: the original's four keys first, then the rest."""
    counters = store.counters()
    statuses = store.status_counts()
    stats: Dict[str, Any] = {
        "events_processed": counters.get("events_processed", 0),
        # Sessions are counted when they close; open ones are created too.
        "sessions_created": counters.get("sessions_created", 0) + open_sessions,
        "patterns_learned": counters.get("patterns_learned", 0),
        "errors": counters.get("errors", 0),
        "events_skipped": counters.get("events_skipped", 0),
        "events_ignored": counters.get("events_ignored", 0),
        "events_excluded": counters.get("events_excluded", 0),
        "sessions_too_short": counters.get("sessions_too_short", 0),
        "sessions_evicted": counters.get("sessions_evicted", 0),
        "sessions_low_quality": counters.get("sessions_low_quality", 0),
        "sessions_not_learned": counters.get("sessions_not_learned", 0),
        "sessions_rejected_total": counters.get("sessions_rejected", 0),
        "outbox_pending": statuses.get(Fate.PENDING, 0),
        Fate.REJECTED.value: statuses.get(Fate.REJECTED, 0),
    }
    position = store.position()
    stats["read_position"] = position.replay_until
    stats["low_water_position"] = position.resume_after
    last_delivery = store.meta_value("last_delivery_at")
    stats["last_delivery_at"] = float(last_delivery) if last_delivery else None
    last_error = store.meta_value("last_error")
    if last_error:
        when, _, text = last_error.partition(" ")
        stats["last_error"] = {"at": float(when), "message": text}
    else:
        stats["last_error"] = None
    return stats
