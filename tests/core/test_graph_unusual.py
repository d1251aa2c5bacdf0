"""The report's pure parts: workflows, directly-follows, recurrence, DOT, unusual sessions."""

from __future__ import annotations

import math
import random
import re

from hypothesis import given
from hypothesis import strategies as st

from omnimemory_learner.core.graph import (
    directly_follows,
    recurrence,
    share_colour,
    summarize,
    to_dot,
    workflows,
)
from omnimemory_learner.core.unusual import MIN_HISTORY, TransitionModel, UnusualDetector, percentile

NAMES = st.sampled_from(["open_file", "edit_code", "save_file", "run_tests", "commit_changes"])
SESSIONS = st.lists(
    st.builds(summarize, st.lists(NAMES, min_size=1, max_size=30), st.sampled_from(["success", "failure"])),
    max_size=40,
)


def plain_fold(names):
    out = []
    for name in names:
        if not out or out[-1] != name:
            out.append(name)
    return out


@given(SESSIONS)
def test_directly_follows_equals_a_plain_count(sessions):
    expected = {}
    for session in sessions:
        folded = plain_fold(session.names)
        for i in range(len(folded) - 1):
            count, wins = expected.get((folded[i], folded[i + 1]), (0, 0))
            expected[(folded[i], folded[i + 1])] = (count + 1, wins + (session.outcome == "success"))
    assert {
        pair: (tally.occurrences, tally.successes) for pair, tally in directly_follows(sessions).items()
    } == expected


@given(SESSIONS)
def test_workflows_and_recurrence_equal_plain_counts(sessions):
    ranked = workflows(sessions)
    counts = {}
    for session in sessions:
        key = tuple(plain_fold(session.names))
        counts[key] = counts.get(key, 0) + 1
    assert {sequence: tally.occurrences for sequence, tally in ranked} == counts
    assert [tally.occurrences for _, tally in ranked] == sorted(counts.values(), reverse=True)
    exact = sum(1 for i, s in enumerate(sessions) if any(t.names == s.names for t in sessions[:i]))
    folded = sum(
        1 for i, s in enumerate(sessions) if any(plain_fold(t.names) == plain_fold(s.names) for t in sessions[:i])
    )
    assert recurrence(sessions) == (exact, folded)


def test_dot_has_every_edge_with_its_count_and_escapes_names():
    sessions = [
        summarize(["open_file", "edit_code", "edit_code", "save_file"], "success"),
        summarize(["open_file", "edit_code", 'we"ird\nname'], "failure"),
    ]
    dot = to_dot(directly_follows(sessions))
    edges = re.findall(r'^  "(.+?)" -> "(.+?)" \[label="(\d+)"', dot, re.MULTILINE)
    assert sorted(edges) == sorted(
        [("open_file", "edit_code", "2"), ("edit_code", "save_file", "1"), ("edit_code", 'we\\"ird\\\\x0aname', "1")]
    )
    # The newline in a name cannot break the file's lines: every line is a statement or a brace.
    assert all(line.endswith(("{", ";", "}")) for line in dot.splitlines())
    assert share_colour(1.0) == "#00aa30" and share_colour(0.0) == "#dc0030"


def test_usual_sessions_pass_and_rare_mixes_are_flagged():
    rng = random.Random(7)
    usual = [
        ["open_file", "edit_code", "save_file", "run_tests", "commit_changes"],
        ["pull_changes", "open_file", "edit_code", "save_file", "push_changes"],
        ["open_file", "edit_code", "run_tests", "edit_code", "save_file"],
    ]
    history = [usual[rng.randrange(3)] for _ in range(600)]
    detector = UnusualDetector(history)
    assert detector.ready
    ordinary = [usual[rng.randrange(3)] for _ in range(300)]
    false_positives = sum(detector.judge(names)[1] for names in ordinary)
    assert false_positives == 0
    rare = ["commit_changes", "delete_file", "pull_changes", "build_project", "delete_file"]
    score, flagged = detector.judge(rare)
    assert flagged and score is not None
    assert score.rarest_probability < 0.01


def test_nothing_is_flagged_before_the_minimum_history():
    detector = UnusualDetector([["open_file", "save_file"]] * (MIN_HISTORY - 1))
    assert not detector.ready
    assert detector.judge(["delete_file", "build_project"])[1] is False


def test_model_probabilities_sum_to_one_over_what_can_follow():
    model = TransitionModel()
    for names in (["a", "b", "c"], ["a", "c"], ["b", "b", "a"]):
        model.add(names)
    for source in ("^", "a", "b", "c", "never-seen"):
        assert abs(sum(model.probability(source, target) for target in ("a", "b", "c", "$")) - 1.0) < 1e-9


def test_percentile_nearest_rank():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 100) == 5.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 40) == 2.0
    assert percentile([7.0], 99) == 7.0


def reference_score(history, names, alpha=0.5):
    """The model's score in a few plain lines: counts over the folded history, add-alpha smoothing."""
    counts, seen = {}, set()
    for past in history:
        path = ["^"] + plain_fold(past) + ["$"]
        seen.update(path[1:-1])
        for a, b in zip(path, path[1:]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
    path = ["^"] + plain_fold(names) + ["$"]
    logs = []
    for a, b in zip(path, path[1:]):
        leaving = sum(n for (x, _), n in counts.items() if x == a)
        logs.append(-math.log((counts.get((a, b), 0) + alpha) / (leaving + alpha * (len(seen) + 1))))
    return sum(logs) / len(logs)


SESSION_NAMES = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=12)


@given(st.lists(SESSION_NAMES, max_size=30), SESSION_NAMES)
def test_score_equals_a_plain_count(history, names):
    model = TransitionModel()
    for past in history:
        model.add(past)
    assert math.isclose(model.score(names).value, reference_score(history, names), rel_tol=1e-9)


@given(st.lists(SESSION_NAMES, min_size=0, max_size=40), st.lists(SESSION_NAMES, min_size=1, max_size=40))
def test_observe_judges_before_it_learns(history, arriving):
    # min_history small so the threshold is drawn and judged inside the example.
    detector = UnusualDetector(history, min_history=5)
    for index, names in enumerate(arriving):
        expected_flag = detector.judge(names)[1]
        expected_score = reference_score(history + arriving[:index], names)
        score, flagged = detector.observe(names)
        assert flagged == expected_flag
        assert math.isclose(score.value, expected_score, rel_tol=1e-9)
        assert detector.model.sessions == len(history) + index + 1
