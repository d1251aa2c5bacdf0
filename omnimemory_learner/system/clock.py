"""The processing-time clock: seconds that keep counting while the machine sleeps.

Sessions close after `session_idle_minutes` of processing time.  A clock that
stops during a suspend (Python's `time.monotonic`: CLOCK_MONOTONIC on Linux,
mach_absolute_time on macOS) would, after a night asleep, keep a session open
for the rest of its idle threshold as if no time had passed, and the next
morning's first events would join it.  So:

* Linux: CLOCK_BOOTTIME, CLOCK_MONOTONIC plus the time spent suspended.
* macOS: CLOCK_MONOTONIC_RAW, which Apple's clock_gettime(3) documents as
  mach_continuous_time in nanoseconds: it increments while the system is
  asleep (libc++'s steady_clock moved to it for that reason, LLVM D74341).
  CLOCK_UPTIME_RAW, mach_absolute_time, is the one that stops while asleep.
* Anywhere else, or if the clock is refused: `time.monotonic`.

Every candidate is monotonic, so a wall-clock jump never moves a deadline.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Callable, Optional


def _clock_id(platform: str) -> Optional[int]:
    if platform.startswith("linux"):
        return getattr(time, "CLOCK_BOOTTIME", None)
    if platform == "darwin":
        return getattr(time, "CLOCK_MONOTONIC_RAW", None)
    return None


def processing_clock_for(platform: str) -> Callable[[], float]:
    """The clock to use on `platform` (sys.platform's spelling)."""
    clock_id = _clock_id(platform)
    if clock_id is None:
        return time.monotonic
    try:
        time.clock_gettime(clock_id)
    except OSError:  # a kernel or sandbox that refuses the clock
        return time.monotonic
    return functools.partial(time.clock_gettime, clock_id)


processing_clock: Callable[[], float] = processing_clock_for(sys.platform)
"""Seconds of processing time, counting suspends; only differences mean anything."""
