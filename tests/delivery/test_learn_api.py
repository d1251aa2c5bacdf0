"""delivery/learn_api.py: every answer and every transport error of POST /learn is exactly one verdict."""

from __future__ import annotations

import json

import httpx
import pytest

from omnimemory_learner.core.fates import Verdict
from omnimemory_learner.delivery.http import Answer, DeadlineExceeded
from omnimemory_learner.delivery.learn_api import LEARN_PATH, Attempt, LearnAPI, learn_body
from omnimemory_learner.storage.outbox import PendingSession

SESSION = PendingSession(
    7,
    "k" * 32,
    "s1",
    "success",
    [("open_file", 100.0, "file_open"), ("open_file", 101.0, "file_open"), ("save_file", 102.0, "file_save")],
    0,
    quality=0.5,
)


class Client:
    """A BoundedClient's place: answers (or raises) what it is given, and keeps what it was asked."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.timeout = 10.0
        self.asked = []

    def request(self, method, url, content=None, headers=None):
        self.asked.append((method, url, json.loads(content), headers))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def learn(outcome) -> Attempt:
    return LearnAPI(Client(outcome), "http://api/").learn(SESSION)


def answer(status, body=b"", headers=None):
    return Answer(status, headers or {}, body, False)


@pytest.mark.parametrize(
    "status, body, verdict, detail",
    [
        (200, b'{"pattern_id": "abc"}', Verdict.LEARNED, "abc"),
        (200, b'{"pattern_id": null}', Verdict.NOT_LEARNED, None),
        (200, b"<html>", Verdict.RETRY, "200 with a body that is not JSON: '<html>'"),
        (200, b'{"message": "x"}', Verdict.RETRY, """200 without pattern_id: '{"message": "x"}'"""),
        (201, b"{}", Verdict.RETRY, "HTTP 201: {}"),
        (400, b"bad", Verdict.REJECTED, "HTTP 400: bad"),
        (404, b"", Verdict.REJECTED, "HTTP 404: "),
        (422, b'{"detail": "x"}', Verdict.REJECTED, 'HTTP 422: {"detail": "x"}'),
        (408, b"", Verdict.RETRY, "HTTP 408: "),
        (409, b"", Verdict.RETRY, "HTTP 409: "),
        (425, b"", Verdict.RETRY, "HTTP 425: "),
        (429, b"", Verdict.RETRY, "HTTP 429: "),
        (500, b'{"detail": "boom"}', Verdict.RETRY, 'HTTP 500: {"detail": "boom"}'),
        (503, b"", Verdict.RETRY, "HTTP 503: "),
        (100, b"", Verdict.RETRY, "HTTP 100: "),
        (999, b"", Verdict.RETRY, "HTTP 999: "),
    ],
)
def test_each_status_is_one_verdict(status, body, verdict, detail):
    attempt = learn(answer(status, body))
    assert (attempt.verdict, attempt.detail, attempt.connected, attempt.commands) == (verdict, detail, True, 3)
    if verdict == Verdict.RETRY:
        assert attempt.problem == f"Procedural API failed for session s1: {detail}"


def test_a_redirect_is_a_retry_that_says_where_it_pointed():
    attempt = learn(answer(308, headers={"location": "http://elsewhere/learn"}))
    assert attempt.verdict == Verdict.RETRY and attempt.connected
    assert (
        attempt.detail
        == "HTTP 308 redirect to http://elsewhere/learn (not followed: set api_url to it if that is the API)"
    )


@pytest.mark.parametrize("status, asked", [(429, 5.0), (503, 5.0), (500, None), (200, None)])
def test_retry_after_is_read_on_429_and_503_only(status, asked):
    assert learn(answer(status, b'{"pattern_id": "p"}', {"retry-after": "5"})).asked_wait == asked


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("[Errno 111] Connection refused"), httpx.ConnectTimeout("timed out")],
    ids=["ConnectError", "ConnectTimeout"],
)
def test_not_connecting_is_a_retry_that_sent_nothing(error):
    attempt = learn(error)
    assert (attempt.verdict, attempt.connected, attempt.asked_wait) == (Verdict.RETRY, False, None)
    assert attempt.detail == f"{type(error).__name__}: {error}"
    assert attempt.problem == f"Failed to connect to procedural API: {error}"


@pytest.mark.parametrize(
    "error",
    [
        DeadlineExceeded("no whole answer within 1 s"),
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("reset by peer"),
        httpx.UnsupportedProtocol("no"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_other_transport_error_is_a_retry_after_connecting(error):
    attempt = learn(error)
    assert (attempt.verdict, attempt.connected) == (Verdict.RETRY, True)
    assert attempt.detail == f"{type(error).__name__}: {error}"
    assert attempt.problem == f"Procedural API did not answer for session s1: {attempt.detail}"


def test_an_answer_that_cannot_be_read_is_a_retry():
    class Broken(dict):
        def get(self, *args):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    attempt = learn(Answer(302, Broken(), b"", False))
    assert (attempt.verdict, attempt.connected) == (Verdict.RETRY, True)
    assert attempt.detail == "an answer that cannot be read (UnicodeDecodeError)"


def test_the_request_is_a_post_to_learn_with_the_body_and_the_idempotency_key():
    client = Client(answer(200, b'{"pattern_id": "p"}'))
    api = LearnAPI(client, "http://api/")
    api.learn(SESSION)
    api.configure("http://other:9/", 3.0)
    api.learn(SESSION)
    (method, url, body, headers), second = client.asked
    assert (method, url) == ("POST", "http://api" + LEARN_PATH) and second[1] == "http://other:9/learn"
    assert client.timeout == 3.0
    assert body == learn_body(SESSION)
    assert headers == {"Content-Type": "application/json", "Idempotency-Key": "k" * 32}


def test_the_body_has_the_api_fields_and_folds_repeats_when_asked():
    assert learn_body(SESSION) == {
        "session_commands": [
            {"command": "open_file", "timestamp": 100.0, "context": {"event_type": "file_open"}},
            {"command": "open_file", "timestamp": 101.0, "context": {"event_type": "file_open"}},
            {"command": "save_file", "timestamp": 102.0, "context": {"event_type": "file_save"}},
        ],
        "session_outcome": "success",
        "session_id": "s1",
        "tool_id": "omnimemory-learner",
        "quality": 0.5,
    }
    folded = learn_body(SESSION, fold_repeats=True)
    assert [command["command"] for command in folded["session_commands"]] == ["open_file", "save_file"]
    assert folded["session_outcome"] == "success"  # inferred before folding
    assert "quality" not in learn_body(SESSION._replace(quality=None))  # a session of a build before quality


PADDED = b'{"pattern_id": "abc123def4567890", "message": "' + b"x" * (70 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("text", "judged"),
    [
        (PADDED, (Verdict.LEARNED, "abc123def4567890")),
        (
            b'\xef\xbb\xbf{"message": "learned", "pattern_id": null, "padding": "' + b"x" * 70000,
            (Verdict.NOT_LEARNED, None),
        ),
        # The pattern id's member not whole before the cut (a number cut short still decodes): not proof.
        (b'{"message": "' + b"x" * 70000 + b'", "pattern_id": "late"}', None),
        (b'{"pattern_id": 12', None),
        (b"<html>" + b"x" * 70000, None),
    ],
    ids=["pattern id first", "null after a BOM", "pattern id past the cut", "a number cut short", "not JSON"],
)
def test_an_answer_over_the_cap_is_judged_on_what_was_read(text, judged):
    from omnimemory_learner.delivery.learn_api import classify

    cut = Answer(200, {}, text[:65536], True)
    verdict, detail = classify(cut)
    if judged is None:
        assert verdict is Verdict.RETRY and "not read further" in detail
    else:
        assert (verdict, detail) == judged


def test_a_200_with_a_pattern_id_and_70_kib_more_is_learned_once(tmp_path, api):
    import time

    from helpers import create_db, insert_events, learner_env, run_learner

    db = create_db(tmp_path / "events.db")
    base = time.time() - 3600
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
    insert_events(
        db, [(stamp(base + i), kind, "padded") for i, kind in enumerate(["file_open", "code_edit", "file_save"])]
    )
    api.by_session["padded"] = ("headers", 200, {"Content-Type": "application/json"}, PADDED)
    env = learner_env(tmp_path, api.url, db)
    result = run_learner(env, "backfill", "--until-delivered-timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [session for _, session, _ in api.tried] == ["padded"]  # counted once, never retried
    history = json.loads(run_learner(env, "history", "--json").stdout)
    assert [(entry["session_id"], entry["settled"], entry["pattern_id"]) for entry in history] == [
        ("padded", "learned", "abc123def4567890")
    ]
