"""The service loop: one thread waits on one wake-up socket, the rest wake it.

The loop sleeps until the nearest of: a re-check after a file event, the next
session idle deadline, the next watchdog ping, the next status refresh, the
next check of the watch and the poll interval (always running, as a safety
net under the watcher).  Like uvicorn's Server, stopping is a flag the loop
checks.

Waking it is safe from anywhere.  A signal handler runs in the main thread
between any two bytecodes, possibly inside a lock the loop holds (a
threading.Event.set() there can re-enter that lock and deadlock), so
handlers only set a flag; `signal.set_wakeup_fd` has the C-level handler
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
from dataclasses import dataclass
from typing import Callable, Optional

from .config import Config, ConfigError
from .delivery import Deliverer
from .pipeline import Pipeline
from .runner import Runner, drain
from .storage.lock import AlreadyRunning, InstanceLock
from .storage.snapshot import write_snapshot
from .storage.state import LISTENER_META, StateError
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


class Watching:
    """Watching the database's directory for changes, or polling only: the mode, the watcher, the re-checks.

    The watcher's thread only sets a flag and wakes the loop (`wake`); the
    loop takes the flag (take_event) and schedules its re-checks.
    """

    def __init__(self, wake: Callable[[], None]):
        self._wake = wake
        self._event = False
        self.watcher: Optional[DatabaseWatcher] = None
        self.mode = "poll"
        self.schedule = RecheckSchedule()

    def on_file_change(self) -> None:
        self._event = True
        self._wake()

    def take_event(self, now: float) -> bool:
        """True once per file event since the last call, which starts the re-checks."""
        if not self._event:
            return False
        self._event = False
        self.schedule.on_event(now)
        return True

    def start(self, config: Config, first: bool = False) -> None:
        if not config.watch:
            if first:
                log.info("Watching is off (watch = false); polling every %g s", config.poll_interval_seconds)
            self.mode = "poll"
            return
        if self.watcher is None:
            self.watcher = DatabaseWatcher(config.db_path, self.on_file_change)
        watcher = self.watcher
        if watcher.start():
            if self.mode != "watch":
                where = str(watcher.directory)
                if watcher.target != watcher.db_path:
                    where += f" (where {watcher.db_path} really is: {watcher.target})"
                log.info("Watching %s for changes (and polling every %g s)", where, config.poll_interval_seconds)
            self.mode = "watch"
            # A change may have happened before the watch began.
            self.on_file_change()
        else:
            if first or self.mode == "watch":
                log.warning(
                    "Cannot watch for changes (%s); polling every %g s instead",
                    watcher.reason,
                    config.poll_interval_seconds,
                )
            self.mode = "poll"

    def check(self, config: Config) -> bool:
        """Keep the watch on the directory the writes happen in; True when it was re-armed.

        A dead observer, a repointed symlink or a directory deleted (and
        perhaps created again) ends the watch: say "poll" at once, and start
        a new watch as soon as there is something to watch.
        """
        if not config.watch:
            return False
        watcher = self.watcher
        if watcher is not None and watcher.check():
            return False
        if self.mode == "watch":
            log.warning(
                "Watching stopped (%s); polling every %g s until it can resume",
                watcher.reason if watcher else "unknown",
                config.poll_interval_seconds,
            )
            self.mode = "poll"
        self.start(config)
        return self.mode == "watch"

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def problem(self, config: Config) -> Optional[str]:
        """Why the service polls instead of watching (None while it watches)."""
        if self.mode == "watch":
            return None
        if not config.watch:
            return "watch = false in the configuration"
        return (self.watcher.reason if self.watcher is not None else None) or "not watching yet"


class Reporting:
    """When the service says how it is: watchdog pings, STATUS= and the snapshot.

    `delivered` is set from the delivery thread (a session the API took is
    shown within DELIVERED_STATUS_SECONDS); a snapshot that cannot be written
    is said once per kind of problem.
    """

    def __init__(self, notifier: Notifier):
        self.notifier = notifier
        self.started_at = time.time()
        self._next_ping = float("-inf")
        self.next_status = float("-inf")
        self._last_batch_status = float("-inf")
        self._snapshot_problem: Optional[str] = None
        self.publish_soon = False
        self.delivered = False

    def ping_if_due(self, now: float) -> Optional[float]:
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

    def delivered_at(self) -> Optional[float]:
        """When a delivery since the last status is to be shown (None: none waits)."""
        if not self.delivered:
            return None
        return self.next_status - STATUS_EVERY_SECONDS + DELIVERED_STATUS_SECONDS

    def take_status_due(self, now: float) -> bool:
        """True when the status is to be published now; the next one is then STATUS_EVERY_SECONDS away."""
        delivered_at = self.delivered_at()
        if now >= self.next_status or self.publish_soon or (delivered_at is not None and now >= delivered_at):
            self.publish_soon = self.delivered = False
            self.next_status = now + STATUS_EVERY_SECONDS
            return True
        return False

    def take_batch_status_due(self, now: float) -> bool:
        """During a catch-up, between batches: True every STATUS_EVERY_SECONDS."""
        if now - self._last_batch_status >= STATUS_EVERY_SECONDS:
            self._last_batch_status = now
            return True
        return False

    def waiting(self, problem: str, first: bool) -> None:
        """Waiting for the state directory: READY=1 the first time (or systemd times the start out), STATUS= after."""
        if first:
            self.notifier.ready(f"Waiting: {problem}")
        else:
            self.notifier.status(f"Waiting: {problem}")

    def snapshot(self, config: Config, runner: Runner, watching: Watching, running: bool, backlog: bool) -> dict:
        progress = runner.pipeline.progress()
        deliverer = runner.deliverer
        return {
            "running": running,
            "active_sessions": progress.open_sessions,
            "stats": progress.stats,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "mode": watching.mode,
            "watch_problem": watching.problem(config),
            "catching_up": backlog,
            "db_path": str(config.db_path),
            "api_url": config.api_url,
            "db_head": progress.db_head,
            "database_problem": progress.database_problem,
            "state_problem": progress.state_problem,
            "api_down_since": deliverer.health.down_since,
            "next_retry_at": deliverer.health.retry_at,
            "notify_failures": self.notifier.failures,
            "service_manager": service_manager(),
            "teaching_again": deliverer.relearner.teaching(),
        }

    def publish(self, config: Config, runner: Runner, watching: Watching, running: bool, backlog: bool) -> None:
        """Write the snapshot and, while running, say STATUS=; a snapshot that cannot be written is said once."""
        try:
            snapshot = self.snapshot(config, runner, watching, running, backlog)
            write_snapshot(config.state_dir, snapshot)
        except Exception as error:  # noqa: BLE001 - reporting must never stop the service
            # An OSError names a new temporary file each time: its strerror is the kind.
            problem = getattr(error, "strerror", None) or str(error)
            if problem != self._snapshot_problem:
                log.warning("Cannot publish the status snapshot to %s: %s", config.state_dir, problem)
                self._snapshot_problem = problem
            return
        if self._snapshot_problem is not None:
            log.info("The status snapshot is published again")
            self._snapshot_problem = None
        if running:
            self.notifier.status(status_line(snapshot))


def starting_line(mode: str, config: Config) -> str:
    return f"Starting: {mode} mode, reading {config.db_path.name}"


def status_line(snapshot: dict) -> str:
    stats = snapshot["stats"]
    prefix = "Catching up" if snapshot["catching_up"] else "Learning"
    return (
        f"{prefix}: {stats['events_processed']} events read, {snapshot['active_sessions']} open sessions, "
        f"{stats['patterns_learned']} learned, {stats['outbox_pending']} pending, {snapshot['mode']} mode"
    ) + _teaching_part(snapshot.get("teaching_again"))


def _teaching_part(teaching: Optional[dict]) -> str:
    if not teaching:
        return ""
    return f"; teaching the API again {teaching['taught']} of {teaching['lost']} forgotten sessions"


def _log_start(config: Config) -> None:
    log.info("=" * 60)
    log.info("OmniMemory Autonomous Workflow Learner")
    log.info("=" * 60)
    log.info("Memory daemon DB: %s", config.db_path)
    log.info("Procedural API: %s", config.api_url)
    log.info("Session idle threshold: %g minutes", config.session_idle_minutes)
    log.info("Poll interval: %g seconds", config.poll_interval_seconds)
    log.info("State: %s", config.state_dir)


def _read_new_config(reload_config: Optional[Callable[[], Config]]) -> Optional[Config]:
    """The configuration SIGHUP asks for, or None (reported) when it is invalid."""
    try:
        if reload_config is None:
            raise ConfigError("no configuration source to reload from")
        return reload_config()
    except ConfigError as error:
        log.error("The new configuration is invalid and was not applied: %s", error)
        return None


@dataclass
class _Due:
    """The loop's own timers."""

    poll: float
    watch_check: float


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
        self._reconcile_requested = False  # SIGUSR1: `omnimemory-learner reconcile` asks
        self._watching = Watching(self._wakeup.wake)
        self._reporting = Reporting(self.notifier)
        self._runner: Optional[Runner] = None
        self.lock = InstanceLock(config.state_dir)

    # -- called from signal handlers and other threads -----------------------------

    def request_stop(self, *_args) -> None:
        self._stop_requested = True
        self._wakeup.wake()

    def request_reload(self, *_args) -> None:
        self._reload_requested = True
        self._wakeup.wake()

    def _on_delivered(self) -> None:
        # From the delivery thread after each session the API took: STATUS=
        # and the snapshot show it within a second, not at the next refresh.
        self._reporting.delivered = True
        self._wakeup.wake()

    def _on_signal(self, signum: int, _frame) -> None:
        # Only record: set_wakeup_fd's C handler has already written the
        # wake-up byte, and nothing here may take a lock or block.
        if signum == signal.SIGHUP:
            self._reload_requested = True
        elif signum == signal.SIGUSR1:
            self._reconcile_requested = True
        else:
            self._stop_requested = True

    def install_signal_handlers(self) -> None:
        """From the main thread: signals set flags and wake the loop through its socket."""
        signal.set_wakeup_fd(self._wakeup.writer_fd(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
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
        _log_start(self.config)
        reported = None
        while not self._stop_requested:
            retry = self.config.poll_interval_seconds
            try:
                self._open_runner()
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
                    self._reporting.waiting(problem, first=reported is None)
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
                    self._reporting.waiting(problem, first=reported is None)
                    reported = problem
            else:
                if reported is not None:
                    log.info("The state directory %s is usable", self.config.state_dir)
                return True
            self._wait_to_open_again(retry)
        return False

    def _open_runner(self) -> None:
        if not self.lock.held:
            # Kept while waiting: no second instance or backfill slips in,
            # and `status` sees the service as running.
            self.lock.acquire()
        self._runner = Runner(self.config, clock=self.clock, on_delivered=self._on_delivered)

    def _wait_to_open_again(self, retry: float) -> None:
        now = self.clock()
        next_ping = self._reporting.ping_if_due(now)
        wait = retry
        if next_ping is not None:
            wait = min(wait, max(0.0, next_ping - now))
        self._wakeup.wait(wait)
        if self._reload_requested:
            self._reload_requested = False
            self._reload_before_start()

    def _reload_before_start(self) -> None:
        """SIGHUP while waiting for the state directory: take the new configuration."""
        config = _read_new_config(self._reload_config)
        if config is None:
            return
        self.config = config
        self.lock.release()
        self.lock = InstanceLock(config.state_dir)
        if self._on_reload is not None:
            self._on_reload(config)
        log.info("Configuration reloaded (state: %s)", config.state_dir)

    @property
    def pipeline(self) -> Optional[Pipeline]:
        return self._runner.pipeline if self._runner is not None else None

    @property
    def deliverer(self) -> Optional[Deliverer]:
        return self._runner.deliverer if self._runner is not None else None

    @property
    def _pipeline(self) -> Pipeline:
        assert self._runner is not None, "the state store is opened before anything reads"
        return self._runner.pipeline

    @property
    def _deliverer(self) -> Deliverer:
        assert self._runner is not None, "the deliverer is made with the pipeline"
        return self._runner.deliverer

    def _start(self) -> None:
        assert self._runner is not None, "the state store is opened before anything reads"
        self._runner.start()
        try:
            self._pipeline.state.note(LISTENER_META, str(os.getpid()))  # `reconcile` may send SIGUSR1 now
        except StateError as problem:
            log.warning("Cannot say in the state store that SIGUSR1 is heard: %s", problem)
        self._watching.start(self.config, first=True)
        # Ready once set up; a long backlog is progress, reported in STATUS=.
        self.notifier.ready(starting_line(self._watching.mode, self.config))
        self._publish()

    def _check_watching(self) -> bool:
        """The watch checked (and re-armed); True when it was re-armed.  A change of mode is published soon."""
        watching = self._watching
        before = watching.mode
        rearmed = watching.check(self.config)
        if rearmed or watching.mode != before:
            self._reporting.publish_soon = True
        return rearmed

    def _loop(self) -> None:
        pipeline = self._pipeline
        reporting = self._reporting
        now = self.clock()
        due = _Due(poll=now, watch_check=now + DIRECTORY_CHECK_SECONDS)
        reporting.next_status = now + STATUS_EVERY_SECONDS
        while not self._stop_requested:
            if self._read_pass(due):
                continue  # the state became writable: read on without waiting
            now = self.clock()
            if reporting.take_status_due(now):
                self._publish()
            wake_at = next_wake(
                now,
                (
                    due.poll,
                    reporting.next_status,
                    reporting.ping_if_due(now),
                    self._watching.schedule.next_due(),
                    reporting.delivered_at(),
                    pipeline.next_deadline(),
                    due.watch_check,
                    pipeline.next_commit_at(),
                ),
            )
            self._wakeup.wait(wake_at - self.clock())

    def _read_pass(self, due: _Due) -> bool:
        """Reload, watch, read, close and commit what is due; True when reading is to go on at once."""
        pipeline = self._pipeline
        now = self.clock()
        if self._reload_requested:
            self._reload_requested = False
            self._reload()
        if self._reconcile_requested:
            self._reconcile_requested = False
            self._deliverer.reconcile_now()
        read = self._watching.take_event(now)
        if read or now >= due.watch_check:
            # On a file event too: it may be the link repointed or the directory removed.
            due.watch_check = now + DIRECTORY_CHECK_SECONDS
            if self._check_watching():
                due.poll = now  # read what the directory holds now at once
        if self._watching.schedule.take_due(now):
            read = True
        forced = now >= due.poll
        if forced:
            due.poll = now + self.config.poll_interval_seconds
            self._maintain()
        deadline = pipeline.next_deadline()
        closing = deadline is not None and now >= deadline
        # Before closing a session by processing time, read what is there:
        # after a pause (SIGSTOP, suspend) its events may be committed but
        # not yet read, and a file event may not have woken us yet.
        if forced or pipeline.should_read_on() or ((read or closing) and pipeline.changed()):
            drain(pipeline, self._deliverer, lambda: self._stop_requested, self._between_batches)
        pipeline.close_idle()
        pipeline.commit_due()
        return pipeline.should_read_on()

    def _between_batches(self) -> None:
        """During a long catch-up: keep pinging and reporting, stay responsive."""
        now = self.clock()
        self._reporting.ping_if_due(now)
        if self._reporting.take_batch_status_due(now):
            self._publish(backlog=True)

    def _maintain(self) -> None:
        """Once per poll tick: restart what died (the watch is checked every second)."""
        if not self._deliverer.alive:
            log.warning("The delivery thread was not running; starting it again")
            self._deliverer.start()

    def _reload(self) -> None:
        log.info("Reloading the configuration")
        self.notifier.reloading()
        config = _read_new_config(self._reload_config)
        if config is not None:
            watch_changed = config.watch != self.config.watch
            self._pipeline.apply_config(config)
            self._deliverer.apply_config(config)
            self.config = self._pipeline.config
            if self._on_reload is not None:
                self._on_reload(self.config)
            if watch_changed:
                self._watching.stop()
                self._watching.start(self.config, first=True)
            log.info("Configuration reloaded")
        self.notifier.ready(starting_line(self._watching.mode, self.config))

    def _shutdown(self) -> None:
        try:
            self.notifier.stopping()
            self._watching.stop()
            if self._runner is not None:
                if not self._runner.shutdown(STOP_GRACE_SECONDS):
                    log.warning("A delivery was still in flight at exit; it will be sent again with the same key")
                self._publish(running=False)
                self._runner.close()
            log.info("Workflow learner stopped")
        finally:
            self.lock.release()

    # -- reporting ---------------------------------------------------------------

    def _publish(self, running: bool = True, backlog: bool = False) -> None:
        assert self._runner is not None, "the state store is opened before anything reads"
        self._reporting.publish(self.config, self._runner, self._watching, running, backlog)
