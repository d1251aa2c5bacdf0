"""doctor's API checks under the same bounds as delivery: one deadline, 64 KiB, no redirects."""

import json
import time

import pytest
from helpers import RecordingAPI, learner_env, run_learner


def doctor_api(tmp_path, api):
    env = learner_env(
        tmp_path, api.url, tmp_path / "db" / "memory_data.db", OMNIMEMORY_LEARNER_REQUEST_TIMEOUT_SECONDS=1
    )
    started = time.monotonic()
    result = run_learner(env, "doctor", "--json", timeout=60)
    took = time.monotonic() - started
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    return checks, took


@pytest.mark.parametrize("behaviour", [("drip", 200, 100_000, 0.05), ("drip_head", 0.05), ("silent", 30)])
def test_doctor_gives_up_on_a_slow_answer_at_the_deadline(tmp_path, api, behaviour):
    api.script = [behaviour]
    checks, took = doctor_api(tmp_path, api)
    assert checks["api"]["level"] == "problem"
    assert "no whole answer within 1 s" in checks["api"]["message"]
    (answer,) = api.answers
    assert answer["hung_up"] and 0.9 <= answer["open_seconds"] <= 2.0, answer
    assert took < 20  # doctor as a whole, with its other checks and the interpreter's start


def test_doctor_reads_a_huge_answer_only_to_the_cap(tmp_path, api):
    api.script = [("huge", 500, 300 * 1024 * 1024)]
    checks, _ = doctor_api(tmp_path, api)
    contract = checks["api contract"]
    assert contract["level"] == "problem" and "answer longer than 64 KiB" in contract["message"]
    assert len(contract["message"]) <= 300  # 200 characters of the body, not 64 KiB
    assert api.answers[0]["hung_up"] and api.answers[0]["open_seconds"] < 1.0


def test_doctor_names_where_a_redirect_pointed_and_does_not_follow_it(tmp_path, api):
    elsewhere = RecordingAPI().start()
    try:
        api.script = [("headers", 308, {"Location": elsewhere.url + "/learn"}, "")]
        checks, _ = doctor_api(tmp_path, api)
    finally:
        elsewhere.stop()
    assert checks["api contract"]["level"] == "problem"
    assert f"redirect to {elsewhere.url}/learn" in checks["api contract"]["message"]
    assert elsewhere.attempts == 0
