"""Repeat folding and the quality score, tested directly on the pure core."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from omnimemory_learner.core.folding import expand_names, fold_runs, folded_length
from omnimemory_learner.core.outcome import has_outcome_indicator, infer_outcome
from omnimemory_learner.core.quality import WEIGHTS, duration_component, session_quality

NAMES = st.sampled_from(["open_file", "edit_code", "save_file", "run_tests", "commit_changes", "delete_file"])
# Times in any order, duplicated, far apart: folding must not care.
TIMES = st.floats(min_value=1.0, max_value=2.5e11, allow_nan=False)
COMMANDS = st.lists(st.tuples(NAMES, TIMES, st.sampled_from(["code_edit", "file_save", "other"])), max_size=60)


def reference_fold(commands):
    """Runs of equal names, written plainly: [name, first time, first type, count, last time]."""
    runs = []
    for name, time, event_type in commands:
        if runs and runs[-1][0] == name:
            runs[-1][3] += 1
            runs[-1][4] = time
        else:
            runs.append([name, time, event_type, 1, time])
    return [tuple(run) for run in runs]


@given(COMMANDS)
def test_folding_equals_the_reference_and_expands_back(commands):
    folded = fold_runs(commands)
    assert [tuple(run) for run in folded] == reference_fold(commands)
    assert expand_names(folded) == [name for name, _, _ in commands]
    assert folded_length([name for name, _, _ in commands]) == len(folded)
    assert all(a.command != b.command for a, b in zip(folded, folded[1:]))


@given(COMMANDS)
def test_a_session_without_repeats_keeps_its_payload(commands):
    deduplicated = [c for i, c in enumerate(commands) if i == 0 or commands[i - 1][0] != c[0]]
    payload = [run.as_payload() for run in fold_runs(deduplicated)]
    assert payload == [{"command": n, "timestamp": t, "context": {"event_type": e}} for n, t, e in deduplicated]


def test_a_run_carries_its_count_and_last_time():
    commands = (
        [("open_file", 10.0, "file_open")]
        + [("edit_code", 11.0 + i, "code_edit") for i in range(37)]
        + [("save_file", 60.0, "file_save")]
    )
    payload = [run.as_payload() for run in fold_runs(commands)]
    assert payload == [
        {"command": "open_file", "timestamp": 10.0, "context": {"event_type": "file_open"}},
        {
            "command": "edit_code",
            "timestamp": 11.0,
            "context": {"event_type": "code_edit", "repeat": 37, "last_timestamp": 47.0},
        },
        {"command": "save_file", "timestamp": 60.0, "context": {"event_type": "file_save"}},
    ]
    # Twelve edits fold to the same pattern as 37.
    twelve = commands[:13] + commands[-1:]
    assert [run.command for run in fold_runs(twelve)] == [run.command for run in fold_runs(commands)]


def test_the_outcome_indicator_is_told_apart_from_the_default():
    assert has_outcome_indicator(["open_file", "edit_code", "save_file"])
    assert has_outcome_indicator(["open_file", "delete_file", "edit_code"])
    assert not has_outcome_indicator(["save_file", "open_file", "edit_code", "run_tests"])
    assert infer_outcome(["save_file", "open_file", "edit_code", "run_tests"]) == "success"  # the default


def test_quality_components_on_hand_built_sessions():
    good = session_quality(["open_file", "edit_code", "run_tests", "commit_changes"], 0.0, 600.0)
    assert good.components == {"variety": 1.0, "signal": 1.0, "repetition": 1.0, "duration": 1.0, "evidence": 1.0}
    assert good.score == 1.0

    one_run = session_quality(["edit_code"] * 40, 0.0, 600.0)
    assert one_run.components["variety"] == 0.0
    assert one_run.components["repetition"] == 1 / 40
    assert one_run.components["evidence"] == 0.5
    assert one_run.score < 0.5

    noisy = session_quality(["open_file", "edit_code", "save_file"], 0.0, 600.0, unmapped_rows=9)
    assert noisy.components["signal"] == 3 / 12
    assert noisy.components["variety"] == 2 / 3

    assert session_quality(["open_file", "save_file"], 5.0, 5.0).components["duration"] == 0.0
    assert session_quality([], 0.0, 0.0).score == 0.0


def test_duration_component_shape():
    assert duration_component(-5) == 0.0
    assert duration_component(15) == 0.5
    assert duration_component(30) == duration_component(7200) == 1.0
    assert duration_component(5 * 3600) == 0.625
    assert duration_component(8 * 3600) == duration_component(48 * 3600) == 0.25


@given(st.lists(NAMES, max_size=80), TIMES, TIMES, st.integers(min_value=-5, max_value=10_000))
def test_quality_is_always_in_range(names, a, b, unmapped):
    quality = session_quality(names, min(a, b), max(a, b), unmapped)
    assert 0.0 <= quality.score <= 1.0
    assert set(quality.components) == set(WEIGHTS)
    assert all(0.0 <= value <= 1.0 for value in quality.components.values())
    assert abs(sum(WEIGHTS.values()) - 1.0) < 1e-9
    # The score is the weighted sum of the components it shows, clamped and rounded.
    if names:
        weighted = sum(WEIGHTS[name] * value for name, value in quality.components.items())
        assert quality.score == round(min(1.0, max(0.0, weighted)), 3)
