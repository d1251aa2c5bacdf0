"""The processing-time clock keeps counting through a suspend."""

from __future__ import annotations

import sys
import time

import pytest

from omnimemory_learner.config import load_config
from omnimemory_learner.service import RETRY_SECONDS, Service, next_wake
from omnimemory_learner.system.clock import processing_clock, processing_clock_for


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CLOCK_BOOTTIME is Linux's")
def test_linux_reads_clock_boottime():
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    now = processing_clock()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= now <= after
    # Boot time includes every suspend since boot: never behind the monotonic clock.
    assert processing_clock() >= time.monotonic() - 0.001


def test_each_platform_gets_its_continuous_clock():
    if hasattr(time, "CLOCK_MONOTONIC_RAW"):
        darwin = processing_clock_for("darwin")
        assert getattr(darwin, "args", None) == (time.CLOCK_MONOTONIC_RAW,)
    if hasattr(time, "CLOCK_BOOTTIME"):
        assert getattr(processing_clock_for("linux"), "args", None) == (time.CLOCK_BOOTTIME,)
    assert processing_clock_for("win32") is time.monotonic
    assert processing_clock_for("freebsd14") is time.monotonic


def test_the_service_runs_its_pipeline_on_the_processing_clock(tmp_path):
    config = load_config(
        None,
        {
            "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path / "state"),
            "OMNIMEMORY_LEARNER_DB_PATH": str(tmp_path / "db" / "memory_data.db"),
        },
        {},
    )
    service = Service(config)
    assert service._open_state()
    try:
        assert service.pipeline is not None and service.pipeline.clock is processing_clock
    finally:
        service.pipeline.close()
        service.lock.release()


@pytest.mark.parametrize(
    "candidates", [(5.0, None, 12.0), (None, None), (-100.0, 3.0), (1.0, 2.0, 10.0), (12.0, 15.0), (10.5, 3.0)]
)
def test_the_next_wake_up_is_never_in_the_past(candidates):
    now = 10.0
    wake = next_wake(now, candidates)
    assert wake > now
    times = [t for t in candidates if t is not None]
    future = [t for t in times if t > now]
    # A time already past (or none at all) means "look again after RETRY_SECONDS", not "now".
    retry = [now + RETRY_SECONDS] if len(future) < len(times) or not times else []
    assert wake == min(future + retry)
