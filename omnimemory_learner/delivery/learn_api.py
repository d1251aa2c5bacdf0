"""The procedural API's requests: POST /learn, its body, and what each answer means.

Guarantee: this is the only module that knows the API's paths, the fields of
a request's body and the meaning of its status codes.  Every answer and
every transport error of one attempt maps to exactly one `Verdict` (with its
detail), so the delivery thread never sees an exception of httpx's:

    answer / error                                       verdict      detail
    200 {"pattern_id": "..."}                            LEARNED      the pattern id
    200 {"pattern_id": null}                             NOT_LEARNED  None
    200 that is not JSON, or without pattern_id          RETRY        the body
    200 over 64 KiB: judged on its first pattern_id read  as above
    3xx (never followed)                                 RETRY        where it pointed
    408, 409, 425, 429, 5xx and any other status         RETRY        HTTP <status>: the body
    every other 4xx (422: an invalid body)               REJECTED     HTTP <status>: the body
    an answer that cannot be read                        RETRY        the error's kind
    httpx.ConnectError, ConnectTimeout (nothing sent)    RETRY        not connected
    any other httpx.HTTPError (timeout, hang-up, ...)    RETRY        the error

    GET /patterns                                        PatternsRead (counts, or why not)

Every attempt of a session carries the same Idempotency-Key (and so does a
session taught again: its bytes are the ones first sent).  An attempt that
was sent and got no answer is `unanswered`: the API may have counted it.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import httpx

from ..core.fates import Verdict
from ..core.folding import fold_runs
from ..core.reconcile import PatternCounts, expected_pattern_id, parse_patterns
from ..storage.history import SentSession
from ..storage.outbox import PendingSession
from ..storage.secret import SecretError, session_id_secret
from .http import ANSWER_CAP, Answer, BoundedClient, bounded_text

log = logging.getLogger(__name__)

LEARN_PATH = "/learn"
PATTERNS_PATH = "/patterns"
# GET /patterns lists every pattern (about 130 bytes each): 64 MiB holds some 500,000.
PATTERNS_CAP = 64 * 2**20
# Sent as the body's tool_id: the metrics service tracks sessions by it.
TOOL_ID = "omnimemory-learner"
# 4xx answers that say "again later", not "never": retried like 5xx.
RETRIED_4XX = frozenset({408, 409, 425, 429})
# Answers whose Retry-After is honoured (capped by retry_max_seconds).
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Attempt(NamedTuple):
    """What one POST /learn of a session came to."""

    verdict: Verdict
    detail: Optional[str]  # LEARNED: the pattern id; RETRY, REJECTED: the error; NOT_LEARNED: None
    connected: bool = True  # False: the API was not reached, nothing was sent
    asked_wait: Optional[float] = None  # seconds the API asked us to wait (Retry-After)
    problem: str = ""  # the log line of an attempt to retry
    commands: int = 0  # how many session_commands the body had (after folding)
    body: bytes = b""  # what was POSTed, exactly (the history keeps it to teach a forgetful API again)
    unanswered: bool = False  # sent, and no answer came: the API may have learned it (see Doubt)
    names: Tuple[str, ...] = ()  # the command names sent (after folding): what the pattern id is made of


class SessionIds:
    """What a body's `session_id` tells the API (send_session_id): the id, a keyed hash of it, or nothing.

    PLAIN sends the id, as the original service does; HASHED the first 32 hex
    digits of HMAC-SHA256 of its UTF-8 under the installation's secret
    (storage/secret.py: stable across sessions and restarts, so the API and the
    metrics service it passes `session_id` to still group one id's sessions,
    and never the id); OMIT leaves the field out (the API reads it as null).
    """

    PLAIN, HASHED, OMIT = "plain", "hashed", "omit"
    __slots__ = ("_secret", "policy", "state_dir")

    def __init__(self, policy: str = PLAIN, state_dir: Optional[Path] = None):
        self.policy = policy
        self.state_dir = state_dir
        self._secret: Optional[bytes] = None

    def told(self, session_id: str) -> Optional[str]:
        """What the API is told for this id (None: nothing); SecretError when HASHED cannot have its secret."""
        if self.policy == self.PLAIN:
            return session_id
        if self.policy == self.OMIT:
            return None
        if self._secret is None:
            if self.state_dir is None:
                raise SecretError("no state directory to keep the secret of hashed session ids in")
            self._secret = session_id_secret(self.state_dir)
        text = session_id.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:32]

    def retold(self, body: bytes, session_id: str) -> bytes:
        """A body kept as sent (taught again), its session_id as this policy says now; the bytes unchanged if so."""
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict):
            return body
        wanted = self.told(session_id)
        if data.get("session_id") == wanted and ("session_id" in data) == (wanted is not None):
            return body
        return _encoded(_with_session_id(data, wanted))


PLAIN_IDS = SessionIds()
OMITTED_IDS = SessionIds(SessionIds.OMIT)


def _with_session_id(body: Dict[str, Any], told: Optional[str]) -> Dict[str, Any]:
    """The body with its session_id set to `told`, in its place among the fields, or left out (None)."""
    out: Dict[str, Any] = {}
    for name, value in body.items():
        if name == "session_id":
            if told is not None:
                out[name] = told
        else:
            out[name] = value
    if told is not None and "session_id" not in out:
        out["session_id"] = told
    return out


class PatternsRead(NamedTuple):
    """What one GET /patterns came to."""

    counts: Optional[PatternCounts]  # None: no answer that can be read
    problem: str = ""  # why not, for the log and status
    connected: bool = True  # False: the API was not reached
    supported: bool = True  # False: the API has no GET /patterns (404, 405, 501)
    answered: bool = True  # False: no answer came (not reached, or no whole answer in time)


def learn_body(
    session: PendingSession, fold_repeats: bool = False, session_ids: SessionIds = PLAIN_IDS
) -> Dict[str, Any]:
    """The JSON body of POST /learn for one outbox session (its session_id as `session_ids` says)."""
    if fold_repeats:
        commands = [run.as_payload() for run in fold_runs(session.commands)]
    else:
        commands = [
            {"command": command, "timestamp": timestamp, "context": {"event_type": event_type}}
            for command, timestamp, event_type in session.commands
        ]
    body: Dict[str, Any] = {
        "session_commands": commands,
        # Inferred on the commands before folding.
        "session_outcome": session.told,
        "session_id": session.session_id,
        "tool_id": TOOL_ID,
    }
    if session_ids is not PLAIN_IDS:
        body = _with_session_id(body, session_ids.told(session.session_id))
    quality = session.scored_quality()
    if quality is not None:
        body["quality"] = quality
    return body


def rebuilt_body(sent: SentSession, event_types: Mapping[str, str]) -> bytes:
    """The body of a learned session recorded before bodies were kept, rebuilt from its history row.

    Names, outcome, session id and quality are as sent; the server reads
    only the names (INTERFACES.md), so the times (spread evenly from the
    first to the last event) and event types (the event map's, reversed)
    change nothing it learns. Folded when folding is what gives the pattern
    id the API answered then.
    """
    names = list(sent.commands)
    if expected_pattern_id(names) != sent.pattern_id:
        folded = [run.command for run in fold_runs([(name, 0.0, "") for name in names])]
        if expected_pattern_id(folded) == sent.pattern_id:
            names = folded
    span = (sent.last_time - sent.first_time) / max(len(names) - 1, 1)
    body: Dict[str, Any] = {
        "session_commands": [
            {
                "command": name,
                "timestamp": sent.first_time + span * at,
                "context": {"event_type": event_types.get(name, "")},
            }
            for at, name in enumerate(names)
        ],
        "session_outcome": sent.outcome,
        "session_id": sent.session_id,
        "tool_id": TOOL_ID,
    }
    if sent.quality is not None:
        body["quality"] = sent.quality
    return _encoded(body)


def sent_names(body: bytes) -> Tuple[str, ...]:
    """The command names of a body as POSTed (what the API makes the pattern id of)."""
    try:
        return tuple(str(command.get("command")) for command in json.loads(body)["session_commands"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return ()


def encoded_learn_body(
    session: PendingSession, fold_repeats: bool = False, session_ids: SessionIds = PLAIN_IDS
) -> Tuple[bytes, Tuple[str, ...]]:
    """The bytes POSTed for a session, and the command names they send (what its pattern id is made of)."""
    body = learn_body(session, fold_repeats, session_ids)
    return _encoded(body), tuple(command["command"] for command in body["session_commands"])


def _encoded(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class LearnAPI:
    """The procedural API at one base URL, through one bounded client."""

    def __init__(self, client: BoundedClient, url: str, session_ids: SessionIds = PLAIN_IDS):
        self.client = client
        self.url = url.rstrip("/")
        self.session_ids = session_ids

    def configure(self, url: str, timeout: float, session_ids: Optional[SessionIds] = None) -> None:
        """A reloaded configuration: the next request uses it."""
        self.url = url.rstrip("/")
        self.client.timeout = timeout
        if session_ids is not None:
            self.session_ids = session_ids

    def learn(self, session: PendingSession, fold_repeats: bool = False) -> Attempt:
        """POST /learn of one session, as one Attempt; raises nothing of httpx's."""
        try:
            body, names = encoded_learn_body(session, fold_repeats, self.session_ids)
        except SecretError as error:  # never the plain id instead: nothing is sent until the secret can be had
            return Attempt(Verdict.RETRY, str(error), False, None, f"Cannot hash session ids: {error}")
        if session.attempts == 0:
            log.info(
                "Learning from session %s: %d commands, outcome=%s", session.session_id, len(names), session.outcome
            )
        return self.post(body, session.idempotency_key, session.session_id, names)

    def post(self, body: bytes, idempotency_key: str, session_id: str, names: Tuple[str, ...]) -> Attempt:
        """POST /learn of a body made already (a session taught again sends the bytes first sent)."""
        try:
            answer = self.client.request(
                "POST",
                self.url + LEARN_PATH,
                content=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            reason = f"{error or 'connection refused'}"
            problem = f"Failed to connect to procedural API: {reason}"
            return Attempt(Verdict.RETRY, f"{type(error).__name__}: {reason}", False, None, problem, len(names), body)
        except httpx.HTTPError as error:
            detail = f"{type(error).__name__}: {error or 'no answer'}"
            problem = f"Procedural API did not answer for session {session_id}: {detail}"
            return Attempt(Verdict.RETRY, detail, True, None, problem, len(names), body, True, names)
        return _judged(answer, session_id, len(names))._replace(body=body, names=names)

    def patterns(self, timeout: float) -> PatternsRead:
        """GET /patterns, read whole (up to PATTERNS_CAP) within `timeout`; raises nothing of httpx's."""
        try:
            answer = self.client.request("GET", self.url + PATTERNS_PATH, cap=PATTERNS_CAP, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            problem = f"not reachable: {type(error).__name__}: {error}"
            return PatternsRead(None, problem, connected=False, answered=False)
        except httpx.HTTPError as error:
            problem = f"no answer to GET {PATTERNS_PATH}: {type(error).__name__}: {error}"
            return PatternsRead(None, problem, answered=False)
        status = answer.status_code
        if status in (404, 405, 501):
            return PatternsRead(None, f"GET {PATTERNS_PATH} answered HTTP {status}: the API has none", supported=False)
        if status != 200:
            return PatternsRead(None, f"GET {PATTERNS_PATH} answered HTTP {status}: {_body_text(answer)}")
        if answer.truncated:
            return PatternsRead(None, f"GET {PATTERNS_PATH} answered more than {PATTERNS_CAP // 2**20} MiB")
        try:
            read = parse_patterns(answer.json())
        except (ValueError, RecursionError) as error:
            return PatternsRead(None, f"GET {PATTERNS_PATH} answered what is not JSON ({type(error).__name__})")
        if not read.usable:
            return PatternsRead(None, f"GET {PATTERNS_PATH} answered what cannot be read: {'; '.join(read.problems)}")
        return PatternsRead(read)


def _judged(answer: Answer, session_id: str, commands: int) -> Attempt:
    asked_wait: Optional[float] = None
    try:
        verdict, detail = classify(answer)
        asked_wait = retry_after(answer, time.time())
    except Exception as error:  # noqa: BLE001 - an answer we cannot read must not kill the thread
        # (which would resend the session after a restart of the thread, even after a 200).
        verdict, detail = Verdict.RETRY, f"an answer that cannot be read ({type(error).__name__})"
    problem = f"Procedural API failed for session {session_id}: {detail}"
    return Attempt(verdict, detail, True, asked_wait, problem, commands)


def _body_text(answer: Answer) -> str:
    text = bounded_text(answer.text)
    return text + (f" (answer longer than {ANSWER_CAP // 1024} KiB; not read further)" if answer.truncated else "")


def redirect_target(answer: Answer) -> Optional[str]:
    """Where a 3xx answer pointed (never followed), or None for any other answer."""
    if 300 <= answer.status_code < 400:
        return bounded_text(answer.headers.get("location") or "(no Location)", 300)
    return None


def classify(answer: Answer) -> Tuple[Verdict, Optional[str]]:
    """(verdict, pattern_id or error text) for one answer of POST /learn."""
    status = answer.status_code
    if status == 200:
        if answer.truncated:
            return _judged_on_prefix(answer)
        try:
            body = answer.json()
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
            # A 200 that is not JSON did not come from the procedural API
            # (a proxy, a captive page): it is not proof of learning.
            return Verdict.RETRY, f"200 with a body that is not JSON: {_body_text(answer)!r}"
        if not isinstance(body, dict) or "pattern_id" not in body:
            return Verdict.RETRY, f"200 without pattern_id: {_body_text(answer)!r}"
        pattern_id = body["pattern_id"]
        if pattern_id is None:
            return Verdict.NOT_LEARNED, None
        return Verdict.LEARNED, bounded_text(str(pattern_id), 200)
    target = redirect_target(answer)
    if target is not None:
        # Following it would send the session where the operator did not point
        # api_url; every session gets the same answer, so this is the API's trouble.
        return Verdict.RETRY, f"HTTP {status} redirect to {target} (not followed: set api_url to it if that is the API)"
    if 400 <= status < 500 and status not in RETRIED_4XX:
        return Verdict.REJECTED, f"HTTP {status}: {_body_text(answer)}"
    return Verdict.RETRY, f"HTTP {status}: {_body_text(answer)}"


def _judged_on_prefix(answer: Answer) -> Tuple[Verdict, Optional[str]]:
    """A 200 longer than the cap, judged on what was read: its pattern_id, when it came before the cut.

    The API has learned the session once it answers 200 with a pattern_id,
    however much more the answer says (a proxy's padding, a long message);
    sending it again would count it twice.
    """
    found, pattern_id = _first_member(answer.text.lstrip("\ufeff"), "pattern_id")
    if not found:
        return Verdict.RETRY, f"200 without pattern_id in what was read: {_body_text(answer)!r}"
    if pattern_id is None:
        return Verdict.NOT_LEARNED, None
    return Verdict.LEARNED, bounded_text(str(pattern_id), 200)


_DECODER = json.JSONDecoder()


def _first_member(text: str, name: str) -> Tuple[bool, Any]:
    """(True, value) of the first member `name` of the JSON object `text` begins with, read whole; else (False, None).

    Members are decoded one by one, so a text cut anywhere after the comma
    (or brace) that ends that member still gives it; a member cut short, or
    any text that is not an object's beginning, gives (False, None).
    """
    try:
        at = _skip_space(text, 0)
        if text[at : at + 1] != "{":
            return False, None
        at += 1
        while True:
            at = _skip_space(text, at)
            key, at = _DECODER.raw_decode(text, at)
            at = _skip_space(text, at)
            if not isinstance(key, str) or text[at : at + 1] != ":":
                return False, None
            value, at = _DECODER.raw_decode(text, _skip_space(text, at + 1))
            at = _skip_space(text, at)
            # Only a value something follows is whole: a number cut short still decodes.
            if text[at : at + 1] not in (",", "}"):
                return False, None
            if key == name:
                return True, value
            if text[at] == "}":
                return False, None
            at += 1
    except (ValueError, RecursionError):
        return False, None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def retry_after(answer: Answer, now: float) -> Optional[float]:
    """Seconds the API asked us to wait (Retry-After on 429 and 503), or None."""
    if answer.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = (answer.headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # "²".isdigit() is true, and float() refuses it
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is None or when.tzinfo is None:
            return None  # an HTTP date is GMT; one without a zone is not one
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
