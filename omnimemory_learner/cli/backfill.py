"""`backfill`: learn from the history already in the database, then exit.

It takes the same lock and state store as the service, so running one after
the other never sends a session twice, and it refuses while the service runs.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from ..config import Config
from ..core.fates import CloseReason, Fate
from ..events import Unavailable
from ..logs import setup_logging
from ..runner import Runner, drain
from ..storage.lock import AlreadyRunning, InstanceLock
from ..storage.state import StateError
from .exits import EX_CANTCREAT, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from .output import Progress, echo, error

log = logging.getLogger(__name__)


def backfill(config: Config, until_delivered_timeout: Optional[float]) -> int:
    setup_logging(config.log_level, config.log_file)
    lock = InstanceLock(config.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as problem:
        error(
            f"the service is running ({problem}); it is already learning from the "
            "database. Stop it first to backfill by hand."
        )
        return EX_TEMPFAIL
    except OSError as problem:
        error(f"cannot lock the state directory: {problem}")
        return EX_CANTCREAT
    try:
        runner = Runner(config)
    except StateError as problem:
        lock.release()
        error(str(problem))
        return EX_CANTCREAT
    try:
        return _learn(config, runner, until_delivered_timeout)
    finally:
        runner.shutdown(2.0)
        runner.close()
        lock.release()


def _learn(config: Config, runner: Runner, until_delivered_timeout: Optional[float]) -> int:
    """Read everything, close every session, and wait until the API took them (or the timeout)."""
    pipeline, deliverer = runner.pipeline, runner.deliverer
    progress = Progress()
    try:
        start = pipeline.read_after
        total = pipeline.backlog()
    except Unavailable as problem:
        error(str(problem))
        return EX_UNAVAILABLE
    runner.start()

    def learned_and_pending():
        counters = pipeline.state.counters()
        return counters.get("patterns_learned", 0), pipeline.state.status_counts().get(Fate.PENDING, 0)

    def show(force=False):
        learned, pending = learned_and_pending()
        progress.show(pipeline.read_after - start, total, learned, pending, force)

    if not drain(pipeline, deliverer, between_batches=show):
        error(str(pipeline.problem()))
        return EX_UNAVAILABLE
    pipeline.close_all(CloseReason.END)
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
            last_error = (pipeline.state.meta_value("last_error") or " none").partition(" ")[2]  # "<time> <error>"
            error(
                f"the procedural API at {config.api_url} did not take every session "
                f"in {until_delivered_timeout:g} s; {pending} session(s) stay pending for the service "
                f"(last error: {last_error})"
            )
            return EX_UNAVAILABLE
        if not deliverer.alive:
            deliverer.start()
        show()
        time.sleep(0.05)
    show(force=True)
    progress.done()
    learned, _ = learned_and_pending()
    echo(f"Backfill done: {pipeline.read_after - start} events read, outbox empty, {learned} patterns learned in all.")
    return EX_OK
