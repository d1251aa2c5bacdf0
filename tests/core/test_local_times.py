"""Naive local timestamps across DST changes (validate_rows), under TZ=America/New_York.

The original writer stores `datetime.now().isoformat()`: local time without an offset.  In the
hour a fall-back repeats, one such text names two instants an hour apart; it is resolved by
continuity with the previous event.  Times in the spring-forward gap do not exist.
"""

import datetime as dt
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnimemory_learner.events import LocalTimeContext, validate_rows

PAIRS = {"code_edit": ("edit_code", "code_edit")}
# 2026-11-01 06:00 UTC: New York's clocks go from 02:00 EDT back to 01:00 EST.
FALL_BACK = 1793512800.0
# 2026-03-08 07:00 UTC: from 02:00 EST forward to 03:00 EDT.
SPRING_FORWARD = 1772953200.0


@pytest.fixture
def new_york():
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def naive(seconds):
    return dt.datetime.fromtimestamp(seconds).isoformat()


def rows_for(times, ids=("a",)):
    return [(rowid, naive(t), "code_edit", ids[rowid % len(ids)]) for rowid, t in enumerate(times, 1)]


def read(rows, cuts=()):
    context = LocalTimeContext()
    events = []
    start = 0
    for cut in sorted(set(cuts)) + [len(rows)]:
        events += validate_rows(rows[start:cut], PAIRS, context)[0]
        start = cut
    return [event[3] for event in events]


def test_the_transitions_are_where_the_test_says(new_york):
    assert naive(FALL_BACK - 1) == "2026-11-01T01:59:59" and naive(FALL_BACK) == "2026-11-01T01:00:00"
    assert naive(SPRING_FORWARD - 1) == "2026-03-08T01:59:59" and naive(SPRING_FORWARD) == "2026-03-08T03:00:00"


def test_the_repeated_hour_is_read_as_it_happened(new_york):
    times = [FALL_BACK - 5400 + 20 * k for k in range(540)]  # 00:30 EDT to 02:30 EST, every 20 s
    rows = rows_for(times, ids=("a", "b", "c"))
    assert read(rows) == times
    assert read(rows, cuts=range(0, 540, 7)) == times  # one context across batches: the same
    # Without continuity (each row read alone) the second 01:xx is taken for the first: the test can fail.
    alone = [validate_rows([row], PAIRS)[0][0][3] for row in rows]
    assert sum(1 for a, t in zip(alone, times) if a != t) == 180


def test_a_source_writing_late_across_the_repeated_hour(new_york):
    # Source b writes each of its events 12 s late, so rows are out of event-time order.
    times = []
    for k in range(400):
        t = FALL_BACK - 3600 + 15 * k
        times += [t, t - 12]
    rows = [(rowid, naive(t), "code_edit", "ab"[rowid % 2]) for rowid, t in enumerate(times)]
    assert read(rows, cuts=range(0, 800, 33)) == times


def test_a_row_dated_years_ahead_does_not_mislead_the_next_one(new_york):
    times = [FALL_BACK - 60, FALL_BACK + 10, FALL_BACK + 20]  # 01:59 EDT, then 01:00:10 EST ...
    rows = rows_for(times)
    rows.insert(2, (99, "2036-07-01T12:00:00", "code_edit", "z"))  # ... and one row ten years ahead
    assert [t for t in read(rows) if t < FALL_BACK + 3600] == times


def test_the_spring_forward_gap(new_york):
    times = [SPRING_FORWARD - 1800 + 20 * k for k in range(180)]  # 01:30 EST to 03:30 EDT
    assert read(rows_for(times)) == times
    # 02:30 does not exist that night: read with the offset before the change (02:30 EST).
    gap = validate_rows([(1, "2026-03-08T02:30:00", "code_edit", "a")], PAIRS)[0]
    assert gap[0][3] == SPRING_FORWARD + 1800


def test_offsets_and_plain_hours_are_untouched(new_york):
    rows = [
        (1, "2026-11-01T01:30:00+00:00", "code_edit", "a"),
        (2, "2026-11-01T01:30:00-05:00", "code_edit", "a"),
        (3, "2026-07-01T12:00:00", "code_edit", "a"),
        (4, "2026-07-01T12:00:01.500000", "code_edit", "a"),
    ]
    assert read(rows) == [1793496600.0, 1793514600.0, 1782921600.0, 1782921601.5]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 900), min_size=1, max_size=120),
    st.lists(st.integers(0, 120), max_size=10),
    st.floats(-9000, -3601),
)
def test_any_walk_across_the_fall_back_with_steps_under_half_an_hour(steps, cuts, start):
    """From before the repeated hour on, continuity holds whenever consecutive rows are within a
    quarter of an hour (a stream starting inside that hour has nothing to be continuous with)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        times = []
        t = float(int(FALL_BACK + start))
        for step in steps:
            t += float(int(step))
            times.append(t)
        assert read(rows_for(times, ids=("a", "b")), cuts) == times
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()
