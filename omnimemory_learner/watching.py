"""Noticing commits to the events database: a file watcher, or nothing (poll).

The observer watches the database's directory, not the file: the file may not
exist yet, and SQLite deletes and recreates the -wal file.  Its handler only
wakes the main loop; the loop then reads.  A WAL commit shows up as a
`modified` event on -wal about 1 ms after the commit starts, but with
synchronous=FULL that is often before readers can see it, so each event starts
a short schedule of re-checks over the next second.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

# Seconds after the last file event at which the loop checks again.
RECHECK_OFFSETS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 1.0)
# File systems where inotify does not see other machines' writes.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs"}


class RecheckSchedule:
    """When to look again after a file event (pure; time is passed in)."""

    def __init__(self, offsets=RECHECK_OFFSETS):
        self.offsets = offsets
        self._base: Optional[float] = None
        self._index = 0

    def on_event(self, now: float) -> None:
        self._base = now
        self._index = 0

    def next_due(self) -> Optional[float]:
        if self._base is None or self._index >= len(self.offsets):
            return None
        return self._base + self.offsets[self._index]

    def take_due(self, now: float) -> bool:
        """Consume every re-check due by `now`; True if any was."""
        due = False
        while (self._base is not None and self._index < len(self.offsets)
               and self._base + self.offsets[self._index] <= now):
            self._index += 1
            due = True
        return due


def filesystem_type(path: Path) -> Optional[str]:
    """The mount's file-system type on Linux (longest matching mount point)."""
    try:
        with open("/proc/self/mounts") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for entry in entries:
        if len(entry) < 3:
            continue
        mount_point = entry[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, entry[2]
    return best_type


class DatabaseWatcher:
    """A watchdog observer on the database directory that sets `wake` on changes."""

    def __init__(self, db_path: Path, on_change):
        self.db_path = Path(db_path)
        self.directory = self.db_path.parent
        self._names = {self.db_path.name, self.db_path.name + "-wal", self.db_path.name + "-journal"}
        self._on_change = on_change
        self._observer: Optional[Any] = None
        self.reason: Optional[str] = None  # why watching is off, when it is

    @property
    def directory_missing(self) -> bool:
        """Watching is off only because the directory does not exist (yet)."""
        return not self.active and not self.directory.is_dir()

    @property
    def active(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def start(self) -> bool:
        """Start watching; False (and `reason`) when only polling is possible."""
        self.stop()
        if not self.directory.is_dir():
            self.reason = f"directory {self.directory} does not exist yet"
            return False
        fs_type = filesystem_type(self.directory)
        if fs_type in NETWORK_FILESYSTEMS:
            self.reason = f"{self.directory} is on a network file system ({fs_type})"
            return False
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError as error:  # pragma: no cover - watchdog is a dependency
            self.reason = f"watchdog is not importable: {error}"
            return False

        names, on_change = self._names, self._on_change

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                # Cheap, and the only thing done on the observer's thread.
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path and os.path.basename(os.fsdecode(path)) in names:
                        on_change()
                        return

        observer = Observer()
        observer.daemon = True
        try:
            observer.schedule(Handler(), str(self.directory), recursive=False)
            observer.start()
        except OSError as error:  # inotify limits (ENOSPC, EMFILE) and the like
            self.reason = f"cannot watch {self.directory}: {error}"
            try:
                observer.stop()
            except Exception:  # noqa: BLE001
                pass
            return False
        self._observer = observer
        self.reason = None
        return True

    def stop(self, timeout: float = 2.0) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout)
            except Exception:  # noqa: BLE001 - a dead observer may fail to stop
                pass

    def check(self) -> bool:
        """Whether the observer still runs; records why not when it died."""
        if self._observer is not None and not self._observer.is_alive():
            self._observer = None
            self.reason = "the file watcher stopped"
        if self._observer is not None and not self.directory.is_dir():
            self.stop()
            self.reason = f"directory {self.directory} was removed"
        return self.active

