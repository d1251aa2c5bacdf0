"""The wiring shared by the service and `backfill`: one pipeline, its delivery thread, one shutdown handover.

The guarantee: whoever runs the pipeline hands the delivery thread the same
two callbacks (a commit that filled the outbox wakes it; sessions settled
without sending go to it for the history), and at shutdown no such session
is lost: what the stopped thread had not recorded yet is recorded here, after
the last commit and before the stores close.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from .config import Config
from .delivery import Deliverer
from .pipeline import Pipeline


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
