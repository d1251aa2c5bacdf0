"""The service loop: one thread waits on one wake-up socket, the rest wake it.

The loop sleeps until the nearest of: a re-check after a file event, the next
session idle deadline, the next watchdog ping, the next status refresh, the
next check of the watch and the poll interval (always running, as a safety
net under the watcher).  Like uvicorn's Server, stopping is a flag the loop
checks.

Waking it is safe from anywhere.  A signal handler runs in the main thread
between any two bytecodes, possibly inside a lock the loop holds (the old
threading.Event.set() in a handler re-entered and died under a SIGHUP storm),
so handlers only set a flag; `signal.set_wakeup_fd` has the C-level handler
write a byte to the socket the loop selects on.  The watcher's thread wakes
it the same way: a byte written without blocking (a full socket already
means "wake up").  However many SIGHUPs arrive, the loop reloads once per
pass, one reload at a time.

The loop never spins: a deadline it could not act on (reading paused on an
unwritable state store, say) is not a reason to wake again at once, so every
wake-up time in the past is moved at least RETRY_SECONDS ahead.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from typing import Callable, Optional

from .config import Config, ConfigError
from .delivery import Deliverer
from .pipeline import Pipeline
from .storage.lock import AlreadyRunning, InstanceLock
from .storage.snapshot import statistics, write_snapshot
from .storage.state import StateError
from .system import NONE, service_manager
from .system.clock import processing_clock
from .system.notify import Notifier
from .watching import DatabaseWatcher, RecheckSchedule

log = logging.getLogger(__name__)

STATUS_EVERY_SECONDS = 5.0
# How often the watch is checked (still alive, on the directory the -wal is
# in) and a missing database directory looked for: a few stats.
DIRECTORY_CHECK_SECONDS = 1.0
STOP_GRACE_SECONDS = 5.0
# After a delivery the status is published again, at most this soon after the last time.
DELIVERED_STATUS_SECONDS = 1.0
# A wake-up time already past after a pass could not be acted on: look again after this.
RETRY_SECONDS = 1.0
# Under a service manager, a held instance lock is tried again this often.
LOCK_RETRY_SECONDS = 1.0


class Wakeup:
    """A socket pair the loop waits on; writing a byte to it wakes the loop.

    Safe from other threads and from signal handlers: no lock, no blocking.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        # poll, not select: select() fails on a descriptor numbered above 1023.
        self._poller = select.poll()
        self._poller.register(self._reader, select.POLLIN)

    def writer_fd(self) -> int:
        return self._writer.fileno()

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # full: a wake-up is already pending; closed: we are stopping

    def wait(self, timeout: float) -> None:
        """Sleep until woken or `timeout` seconds pass; then forget the wake-ups."""
        self._poller.poll(max(0.0, timeout) * 1000.0)
        while True:
            try:
                if not self._reader.recv(4096):
                    return
            except OSError:  # BlockingIOError: drained
                return

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


