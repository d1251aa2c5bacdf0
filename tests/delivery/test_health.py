"""delivery/health.py, pure: every transition of the API's health, and the parking rule at its boundaries."""

from __future__ import annotations

import random
from typing import NamedTuple

import pytest

from omnimemory_learner.delivery.health import DOWN, HEALTHY, SUSPECT, Backoff, Failure, Health


class Session(NamedTuple):
    id: int
    failures: int = 0


class Ceiling(random.Random):
    """Jitter at its top: every delay is its ceiling, so the figures are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def health(cap: float = 8.0, limit: int = 3, limit_seconds: float = 10.0) -> Health:
    return Health(cap, limit, limit_seconds, rng=Ceiling())


def test_it_starts_healthy_with_nothing_held():
    h = health()
    assert h.state is HEALTHY
    assert (h.down_since, h.retry_at, h.suspect, h.tried, h.backoff.failures) == (None, None, None, {}, 0)


def test_unreachable_goes_down_and_backs_off_further_each_time():
    h = health()
    assert h.unreachable(100.0) == 1.0
    assert (h.state, h.down_since, h.retry_at) == (DOWN, 100.0, 101.0)
    assert h.unreachable(101.0) == 2.0 and h.unreachable(103.0) == 4.0
    assert h.unreachable(107.0) == 8.0 and h.unreachable(115.0) == 8.0  # capped
    assert (h.down_since, h.retry_at) == (100.0, 123.0)  # down since the first
    assert h.suspect is None and h.tried == {}  # nothing held against a session


def test_one_failure_makes_the_api_suspect_and_the_next_session_goes_on():
    h = health()
    failed = h.failed(Session(1, failures=2), "HTTP 500: x", 100.0)
    assert failed.wait is None  # go on with the next session
    assert failed.retry_at == 100.0 + 4.0  # its own backoff: after 2 failures of its own
    assert h.state is SUSPECT and h.suspect == Failure(Session(1, 2), "HTTP 500: x", 100.0)
    assert h.passed_over(1) and not h.passed_over(2)
    assert (h.down_since, h.retry_at, h.backoff.failures) == (None, None, 0)


def test_a_second_failure_in_a_row_puts_the_api_down():
    h = health()
    h.failed(Session(1), "first", 100.0)
    failed = h.failed(Session(2), "second", 101.0)
    assert failed.wait == 1.0 and failed.retry_at == 102.0
    assert (h.state, h.down_since, h.retry_at) == (DOWN, 101.0, 102.0)
    assert h.suspect is not None and h.suspect.session.id == 2  # the later one waits for judgement
    assert list(h.tried) == [1, 2]


@pytest.mark.parametrize("asked, wait", [(3.0, 3.0), (0.0, 0.001), (3600.0, 8.0)])
def test_a_failure_asking_to_wait_puts_the_api_down_for_what_it_asked_capped(asked, wait):
    h = health()
    failed = h.failed(Session(1), "HTTP 503: not ready", 100.0, asked_wait=asked)
    assert failed.wait == wait and h.state is DOWN and h.retry_at == 100.0 + wait
    assert h.backoff.failures == 0  # one failure: not yet the API's backoff


def test_asking_to_wait_after_a_failure_is_at_least_the_backoff():
    h = health()
    h.failed(Session(1), "first", 100.0)
    assert h.failed(Session(2), "second", 100.0, asked_wait=0.0).wait == 1.0  # "retry now" is a floor only
    assert h.backoff.failures == 1


def test_while_down_a_first_failure_goes_on_with_the_next_session():
    h = health()
    h.unreachable(100.0)
    failed = h.failed(Session(1), "HTTP 500", 101.0)
    assert failed.wait is None and h.state is DOWN and h.retry_at == 101.0  # the wait asked before stands
    assert h.failed(Session(2), "HTTP 500", 102.0).wait == 2.0  # two in a row: the API's backoff again


def test_unreachable_while_suspect_keeps_the_suspect_for_judgement():
    h = health()
    h.failed(Session(1), "HTTP 500", 100.0)
    h.unreachable(101.0)
    assert h.state is DOWN and h.suspect is not None and h.suspect.session.id == 1
    settled = h.settled(2, 130.0)
    assert settled.blamed is not None and settled.blamed.session.id == 1
    assert settled.excused == [] and settled.down_for == 29.0


def test_settled_by_another_session_blames_the_suspect_and_excuses_the_rest():
    h = health()
    h.failed(Session(1), "first", 100.0)
    h.failed(Session(2), "second", 101.0)  # down: 1 is excused, 2 is the suspect
    h.failed(Session(3), "third", 103.0)  # down still: 2 excused, 3 the suspect
    settled = h.settled(4, 110.0)
    assert settled.blamed == Failure(Session(3), "third", 103.0)
    assert settled.excused == [1, 2] and settled.down_for == 9.0
    assert h.state is HEALTHY
    assert (h.down_since, h.retry_at, h.suspect, h.tried, h.backoff.failures) == (None, None, None, {}, 0)


def test_settled_by_the_suspect_session_itself_blames_nobody():
    h = health()
    h.failed(Session(1), "once", 100.0)
    settled = h.settled(1, 105.0)
    assert (settled.blamed, settled.excused, settled.down_for) == (None, [], None)
    assert h.state is HEALTHY


def test_settled_while_healthy_changes_nothing():
    h = health()
    settled = h.settled(1, 100.0)
    assert (settled.blamed, settled.excused, settled.down_for) == (None, [], None) and h.state is HEALTHY


def test_start_over_lets_every_session_probe_again_without_changing_the_state():
    h = health()
    h.failed(Session(1), "x", 100.0)
    h.failed(Session(2), "y", 100.0)
    h.start_over()
    assert not h.passed_over(1) and not h.passed_over(2) and h.state is DOWN and h.suspect is not None


def test_suspect_is_entered_from_healthy_only():
    h = health()
    h.unreachable(100.0)
    with pytest.raises(AssertionError, match="SUSPECT is entered from HEALTHY only"):
        h._change(SUSPECT, 101.0)


def test_configure_takes_a_new_cap_and_new_limits():
    h = health(cap=8.0)
    h.configure(0.5, 2, 1.0)
    assert (h.backoff.cap, h.limit, h.limit_seconds) == (0.5, 2, 1.0)
    assert h.unreachable(100.0) == 0.5


# -- the parking rule: `limit` failures of its own AND at least `limit_seconds` between the first and the last --


def blame(recorded, at, limit=3, limit_seconds=10.0, failures=2):
    return health(limit=limit, limit_seconds=limit_seconds).blame(
        Failure(Session(7, failures), "HTTP 500: boom", at), recorded
    )


def test_below_the_limit_of_failures_it_backs_off_on_its_own():
    b = blame((1, 100.0), 200.0)  # 2 failures over 100 s: enough time, too few failures
    assert (b.failures, b.first_failed_at, b.parked, b.span) == (2, 100.0, False, 100.0)
    assert b.next_attempt_at == 200.0 + 8.0  # its backoff after failures + 1 = 3 (1 * 2**3)
    assert b.error == "HTTP 500: boom"


def test_at_the_limit_of_failures_but_short_of_the_time_it_is_not_parked():
    b = blame((2, 100.0), 109.999)
    assert (b.failures, b.parked) == (3, False) and b.next_attempt_at is not None


def test_at_the_limit_of_failures_and_of_the_time_it_is_parked():
    b = blame((2, 100.0), 110.0)
    assert (b.failures, b.first_failed_at, b.parked, b.span, b.next_attempt_at) == (3, 100.0, True, 10.0, None)
    assert b.error == "failed 3 times over 10 s while the API took other sessions; last: HTTP 500: boom"


def test_past_both_limits_it_is_parked():
    assert blame((9, 0.0), 5000.0).parked


def test_a_first_failure_of_its_own_starts_the_span_now():
    b = blame((0, None), 300.0)
    assert (b.failures, b.first_failed_at, b.span, b.parked) == (1, 300.0, 0.0, False)
    assert blame((0, None), 300.0, limit=1, limit_seconds=0.0).parked  # both limits met at once


def test_backoff_delays_are_half_fixed_half_random_and_capped():
    backoff = Backoff(cap=8.0, first=1.0, rng=random.Random(3))
    for failures in range(10):
        ceiling = min(8.0, 2.0**failures)
        assert ceiling / 2 <= backoff.delay_after(failures) <= ceiling
    assert Backoff(cap=0.5, first=1.0).first == 0.5
