"""delivery/doubts.py and relearn's Plan: what an unanswered POST and a listing that misses sessions may be taken for.

Real state stores; the answers of GET /patterns are made as parse_patterns reads them.
"""

from __future__ import annotations

import json
import time

from test_relearn import session

from omnimemory_learner.core.evidence import OutcomeRule
from omnimemory_learner.core.fates import Verdict
from omnimemory_learner.core.reconcile import Taught, expected_pattern_id, parse_patterns
from omnimemory_learner.delivery.doubts import SETTLE_AFTER_SECONDS, UNANSWERED_META, UNREADABLE_LIMIT, Doubts
from omnimemory_learner.delivery.learn_api import Attempt, PatternsRead, encoded_learn_body
from omnimemory_learner.delivery.relearn import Plan
from omnimemory_learner.storage.state import StateStore

NAMES = ["open_file", "edit_code", "save_file"]
PATTERN = expected_pattern_id(NAMES)


def unanswered(pending):
    body, names = encoded_learn_body(pending)
    return Attempt(Verdict.RETRY, "timed out", unanswered=True, body=body, names=names, commands=len(names))


def listing(counts):
    entries = [{"pattern_id": p, "success_count": s, "failure_count": f} for p, (s, f) in counts.items()]
    return PatternsRead(parse_patterns({"patterns": entries, "total": len(entries)}))


def test_two_copies_of_one_session_in_doubt_are_settled_each_once(tmp_path):
    # One content key, two outbox rows (a restored database read again): one landed, the other did not.
    store, clock = StateStore(tmp_path), [1000.0]
    doubts = Doubts(clock=lambda: clock[0])
    first, second = session(1, NAMES), session(2, NAMES)._replace(content_key="key1")
    doubts.add(first, unanswered(first), store)
    doubts.add(second, unanswered(second), store)
    settled = doubts.settle([], listing({PATTERN: (1, 0)}), 1000.0 + SETTLE_AFTER_SECONDS + 1, 10.0)
    assert [landed[0].id for landed in settled.landed] == [1] and settled.released == [2]
    assert len(doubts) == 0 and settled.wait is None
    assert json.loads(store.meta_value(UNANSWERED_META)) == {"1": 1000.0, "2": 1000.0}  # saved by the caller after
    store.close()


def test_not_landed_is_believed_only_of_a_post_older_than_the_settling_time(tmp_path):
    # A busy server may learn a POST after it answered a GET: a GET soon after shows nothing yet.
    store, clock = StateStore(tmp_path), [1000.0]
    doubts = Doubts(clock=lambda: clock[0])
    pending = session(1, NAMES)
    doubts.add(pending, unanswered(pending), store)
    early = doubts.settle([], listing({}), 1005.0, 2.0)
    assert early.released == [] and early.landed == [] and 1 in doubts
    assert early.wait == SETTLE_AFTER_SECONDS - 5.0
    # Three request timeouts when they are longer.
    assert doubts.settle([], listing({}), 1000.0 + SETTLE_AFTER_SECONDS + 1, 20.0).released == []
    # Landed is believed at once.
    assert [s.id for s, _, _ in doubts.settle([], listing({PATTERN: (1, 0)}), 1001.0, 2.0).landed] == [1]
    doubts.add(pending, unanswered(pending), store)
    assert doubts.settle([], listing({}), 1000.0 + SETTLE_AFTER_SECONDS, 2.0).released == [1]
    store.close()


def test_ours_already_counted_are_not_taken_for_the_doubt(tmp_path):
    store = StateStore(tmp_path)
    doubts = Doubts(clock=lambda: 0.0)
    pending = session(1, NAMES)
    doubts.add(pending, unanswered(pending), store)
    taught = [Taught(PATTERN, "success", 1.0, "other-key")]  # the history: one of ours there already
    settled = doubts.settle(taught, listing({PATTERN: (1, 0)}), SETTLE_AFTER_SECONDS, 1.0)
    assert settled.landed == [] and settled.released == [1]
    store.close()


def test_unreadable_answers_in_a_row_send_the_doubts_again_and_a_readable_one_resets_the_count(tmp_path):
    store = StateStore(tmp_path)
    doubts = Doubts(clock=lambda: 0.0)
    pending = session(1, NAMES)
    doubts.add(pending, unanswered(pending), store)
    for _ in range(UNREADABLE_LIMIT - 1):
        assert doubts.unreadable_answer(store) == []
    doubts.settle([], listing({}), 1.0, 1.0)  # readable (too soon to decide): the count starts again
    assert [doubts.unreadable_answer(store) for _ in range(UNREADABLE_LIMIT - 1)] == [[]] * (UNREADABLE_LIMIT - 1)
    assert doubts.unreadable_answer(store) == [1] and len(doubts) == 0
    assert json.loads(store.meta_value(UNANSWERED_META)) == {}
    store.close()