def next_wake(now: float, candidates) -> float:
    """The nearest wake-up time, never one already past.

    After a pass of the loop every due thing was done or could not be (a
    failed commit, a deadline that needs reading first): a time still in the
    past would wake the loop at once, again and again, so it counts as
    RETRY_SECONDS from now.
    """
    times = [t if t > now else now + RETRY_SECONDS for t in candidates if t is not None]
    return min(times) if times else now + RETRY_SECONDS


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
        self._wakeup = Wakeup()
        self.clock = processing_clock
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
        self._publish_soon = False
        self._delivered = False

    # -- called from signal handlers and other threads -----------------------------

    def request_stop(self, *_args) -> None:
        self._stop_requested = True
        self._wakeup.wake()

    def request_reload(self, *_args) -> None:
        self._reload_requested = True
        self._wakeup.wake()

    def _on_file_change(self) -> None:
        self._file_event = True
        self._wakeup.wake()

    def _on_delivered(self) -> None:
        # From the delivery thread after each session the API took: STATUS=
        # and the snapshot show it within a second, not at the next refresh.
        self._delivered = True
        self._wakeup.wake()

    def _on_signal(self, signum: int, _frame) -> None:
        # Only record: set_wakeup_fd's C handler has already written the
        # wake-up byte, and nothing here may take a lock or block.
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._stop_requested = True

    def install_signal_handlers(self) -> None:
        """From the main thread: signals set flags and wake the loop through its socket."""
        signal.set_wakeup_fd(self._wakeup.writer_fd(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # -- life cycle --------------------------------------------------------------

    def run(self) -> int:
        try:
            if not self._open_state():
                # Stopped while waiting for the state directory or the lock: nothing to commit.
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
        finally:
            if signal.getsignal(signal.SIGHUP) == self._on_signal:
                # Signals from here on must not write to a closed socket.
                signal.set_wakeup_fd(-1)
            self._wakeup.close()

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
            retry = self.config.poll_interval_seconds
            try:
                if not self.lock.held:
                    # Kept while waiting: no second instance or backfill slips in,
                    # and `status` sees the service as running.
                    self.lock.acquire()
                config = self.config
                deliverer = Deliverer.from_config(config, on_progress=self._on_delivered)
                self.pipeline = Pipeline(
                    self.config, clock=self.clock, on_outbox=deliverer.wake, on_unsent=deliverer.take_unsent
                )
                self.deliverer = deliverer
            except AlreadyRunning as error:
                if service_manager() == NONE:
                    raise  # by hand: say so and exit 75
                # A service manager would restart an exit into the same lock
                # (and give up after a few tries): wait for the holder instead,
                # typically a backfill that ends by itself.
                retry = LOCK_RETRY_SECONDS
                problem = f"{error}; waiting for it to exit"
                if problem != reported:
                    log.warning("%s (checking every %g s)", problem, retry)
                    self._report_waiting(problem, first=reported is None)
                    reported = problem
            except (StateError, OSError) as error:
                problem = f"cannot use the state directory {self.config.state_dir}: {error}"
                if problem != reported:
                    log.error(
                        "%s; nothing is read until it can be written (fix it, or set state_dir and "
                        "reload); retrying every %g s",
                        problem,
                        retry,
                    )
                    self._report_waiting(problem, first=reported is None)
                    reported = problem
            else:
                if reported is not None:
                    log.info("The state directory %s is usable", self.config.state_dir)
                return True
            now = self.clock()
            next_ping = self._ping_if_due(now)
            wait = retry
            if next_ping is not None:
                wait = min(wait, max(0.0, next_ping - now))
            self._wakeup.wait(wait)
            if self._reload_requested:
                self._reload_requested = False
                self._reload_before_start()
        return False

    def _report_waiting(self, problem: str, first: bool) -> None:
        """READY=1 the first time (or systemd times the start out), STATUS= after."""
        if first:
            self.notifier.ready(f"Waiting: {problem}")
        else:
            self.notifier.status(f"Waiting: {problem}")

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
        watcher = self.watcher
        if watcher.start():
            if self.mode != "watch":
                where = str(watcher.directory)
                if watcher.target != watcher.db_path:
                    where += f" (where {watcher.db_path} really is: {watcher.target})"
                log.info("Watching %s for changes (and polling every %g s)", where, self.config.poll_interval_seconds)
            self.mode = "watch"
            # A change may have happened before the watch began.
            self._on_file_change()
        else:
            if first or self.mode == "watch":
                log.warning(
                    "Cannot watch for changes (%s); polling every %g s instead",
                    watcher.reason,
                    self.config.poll_interval_seconds,
                )
            self.mode = "poll"

    def _check_watching(self) -> bool:
        """Keep the watch on the directory the writes happen in; True when it was re-armed.

        A dead observer, a repointed symlink or a directory deleted (and
        perhaps created again) ends the watch: say "poll" at once, and start
        a new watch as soon as there is something to watch.
        """
        if not self.config.watch:
            return False
        watcher = self.watcher
        if watcher is not None and watcher.check():
            return False
        if self.mode == "watch":
            log.warning(
                "Watching stopped (%s); polling every %g s until it can resume",
                watcher.reason if watcher else "unknown",
                self.config.poll_interval_seconds,
            )
            self.mode = "poll"
            self._publish_soon = True
        self._start_watching()
        if self.mode == "watch":
            self._publish_soon = True
            return True
        return False

    def _loop(self) -> None:
        pipeline = self._pipeline
        clock = pipeline.clock
        poll_interval = self.config.poll_interval_seconds
        next_poll = clock()
        next_status = clock() + STATUS_EVERY_SECONDS
        next_watch_check = clock() + DIRECTORY_CHECK_SECONDS
        while not self._stop_requested:
            now = clock()
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
                poll_interval = self.config.poll_interval_seconds
            read = False
            if self._file_event:
                self._file_event = False
                self.schedule.on_event(now)
                read = True
            if read or now >= next_watch_check:
                # On a file event too: it may be the link repointed or the directory removed.
                next_watch_check = now + DIRECTORY_CHECK_SECONDS
                if self._check_watching():
                    next_poll = now  # read what the directory holds now at once
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
            last_status = next_status - STATUS_EVERY_SECONDS
            delivered_at = last_status + DELIVERED_STATUS_SECONDS if self._delivered else None
            if now >= next_status or self._publish_soon or (delivered_at is not None and now >= delivered_at):
                self._publish_soon = self._delivered = False
                delivered_at = None
                self._publish()
                next_status = now + STATUS_EVERY_SECONDS
            next_ping = self._ping_if_due(now)
            wake_at = next_wake(
                now,
                (
                    next_poll,
                    next_status,
                    next_ping,
                    self.schedule.next_due(),
                    delivered_at,
                    pipeline.tracker.next_deadline(),
                    next_watch_check,
                    pipeline.next_commit_at(),
                ),
            )
            self._wakeup.wait(wake_at - clock())

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
        """Once per poll tick: restart what died (the watch is checked every second)."""
        if not self._deliverer.alive:
            log.warning("The delivery thread was not running; starting it again")
            self._deliverer.start()

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
                self.pipeline.record_unsent(self.deliverer.take_back_unsent())
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
            "watch_problem": self._watch_problem(),
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

    def _watch_problem(self) -> Optional[str]:
        """Why the service polls instead of watching (None while it watches)."""
        if self.mode == "watch":
            return None
        if not self.config.watch:
            return "watch = false in the configuration"
        return (self.watcher.reason if self.watcher is not None else None) or "not watching yet"

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
