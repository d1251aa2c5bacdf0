"""Hostile text in the real journal: the learner runs under a real systemd user
manager with its standard error connected to a real journald, and
`journalctl -o json` shows one entry per record, with its own priority,
whatever the session ids and the API's answers hold.

Run these only under `flock /tmp/omnimemory-systemd.lock` (they share journald).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from helpers import ROOT, create_db, insert_events, journald_answers, wait_until
from test_edges import unsafe_characters
from test_systemd import manager  # noqa: F401 - the real user manager, as a fixture
from test_untrusted import FORGED, HOSTILE_BODY, HostileAPI

pytestmark = pytest.mark.systemd
JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNALD = "/lib/systemd/systemd-journald"


@pytest.fixture
def journald():
    """A journald that answers.  A socket left behind by a journald that is gone
    would make the user manager's fixture believe one runs."""
    if journald_answers():
        yield
        return
    if not os.path.exists(JOURNALD):
        pytest.fail("systemd-journald is not installed")
    os.makedirs("/run/systemd/journal", exist_ok=True)
    process = subprocess.Popen([JOURNALD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(journald_answers, 10), "journald did not start"
    yield
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    # Its sockets stay behind; the next test's fixture must see that no journald runs.
    for name in ("stdout", "socket", "dev-log"):
        try:
            os.unlink(f"/run/systemd/journal/{name}")
        except FileNotFoundError:
            pass


def journal_entries(um, *match, unit=None):
    args = ["journalctl", "--no-pager", "-o", "json", "--all"]
    if unit:
        args += ["-u", unit]
    result = um.run(*args, *match)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def transient(um, unit, environment, *command):
    setenv = [f"--setenv={key}={value}" for key, value in environment.items()]
    return um.run(
        "systemd-run",
        "--user",
        f"--unit={unit}",
        "--collect",
        "-p",
        "Type=exec",
        f"--working-directory={ROOT}",
        *setenv,
        *command,
        check=True,
    )


def test_hostile_session_ids_are_one_journal_entry_each_at_their_own_priority(journald, request, tmp_path):
    um = request.getfixturevalue("manager")
    nonce = uuid.uuid4().hex[:12]
    ids = [
        nonce + suffix
        for suffix in (
            "evil\n" + FORGED + ": credentials leaked\x1b[31m",
            "\x00nul",
            "\u2028sep",
            "\u202eright-to-left",
            "\n<2>forged priority\n<3>again",
            "\\back\\slash\r\n",
        )
    ]
    rejected = ids[4]
    api = HostileAPI().start()
    api.answers = {rejected: [(422, HOSTILE_BODY)]}
    db = create_db(tmp_path / "db" / "memory_data.db")
    environment = {
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "OMNIMEMORY_LEARNER_DB_PATH": str(db),
        "OMNIMEMORY_LEARNER_API_URL": api.url,
        "OMNIMEMORY_LEARNER_STATE_DIR": str(tmp_path / "state"),
        "OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES": "0.02",
        "OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS": "0.5",
    }
    try:
        transient(um, "omnimemory-learner", environment, sys.executable, "-m", "omnimemory_learner", "run")
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        insert_events(db, [(now, kind, sid) for sid in ids for kind in ("file_open", "code_edit", "file_save")])
        assert wait_until(lambda: set(api.posted) >= set(ids), 40), api.posted
        # Two entries a session: "Learning from" and its result.
        assert wait_until(lambda: len(_ours(journal_entries(um, unit="omnimemory-learner"), nonce)) >= 2 * len(ids), 20)
        um.systemctl("stop", "omnimemory-learner")
    finally:
        api.stop()
    entries = _ours(journal_entries(um, unit="omnimemory-learner"), nonce)
    messages = [entry["MESSAGE"] for entry in entries]
    assert len(entries) == 2 * len(ids), messages
    assert all(
        isinstance(message, str) and "\n" not in message and unsafe_characters(message) == [] for message in messages
    ), messages
    assert all(
        entry["_TRANSPORT"] == "journal"
        and entry["SYSLOG_IDENTIFIER"] == "omnimemory-learner"
        # "Learning from" is said by the API client, the result by the settling of the session.
        and entry["CODE_FILE"].endswith(("delivery/learn_api.py", "delivery/settle.py"))
        for entry in entries
    )
    learning = [entry for entry in entries if entry["MESSAGE"].startswith("Learning from session " + nonce)]
    assert len(learning) == len(ids) and {entry["PRIORITY"] for entry in learning} == {"6"}
    assert (
        "Learning from session " + nonce + "evil\\n2026-11-24 07:00:00 - ERROR - Fake: credentials leaked"
        "\\x1b[31m: 3 commands, outcome=success"
    ) in messages
    errors = [entry for entry in entries if entry["PRIORITY"] == "3"]
    assert len(errors) == 1 and errors[0]["MESSAGE"].startswith(
        "Procedural API rejected session " + nonce + "\\n<2>forged priority\\n<3>again;"
    )
    assert not any(message.startswith(("<", "2026-11-24 07:00:00", "Fake")) for message in messages)
    assert sorted(body["session_id"] for _, body in api.sessions()) == sorted(set(ids) - {rejected})


def _ours(entries, nonce):
    return [entry for entry in entries if nonce in str(entry.get("MESSAGE"))]


PROBE = textwrap.dedent("""
    import logging, sys, time
    from omnimemory_learner.logs import setup_logging
    assert setup_logging("INFO", None) == "journald"
    log = logging.getLogger("omnimemory_learner.probe")
    nonce = sys.argv[1]
    try:
        raise ValueError(nonce + " boom\\n<2>forged")
    except ValueError:
        log.exception("Delivery thread failed (%s)", nonce + "\\n<3>arg")
    log.warning(nonce + " large " + "w" * 9_000_000)
    time.sleep(1)
""")


def test_a_traceback_and_a_9_mb_entry_are_one_journal_entry_each(journald, request, tmp_path):
    um = request.getfixturevalue("manager")
    nonce = uuid.uuid4().hex[:12]
    transient(
        um, "omnimemory-learner-probe", {"PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}, sys.executable, "-c", PROBE, nonce
    )
    assert wait_until(lambda: len(_ours(journal_entries(um, "SYSLOG_IDENTIFIER=omnimemory-learner"), nonce)) >= 2, 30)
    entries = _ours(journal_entries(um, "SYSLOG_IDENTIFIER=omnimemory-learner"), nonce)
    assert len(entries) == 2, [str(entry.get("MESSAGE"))[:200] for entry in entries]
    failure, large = entries
    lines = failure["MESSAGE"].split("\n")
    assert failure["PRIORITY"] == "3" and failure["_TRANSPORT"] == "journal"
    assert lines[0] == f"Delivery thread failed ({nonce}\\n<3>arg)" and lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == f"ValueError: {nonce} boom\\n<2>forged"
    assert large["PRIORITY"] == "4" and large["MESSAGE"] == f"{nonce} large " + "w" * 9_000_000