def test_a_saved_doubt_whose_session_is_gone_is_not_loaded(tmp_path):
    store = StateStore(tmp_path)
    store.note(UNANSWERED_META, json.dumps({"41": time.time(), "x": 1, "42": "later"}))
    assert Doubts().load(store, False, OutcomeRule()) == 0
    store.note(UNANSWERED_META, "[not a mapping")
    assert Doubts().load(store, False, OutcomeRule()) == 0
    store.close()


# -- Plan: a listing that does not show what was taught again ------------------------------------


def test_a_listing_that_misses_what_was_taught_again_is_not_believed_twice():
    plan = Plan()
    assert plan.not_shown({"a": (1, 0)}) == set()  # the first read: nothing taught yet
    plan.taught[("b", "success")] += 2
    plan.taught[("a", "failure")] += 1
    # "a" shows the failure taught; "b" is not listed at all (past the first page).
    assert plan.not_shown({"a": (1, 1)}) == {"b"} and plan.unlisted == {"b"}
    plan.taught[("b", "success")] += 1
    assert plan.not_shown({"a": (1, 1)}) == set()  # said once


def test_a_plan_cut_short_or_an_api_that_forgot_meanwhile_is_not_the_listings_fault():
    plan = Plan()
    plan.not_shown({"a": (5, 0), "b": (1, 0)})
    plan.taught[("a", "success")] += 2  # two of a's five taught, then the API failed: a shows 7
    assert plan.not_shown({"a": (7, 0), "b": (1, 0)}) == set()
    plan.taught[("a", "success")] += 3
    # Restarted meanwhile: b went down (counts never do while it runs), a shows less than taught.
    assert plan.not_shown({"a": (1, 0)}) == set() and plan.unlisted == set()


def test_a_doubt_loaded_after_a_restart_is_rebuilt_with_the_session_id_policy(tmp_path):
    # What the history records for it if GET /patterns shows it landed: the body as send_session_id sends it.
    from omnimemory_learner.core.sessions import ClosedSession
    from omnimemory_learner.delivery.learn_api import SessionIds

    store = StateStore(tmp_path)
    commands = [(name, 1_700_000_000.0 + i, "file_open") for i, name in enumerate(NAMES)]
    store.commit(store.position(), [ClosedSession.from_commands("erin-laptop", commands, 1, 3)], {})
    outbox_id = store.outbox.pending()[0].id
    store.note(UNANSWERED_META, json.dumps({str(outbox_id): time.time()}))
    hashed = SessionIds(SessionIds.HASHED, tmp_path)
    doubts = Doubts()
    assert doubts.load(store, False, OutcomeRule(), hashed) == 1
    body = json.loads(doubts.held[outbox_id].attempt.body)
    assert body["session_id"] == hashed.told("erin-laptop") != "erin-laptop"
    omitted = Doubts()
    assert omitted.load(store, False, OutcomeRule(), SessionIds(SessionIds.OMIT)) == 1
    assert "session_id" not in json.loads(omitted.held[outbox_id].attempt.body)
    store.close()


def test_a_doubt_an_older_build_left_tells_the_outcome_that_build_sent(tmp_path):
    # state.db schema 1 kept the outcome judged by the original rule; the POST that left the doubt told it.
    import sqlite3

    from omnimemory_learner.core.sessions import ClosedSession

    store = StateStore(tmp_path)
    names = ["run_tests", "edit_code", "save_file"]  # last3: success; evidence: abandoned, failure
    commands = [(name, 1_700_000_000.0 + i, "file_open") for i, name in enumerate(names)]
    store.commit(store.position(), [ClosedSession.from_commands("old", commands, 1, 3)], {})
    outbox_id = store.outbox.pending()[0].id
    store.note(UNANSWERED_META, json.dumps({str(outbox_id): time.time()}))
    store.close()
    connection = sqlite3.connect(str(tmp_path / "state.db"))
    with connection:
        connection.execute("UPDATE sessions SET outcome = 'success'")
    connection.close()
    store = StateStore(tmp_path)
    doubts = Doubts()
    assert doubts.load(store, False, OutcomeRule()) == 1
    held = doubts.held[outbox_id]
    assert json.loads(held.attempt.body)["session_outcome"] == "success" == held.doubt.outcome
    assert held.session.rule == "last3"
    fresh = store.outbox.pending()[0]._replace(outcome=None)
    assert fresh.judged(OutcomeRule()).outcome == "failure"  # the same commands committed by this build
    store.close()
