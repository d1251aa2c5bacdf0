"""Noticing commits to the events database: a file watcher, or nothing (poll).

The observer watches the database's directory, not the file: the file may not
exist yet, and SQLite deletes and recreates the -wal file.  Its handler only
wakes the main loop; the loop then reads.  A WAL commit shows up as a
`modified` event on -wal about 1 ms after the commit starts, but with
synchronous=FULL that is often before readers can see it, so each event starts
a short schedule of re-checks over the next second.

Where the writes happen: SQLite puts the -wal and -journal beside the real
file, so db_path is resolved (symlinks, `..`) and the real file's directory is
watched; when db_path is a symlink its own directory is watched too, for the
link being repointed.  A watch is tied to a directory's inode: one deleted
and created again is a new directory the old watch never sees (and may reuse
the inode number), so `check()`, run by the loop every second and on every
file event, compares the resolved path, asks whether the kernel ended any
watch and compares the watched directories' identities, and says when the
watch no longer fits; the loop then polls and starts a new one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, Tuple

log = logging.getLogger(__name__)

# Events a reader causes (watchdog 3+ reports them with inotify): they say
# nothing about new rows, and the learner's own opening of the database makes them.
READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write"})
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
        while (
            self._base is not None and self._index < len(self.offsets) and self._base + self.offsets[self._index] <= now
        ):
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
    """A watchdog observer on the database's real directory that calls `on_change` on commits.

    `on_change` runs on the observer's thread: it must only wake the loop.
    """

    def __init__(self, db_path: Path, on_change: Callable[[], None]):
        self.db_path = Path(os.path.abspath(db_path))
        self.target = resolve(self.db_path)
        self.directory = self.target.parent
        self._on_change = on_change
        self._observer: Optional[Any] = None
        self._identities: Dict[str, Tuple[int, int]] = {}
        self.reason: Optional[str] = None  # why watching is off, when it is

    @property
    def active(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def _watched(self) -> Dict[str, Set[str]]:
        """Directory -> the names in it whose changes matter."""
        name = self.target.name
        watched = {str(self.directory): {name, name + "-wal", name + "-journal"}}
        if self.db_path != self.target:
            # The link (or a link on the way) may be repointed: watch its name too.
            watched.setdefault(str(self.db_path.parent), set()).add(self.db_path.name)
        return watched

    def start(self) -> bool:
        """Start watching; False (and `reason`) when only polling is possible."""
        self.stop()
        self.target = resolve(self.db_path)
        self.directory = self.target.parent
        self.reason = self._cannot_watch()
        if self.reason is not None:
            return False
        from watchdog.observers import Observer

        observer = Observer()
        observer.daemon = True
        identities = {}
        try:
            for directory, names in self._watched().items():
                identities[directory] = _identity(directory)
                observer.schedule(_handler(directory, names, self._on_change), directory, recursive=False)
            observer.start()
        except OSError as error:  # inotify limits (ENOSPC, EMFILE), a directory gone meanwhile
            self.reason = f"cannot watch {self.directory}: {error}"
            try:
                observer.stop()
            except Exception:  # noqa: BLE001
                pass
            return False
        self._observer = observer
        self._identities = identities
        return True

    def _cannot_watch(self) -> Optional[str]:
        """Why the database's directory cannot be watched now, or None."""
        if not self.directory.is_dir():
            return f"directory {self.directory} does not exist yet"
        fs_type = filesystem_type(self.directory)
        if fs_type in NETWORK_FILESYSTEMS:
            return f"{self.directory} is on a network file system ({fs_type})"
        try:
            import watchdog.observers  # noqa: F401
        except ImportError as error:  # pragma: no cover - watchdog is a dependency
            return f"watchdog is not importable: {error}"
        return None

    def stop(self, timeout: float = 2.0) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout)
            except Exception:  # noqa: BLE001 - a dead observer may fail to stop
                pass

    def check(self) -> bool:
        """Whether the watch is in effect and still on the right directories.

        Stops it (and says why in `reason`) when the observer died, db_path
        now resolves elsewhere, or a watched directory was removed or
        replaced; the caller then starts it again.
        """
        if self._observer is None:
            return False
        problem = None
        if not self._observer.is_alive():
            problem = "the file watcher stopped"
        elif resolve(self.db_path) != self.target:
            problem = f"{self.db_path} now points to {resolve(self.db_path)}"
        elif any(not emitter.is_alive() for emitter in list(getattr(self._observer, "emitters", ()))):
            # The kernel ended the watch (IN_DELETE_SELF): the directory went
            # away, even if one with the same inode number stands there again.
            problem = f"directory {self.directory} was removed (the watch on it ended)"
        else:
            for directory, identity in self._identities.items():
                try:
                    now = _identity(directory)
                except OSError:
                    problem = f"directory {directory} was removed"
                    break
                if now != identity:
                    problem = f"directory {directory} was removed and created again"
                    break
        if problem is None:
            return True
        self.stop()
        self.reason = problem
        return False


def resolve(path: Path) -> Path:
    """The file SQLite really opens: symlinks followed, `..` and `.` resolved."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _identity(directory: str) -> Tuple[int, int]:
    status = os.stat(directory)
    return (status.st_dev, status.st_ino)


def watch_problem(db_path: Path) -> Optional[str]:
    """Why a service started now could not watch `db_path` (None: it could)."""
    directory = resolve(db_path).parent
    if not directory.is_dir():
        return f"directory {directory} does not exist yet"
    fs_type = filesystem_type(directory)
    if fs_type in NETWORK_FILESYSTEMS:
        return f"{directory} is on a network file system ({fs_type})"
    return None


def _handler(directory: str, names: Set[str], on_change: Callable[[], None]) -> Any:
    """A watchdog handler calling `on_change` for changes to `names` in `directory`, or to the directory itself."""
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            # Cheap, and the only thing done on the observer's thread.
            if event.event_type in READ_ONLY_EVENTS:
                return  # our own reads: waking on them would read again, and again (a spin)
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if not path:
                    continue
                path = os.fsdecode(path)
                if os.path.basename(path) in names:
                    on_change()
                    return
                # The directory itself deleted or moved away (not merely
                # modified by a file in it): the loop's check re-arms.
                if path.rstrip("/") == directory and event.event_type in ("deleted", "moved"):
                    on_change()
                    return

    return Handler()
