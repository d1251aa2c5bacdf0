"""The wiring shared by the service and `backfill`: one pipeline, its delivery thread, one shutdown handover.

The guarantee: whoever runs the pipeline hands the delivery thread the same
two callbacks (a commit that filled the outbox wakes it; sessions settled
without sending go to it for the history), and at shutdown no such session
is lost: what the stopped thread had not recorded yet is recorded here, after
the last commit and before the stores close.

While the pipeline drains a backlog the delivery thread holds its POSTs
(`drain`): the reader has the GIL to itself, the sessions wait in the outbox.

And when db_path changed since the last run, the sessions left open in the
previous database (a session spanning the stop is rebuilt by reading its rows
again, which a different database no longer holds) are read to its end and
closed first, so that nothing read from it is lost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable, List, Optional

from .config import Config
from .core.fates import CloseReason, Unavailability
from .core.sessions import ClosedSession
from .database_identity import holds_rows_read
from .delivery import Deliverer
from .pipeline import Pipeline
from .storage.state import StateStore

log = logging.getLogger(__name__)

# state.db's meta key for the events database the position belongs to.
DB_PATH_META = "db_path"
# A previous database that is locked is tried this often, a second apart, before it is given up.
FINISH_TRIES = 10
FINISH_WAIT_SECONDS = 1.0


class Runner:
    """Builds the Deliverer and the Pipeline from a Config; start(), shutdown(grace), close()."""

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.monotonic,
        on_delivered: Optional[Callable[[], None]] = None,
    ):
        """Raises StateError (or OSError) when the state store cannot be opened."""
        self.deliverer = Deliverer.from_config(config, on_progress=on_delivered)
        finish_previous_database(config, self.deliverer.hand_over)
        self.pipeline = Pipeline(config, clock=clock, on_outbox=self.deliverer.wake, on_unsent=self.deliverer.hand_over)

    def start(self) -> None:
        """Start the delivery thread."""
        self.deliverer.start()

    def shutdown(self, grace: float) -> bool:
        """Stop the delivery thread (a POST in flight gets `grace` seconds), then commit.

        In that order, no POST starts after the stop was asked for, so none
        is cut off at exit (it would be sent again, and counted twice).
        Stopping records what the thread had been handed and not recorded
        yet; what the last commit settles without sending is recorded at
        once.  True if the thread stopped within the grace; the stores stay
        open (close() closes them) so that a last status can still be read.
        """
        stopped = self.deliverer.stop(grace)
        self.pipeline.commit()
        return stopped

    def close(self) -> None:
        self.pipeline.close()
        self.deliverer.close()


def drain(
    pipeline: Pipeline,
    deliverer: Deliverer,
    should_stop: Callable[[], bool] = lambda: False,
    between_batches: Optional[Callable[[], None]] = None,
) -> bool:
    """`pipeline.drain`, the delivery thread holding its POSTs while it reads a backlog (BacklogHold).

    A batch read full means more wait: the hold begins there and ends with the drain.
    """

    def next_batch() -> None:
        deliverer.reading(True)
        if between_batches is not None:
            between_batches()

    try:
        return pipeline.drain(should_stop, next_batch)
    finally:
        deliverer.reading(False)


def finish_previous_database(config: Config, on_unsent: Callable[[List[ClosedSession]], None]) -> None:
    """db_path changed since the last run: read the previous database to its end and close what is open there.

    Not when the new path names the same history (another name of the file,
    or a copy of it holding the rows read): that is read on, and its open
    sessions go on.  Then state.db names the new path.  A previous database
    that cannot be read (gone; still locked after FINISH_TRIES) is said, and
    what was open in it is lost with it.
    """
    store = StateStore(config.state_dir)
    try:
        recorded = store.meta_value(DB_PATH_META)
        position = store.position()
        if recorded is not None and Path(recorded) != config.db_path and position.replay_until > 0:
            if _same_file(Path(recorded), config.db_path) or holds_rows_read(config.db_path, position):
                log.info(
                    "db_path changed from %s to %s, which holds the history read: read on", recorded, config.db_path
                )
            else:
                _finish(config, Path(recorded), on_unsent)
        if recorded is None or Path(recorded) != config.db_path:
            store.note(DB_PATH_META, str(config.db_path))
    finally:
        store.close()


def _same_file(previous: Path, path: Path) -> bool:
    try:
        return os.path.samefile(previous, path)
    except OSError:
        return False


def _finish(config: Config, previous: Path, on_unsent: Callable[[List[ClosedSession]], None]) -> None:
    pipeline = Pipeline(dataclasses.replace(config, db_path=previous), on_unsent=on_unsent)
    try:
        for attempt in range(FINISH_TRIES):
            if pipeline.drain():
                break
            unavailable = pipeline.unavailable
            if unavailable is None or unavailable.kind != Unavailability.LOCKED or attempt == FINISH_TRIES - 1:
                log.warning(
                    "db_path changed from %s, which cannot be read now (%s): the sessions open there at the last "
                    "stop are lost",
                    previous,
                    pipeline.problem(),
                )
                return
            time.sleep(FINISH_WAIT_SECONDS)  # its writer holds it a moment: a transaction, a checkpoint
        open_sessions = pipeline.tracker.open_count
        pipeline.close_all(CloseReason.END)
        if pipeline.commit():
            log.info(
                "db_path changed from %s: read it to its end and closed the %d sessions open there",
                previous,
                open_sessions,
            )
    finally:
        pipeline.close()
