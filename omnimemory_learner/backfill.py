"""`backfill`: learn from the history already in the database, then exit.

It takes the same lock and state store as the service, so running one after
the other never sends a session twice, and it refuses while the service runs.
"""

import logging
import sys
import time
from typing import Optional

from .config import Config
from .events import Unavailable
from .pipeline import Pipeline
from .state import AlreadyRunning, InstanceLock, StateError

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 5.0


class Progress:
    """A redrawn line on a terminal; a log line every few seconds otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.started = time.monotonic()
        self._last = float("-inf")

    def show(self, read: int, total: int, learned: int, pending: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else PROGRESS_EVERY_SECONDS):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = read / elapsed
        left = max(0, total - read)
        eta = f"{left / rate:.0f}s left" if rate > 0 and left else "reading done"
        line = (f"{read}/{total} events read ({rate:,.0f}/s, {eta}), "
                f"{learned} sessions learned, {pending} pending")
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        else:
            log.info("Backfill: %s", line)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def backfill(config: Config, until_delivered_timeout: Optional[float]) -> int:
    from .cli import EX_CANTCREAT, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
    from .logs import setup_logging

    setup_logging(config.log_level, config.log_file)
    lock = InstanceLock(config.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as error:
        print(f"omnimemory-learner: the service is running ({error}); it is already learning from the "
              "database. Stop it first to backfill by hand.", file=sys.stderr)
        return EX_TEMPFAIL
    except OSError as error:
        print(f"omnimemory-learner: cannot lock the state directory: {error}", file=sys.stderr)
        return EX_CANTCREAT
    try:
        pipeline = Pipeline(config)
    except StateError as error:
        lock.release()
        print(f"omnimemory-learner: {error}", file=sys.stderr)
        return EX_CANTCREAT
    progress = Progress()
    try:
        try:
            start = pipeline.read_after
            total = max(0, pipeline.reader.head() - start)
        except Unavailable as problem:
            print(f"omnimemory-learner: {problem}", file=sys.stderr)
            return EX_UNAVAILABLE
        pipeline.deliverer.start()

        def learned_and_pending():
            counters = pipeline.state.counters()
            return counters.get("patterns_learned", 0), pipeline.state.status_counts().get("pending", 0)

        def show(force=False):
            learned, pending = learned_and_pending()
            progress.show(pipeline.read_after - start, total, learned, pending, force)

        if not pipeline.drain(between_batches=show, force_backlog=True):
            print(f"omnimemory-learner: {pipeline.unavailable or pipeline.commit_failing}", file=sys.stderr)
            return EX_UNAVAILABLE
        pipeline.close_all("end")
        if not pipeline.commit():
            return EX_CANTCREAT
        show(force=True)
        deadline = None if until_delivered_timeout is None else time.monotonic() + until_delivered_timeout
        while True:
            learned, pending = learned_and_pending()
            if pending == 0:
                break
            if deadline is not None and time.monotonic() >= deadline:
                progress.done()
                print(f"omnimemory-learner: the procedural API at {config.api_url} did not take every session "
                      f"in {until_delivered_timeout:g} s; {pending} session(s) stay pending for the service "
                      f"(last error: {pipeline.deliverer.last_error})", file=sys.stderr)
                return EX_UNAVAILABLE
            if not pipeline.deliverer.alive:
                pipeline.deliverer.start()
            show()
            time.sleep(0.05)
        show(force=True)
        progress.done()
        learned, _ = learned_and_pending()
        print(f"Backfill done: {pipeline.read_after - start} events read, outbox empty, "
              f"{learned} patterns learned in all.")
        return EX_OK
    finally:
        pipeline.deliverer.stop(2.0)
        pipeline.close()
        lock.release()
