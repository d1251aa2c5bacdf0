"""SessionTracker.low_water (kept in a heap, asked at every batch) against the plain minimum over the open sessions.

Every way a session leaves: idle by event time, by processing time, the
chunk limit, close_on, eviction by the cap, close_above, close_all; and
renumber.  The rowids are fed out of order too (the tracker is told rowid
order, but nothing in low_water may rely on it).
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from omnimemory_learner.core.sessions import SessionTracker

IDLE = 300.0
IDS = ["a", "b", "c", "d", "e"]
PAIR_KINDS = [("edit_code", "code_edit"), ("commit", "git_commit"), ("run_tests", "test_run")]

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("feed"),
            st.lists(
                st.tuples(
                    st.integers(1, 400),
                    st.sampled_from(IDS),
                    st.sampled_from(PAIR_KINDS),
                    st.sampled_from([0.0, 1.0, IDLE, IDLE * 2]),
                ),
                max_size=12,
            ),
        ),
        st.tuples(st.just("close_idle"), st.floats(0, 2000)),
        st.tuples(st.just("close_above"), st.integers(0, 400)),
        st.tuples(st.just("renumber"), st.integers(0, 50)),
        st.tuples(st.just("close_all"), st.none()),
    ),
    max_size=30,
)


def plain_low_water(tracker):
    firsts = [session.first_rowid for session in tracker._open.values()]
    return min(firsts) if firsts else None


@settings(max_examples=400, deadline=None)
@given(plan=steps, max_open=st.integers(1, 4), max_commands=st.integers(1, 5))
def test_low_water_is_the_least_first_rowid_of_the_open_sessions(plan, max_open, max_commands):
    tracker = SessionTracker(IDLE, min_commands=1, max_commands=max_commands, max_open=max_open, close_on=["commit"])
    clock, now = 1_700_000_000.0, 0.0
    for action, argument in plan:
        if action == "feed":
            events = []
            for rowid, session_id, pair, gap in argument:
                clock += gap
                events.append((rowid, session_id, pair, clock))
            now += 1.0
            tracker.feed(events, now)
        elif action == "close_idle":
            tracker.close_idle(now + argument)
        elif action == "close_above":
            tracker.close_above(argument, "rows_deleted")
        elif action == "renumber":
            tracker.renumber(argument)
        else:
            tracker.close_all()
        assert tracker.low_water() == plain_low_water(tracker), plan
        assert tracker.low_water() == plain_low_water(tracker)  # asking again changes nothing


def test_the_heap_stays_bounded_while_one_session_stays_open():
    """A session open for the whole catch-up: the entries of the thousands closed after it do not pile up."""
    tracker = SessionTracker(IDLE, min_commands=1, max_commands=2)
    tracker.feed([(1, "long", PAIR_KINDS[0], 0.0)], 0.0)
    for rowid in range(2, 20_000, 2):
        tracker.feed([(rowid, f"s{rowid}", PAIR_KINDS[0], 0.0), (rowid + 1, f"s{rowid}", PAIR_KINDS[0], 0.0)], 0.0)
        assert tracker.low_water() == 1
    assert tracker.open_count == 1 and len(tracker._firsts) <= 2 * tracker.open_count + 64
