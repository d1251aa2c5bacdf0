"""The service loop: one thread waits on one Event, the rest wake it.

The loop sleeps until the nearest of: a re-check after a file event, the next
session idle deadline, the next watchdog ping, the next status refresh and the
poll interval (always running, as a safety net under the watcher).  Signal
handlers and the file watcher only set flags and wake it; delivery runs in its
own thread.  Like uvicorn's Server, stopping is a flag the loop checks.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable, Optional

from .config import Config, ConfigError
from .delivery import Deliverer
from .pipeline import Pipeline
from .storage.lock import AlreadyRunning, InstanceLock
from .storage.snapshot import statistics, write_snapshot
from .storage.state import StateError
from .system import service_manager
from .system.notify import Notifier
from .watching import DatabaseWatcher, RecheckSchedule

log = logging.getLogger(__name__)

STATUS_EVERY_SECONDS = 5.0
# While the database directory does not exist, look for it this often (a stat).
DIRECTORY_CHECK_SECONDS = 1.0
STOP_GRACE_SECONDS = 5.0


class Service:
    def __init__(
        self,
        config: Config,
        reload_config: Optional[Callable[[], Config]] = None,
        notifier: Optional[Notifier] = None,
        on_reload: Optional[Callable[[Config], None]] = None,
    ):
        self.config = config
        self._reload_config = reload_config
        self._on_reload = on_reload
        self.notifier = notifier or Notifier()
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._file_event = False
        self.schedule = RecheckSchedule()
        self.pipeline: Optional[Pipeline] = None
        self.deliverer: Optional[Deliverer] = None
        self.watcher: Optional[DatabaseWatcher] = None
        self.lock = InstanceLock(config.state_dir)
        self.started_at = time.time()
        self.mode = "poll"
        self._next_ping = float("-inf")
        self._last_batch_status = float("-inf")
        self._snapshot_problem: Optional[str] = None

    # -- called from signal handlers and other threads -----------------------------

    def request_stop(self, *_args) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self, *_args) -> None:
        self._reload_requested = True
        self._wake.set()

    def _on_file_change(self) -> None:
        self._file_event = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- life cycle --------------------------------------------------------------

    def run(self) -> int:
        if not self._open_state():
            # Stopped while waiting for the state directory: nothing to commit.
            self.notifier.stopping()
            self.lock.release()
            log.info("Workflow learner stopped")
            return 0
        try:
            self._start()
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _open_state(self) -> bool:
        """Take the instance lock and open the state store; False if stopped first.

        A state directory that cannot be written (read-only, disk full, wrong
        owner) is waited for, not exited on: an exit would only have the
        service manager restart it into the same error.  The wait says READY=1
        (or systemd would time the start out and restart it) and keeps the
        watchdog fed; SIGHUP re-reads the configuration, so pointing state_dir
        elsewhere and reloading is a fix.  AlreadyRunning propagates: one
        instance per state store.
        """
        config = self.config
        log.info("=" * 60)
        log.info("OmniMemory Autonomous Workflow Learner")
        log.info("=" * 60)
        log.info("Memory daemon DB: %s", config.db_path)
        log.info("Procedural API: %s", config.api_url)
        log.info("Session idle threshold: %g minutes", config.session_idle_minutes)
        log.info("Poll interval: %g seconds", config.poll_interval_seconds)
        log.info("State: %s", config.state_dir)
        reported = None
        while not self._stop_requested:
            try:
                if not self.lock.held:
                    # Kept while waiting: no second instance or backfill slips in,
                    # and `status` sees the service as running.
                    self.lock.acquire()
                deliverer = Deliverer.from_config(self.config)
                self.pipeline = Pipeline(self.config, on_outbox=deliverer.wake)
                self.deliverer = deliverer
            except AlreadyRunning:
                raise
            except (StateError, OSError) as error:
                problem = f"cannot use the state directory {self.config.state_dir}: {error}"
                if problem != reported:
                    log.error("%s; nothing is read until it can be written (fix it, or set state_dir and "
                              "reload); retrying every %g s", problem, self.config.poll_interval_seconds)
                    if reported is None:
                        self.notifier.ready(f"Waiting: {problem}")
                    else:
                        self.notifier.status(f"Waiting: {problem}")
                    reported = problem
            else:
                if reported is not None:
                    log.info("The state directory %s is usable", self.config.state_dir)
                return True
            now = time.monotonic()
            next_ping = self._ping_if_due(now)
            wait = self.config.poll_interval_seconds
            if next_ping is not None:
                wait = min(wait, max(0.0, next_ping - now))
            self._wake.wait(wait)
            self._wake.clear()
            if self._reload_requested:
                self._reload_requested = False
                self._reload_before_start()
        return False

    def _read_new_config(self) -> Optional[Config]:
        """The configuration SIGHUP asks for, or None (reported) when it is invalid."""
        try:
            if self._reload_config is None:
                raise ConfigError("no configuration source to reload from")
            return self._reload_config()
        except ConfigError as error:
            log.error("The new configuration is invalid and was not applied: %s", error)
            return None

    def _reload_before_start(self) -> None:
        """SIGHUP while waiting for the state directory: take the new configuration."""
        config = self._read_new_config()
        if config is None:
            return
        self.config = config
        self.lock.release()
        self.lock = InstanceLock(config.state_dir)
        if self._on_reload is not None:
            self._on_reload(config)
        log.info("Configuration reloaded (state: %s)", config.state_dir)

    @property
    def _pipeline(self) -> Pipeline:
        assert self.pipeline is not None, "the state store is opened before anything reads"
        return self.pipeline

    @property
    def _deliverer(self) -> Deliverer:
        assert self.deliverer is not None, "the deliverer is made with the pipeline"
        return self.deliverer

    def _start(self) -> None:
        self._deliverer.start()
        self._start_watching(first=True)
        # Ready once set up; a long backlog is progress, reported in STATUS=.
        self.notifier.ready(self._status_line())
        self._publish()

    def _start_watching(self, first: bool = False) -> None:
        if not self.config.watch:
            if first:
                log.info("Watching is off (watch = false); polling every %g s", self.config.poll_interval_seconds)
            self.mode = "poll"
            return
        if self.watcher is None:
            self.watcher = DatabaseWatcher(self.config.db_path, self._on_file_change)
        if self.watcher.start():
            if self.mode != "watch":
                log.info("Watching %s for changes (and polling every %g s)", self.watcher.directory,
                         self.config.poll_interval_seconds)
            self.mode = "watch"
            # A change may have happened before the watch began.
            self._on_file_change()
        else:
            if first or self.mode == "watch":
                log.warning("Cannot watch for changes (%s); polling every %g s instead", self.watcher.reason,
                            self.config.poll_interval_seconds)
            self.mode = "poll"

    def _loop(self) -> None:
        pipeline = self._pipeline
        clock = pipeline.clock
        poll_interval = self.config.poll_interval_seconds
        next_poll = clock()
        next_status = clock() + STATUS_EVERY_SECONDS
        next_directory_check = None
        while not self._stop_requested:
            now = clock()
            if (next_directory_check is not None and now >= next_directory_check
                    and self.watcher is not None and self.watcher.directory.is_dir()):
                    self._start_watching()
                    next_poll = now  # read what the new database holds at once
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
                poll_interval = self.config.poll_interval_seconds
            read = False
            if self._file_event:
                self._file_event = False
                self.schedule.on_event(now)
                read = True
            if self.schedule.take_due(now):
                read = True
            forced = now >= next_poll
            if forced:
                next_poll = now + poll_interval
                self._maintain()
            deadline = pipeline.tracker.next_deadline()
            closing = deadline is not None and now >= deadline
            # Before closing a session by processing time, read what is there:
            # after a pause (SIGSTOP, suspend) its events may be committed but
            # not yet read, and a file event may not have woken us yet.
            if forced or pipeline.resume_reading or ((read or closing) and pipeline.reader.changed()):
                pipeline.resume_reading = False
                pipeline.drain(lambda: self._stop_requested, self._between_batches)
            pipeline.close_idle()
            pipeline.commit_due()
            if pipeline.resume_reading:
                continue  # the state became writable: read on without waiting
            now = clock()
            if now >= next_status:
                self._publish()
                next_status = now + STATUS_EVERY_SECONDS
            next_ping = self._ping_if_due(now)
            next_directory_check = (now + DIRECTORY_CHECK_SECONDS
                                    if self.watcher is not None and self.watcher.directory_missing else None)
            wake_at = min(t for t in (next_poll, next_status, next_ping, self.schedule.next_due(),
                                      pipeline.tracker.next_deadline(), next_directory_check,
                                      pipeline.next_commit_at()) if t is not None)
            self._wake.wait(max(0.0, wake_at - clock()))
            self._wake.clear()

    def _between_batches(self) -> None:
        """During a long catch-up: keep pinging and reporting, stay responsive."""
        now = self._pipeline.clock()
        self._ping_if_due(now)
        if now - self._last_batch_status >= STATUS_EVERY_SECONDS:
            self._last_batch_status = now
            self._publish(backlog=True)

    def _ping_if_due(self, now: float) -> Optional[float]:
        """Ping the watchdog when due; returns when the next ping is (None: no watchdog).

        One schedule for the main loop, the batches of a catch-up and the wait
        for the state directory: each of them keeps the service alive.
        """
        every = self.notifier.watchdog_interval
        if not every:
            return None
        if now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + every
        return self._next_ping

    def _maintain(self) -> None:
        """Once per poll tick: restart what died, take up watching again."""
        if not self._deliverer.alive:
            log.warning("The delivery thread was not running; starting it again")
            self._deliverer.start()
        if self.config.watch and (self.watcher is None or not self.watcher.check()):
            if self.mode == "watch":
                log.warning("Watching stopped (%s); polling every %g s until it can resume",
                            self.watcher.reason if self.watcher else "unknown", self.config.poll_interval_seconds)
                self.mode = "poll"
            self._start_watching()

    def _reload(self) -> None:
        log.info("Reloading the configuration")
        self.notifier.reloading()
        config = self._read_new_config()
        if config is not None:
            watch_changed = config.watch != self.config.watch
            self._pipeline.apply_config(config)
            self._deliverer.apply_config(config)
            self.config = self._pipeline.config
            if self._on_reload is not None:
                self._on_reload(self.config)
            if watch_changed:
                if self.watcher is not None:
                    self.watcher.stop()
                self._start_watching(first=True)
            log.info("Configuration reloaded")
        self.notifier.ready(self._status_line())

    def _shutdown(self) -> None:
        try:
            self.notifier.stopping()
            if self.watcher is not None:
                self.watcher.stop()
            if self.pipeline is not None and self.deliverer is not None:
                self.pipeline.commit()
                if not self.deliverer.stop(STOP_GRACE_SECONDS):
                    log.warning("A delivery was still in flight at exit; it will be sent again with the same key")
                self._publish(running=False)
                self.pipeline.close()
            log.info("Workflow learner stopped")
        finally:
            self.lock.release()

    # -- reporting ---------------------------------------------------------------

    def snapshot(self, running: bool = True, backlog: bool = False) -> dict:
        pipeline = self._pipeline
        stats = statistics(pipeline.state, pipeline.tracker.open_count)
        stats["last_event_time"] = pipeline.last_event_time
        deliverer = self._deliverer
        return {
            "running": running,
            "active_sessions": pipeline.tracker.open_count,
            "stats": stats,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "mode": self.mode,
            "catching_up": backlog,
            "db_path": str(self.config.db_path),
            "api_url": self.config.api_url,
            "db_head": pipeline.head,
            "database_problem": str(pipeline.unavailable) if pipeline.unavailable else None,
            "state_problem": pipeline.commit_failing,
            "api_down_since": deliverer.api_down_since,
            "next_retry_at": deliverer.retry_at,
            "notify_failures": self.notifier.failures,
            "service_manager": service_manager(),
        }

    def _status_line(self, snapshot: Optional[dict] = None) -> str:
        if snapshot is None:
            return f"Starting: {self.mode} mode, reading {self.config.db_path.name}"
        stats = snapshot["stats"]
        prefix = "Catching up" if snapshot["catching_up"] else "Learning"
        return (
            f"{prefix}: {stats['events_processed']} events read, {snapshot['active_sessions']} open sessions, "
            f"{stats['patterns_learned']} learned, {stats['outbox_pending']} pending, {self.mode} mode"
        )

    def _publish(self, running: bool = True, backlog: bool = False) -> None:
        try:
            snapshot = self.snapshot(running, backlog)
            write_snapshot(self.config.state_dir, snapshot)
        except Exception as error:  # noqa: BLE001 - reporting must never stop the service
            # Said once per kind of problem, not every few seconds (an OSError
            # names a new temporary file each time: its strerror is the kind).
            problem = getattr(error, "strerror", None) or str(error)
            if problem != self._snapshot_problem:
                log.warning("Cannot publish the status snapshot to %s: %s", self.config.state_dir, problem)
                self._snapshot_problem = problem
            return
        if self._snapshot_problem is not None:
            log.info("The status snapshot is published again")
            self._snapshot_problem = None
        if running:
            self.notifier.status(self._status_line(snapshot))
