"""Every exit status the man page lists, walked as a table of real commands.

The man page's EXIT STATUS section is parsed from man/omnimemory-learner.1:
each status it lists must be produced by at least one case below, each case
must exit with a status the page lists for that command, and every status is
one of cli/exits.py's names.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from helpers import ROOT, create_db, free_port, insert_events, learner_env, run_learner, start_learner, stop, wait_until

from omnimemory_learner.cli import exits

MAN_PAGE = ROOT / "man" / "omnimemory-learner.1"


def man_exit_statuses() -> Dict[int, str]:
    """status -> its text, from the EXIT STATUS section."""
    text = MAN_PAGE.read_text()
    section = text.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    entries = {}
    for block in section.split(".TP\n")[1:]:
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"\.B (\d+)", first.strip())
        assert match, f"unexpected entry in EXIT STATUS: {first!r}"
        entries[int(match.group(1))] = re.sub(r"^\.\w+ ?", "", rest, flags=re.M).replace("\\-", "-")
    return entries


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def history(db: Path, sessions: int) -> None:
    start = time.time() - 86400
    insert_events(
        db,
        [
            (stamp(start + s * 1000 + i), kind, f"x{s}")
            for s in range(sessions)
            for i, kind in enumerate(["file_open", "code_edit", "file_save"])
        ],
    )


def learner(env, *args, input=None):
    return run_learner(env, *args, input=input)


def test_exit_status_table_matches_the_man_page(tmp_path, api):
    statuses = man_exit_statuses()
    named = {value for name, value in vars(exits).items() if name.startswith("EX_")}
    assert set(statuses) <= named, f"the man page lists statuses exits.py does not name: {set(statuses) - named}"

    # -- set-ups -------------------------------------------------------------------------------
    db = create_db(tmp_path / "db" / "memory_data.db")
    history(db, 3)
    good = learner_env(tmp_path / "good", api.url, db)
    never_ran = learner_env(tmp_path / "never", api.url, db)
    invalid = learner_env(tmp_path / "invalid", api.url, db, OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES=-1)
    missing_db = learner_env(tmp_path / "missing", api.url, tmp_path / "nowhere" / "memory_data.db")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unusable_state = learner_env(tmp_path / "unusable", api.url, db, OMNIMEMORY_LEARNER_STATE_DIR=blocker / "state")
    down = learner_env(tmp_path / "down", f"http://127.0.0.1:{free_port()}", db, OMNIMEMORY_LEARNER_RETRY_MAX_SECONDS=1)
    # Sessions pending (the API is down) and sessions rejected (the API answers 422).
    assert learner(down, "backfill", "--until-delivered-timeout", "1").returncode == 69
    rejected = learner_env(tmp_path / "rejected", api.url, db)
    api.default = 422
    assert learner(rejected, "backfill", "--until-delivered-timeout", "20").returncode == 0
    api.default = 200
    rejected_ids = [entry["id"] for entry in json.loads(learner(rejected, "outbox", "--json").stdout)]
    pending_ids = [entry["id"] for entry in json.loads(learner(down, "outbox", "--json").stdout)]
    assert len(rejected_ids) == 3 and len(pending_ids) == 3

    cases: List[Tuple[str, object, Tuple[str, ...], int, str]] = [
        # (what, env, arguments, expected status, text expected in the output)
        ("version", good, ("--version",), 0, ""),
        ("check-config", good, ("check-config",), 0, "db_path"),
        ("backfill delivers everything", good, ("backfill", "--until-delivered-timeout", "20"), 0, ""),
        ("doctor, all well", good, ("doctor",), 0, "ok"),
        ("status, never ran", never_ran, ("status",), 4, "never run"),
        ("outbox, never ran", never_ran, ("outbox",), 4, ""),
        ("status, not running", good, ("status",), 3, "inactive"),
        ("outbox list, nothing undelivered", good, ("outbox",), 0, "empty"),
        ("outbox list 999 while sessions are pending", down, ("outbox", "list", "999"), 1, "3 pending"),
        ("outbox list of a pending id", down, ("outbox", "list", str(pending_ids[0])), 0, "pending"),
        ("outbox retry with nothing rejected", down, ("outbox", "retry"), 1, "no rejected session"),
        ("outbox retry 999", rejected, ("outbox", "retry", "999"), 1, "no rejected session with id 999"),
        ("outbox retry of a rejected id", rejected, ("outbox", "retry", str(rejected_ids[0])), 0, "1 rejected"),
        ("outbox drop 999", rejected, ("outbox", "drop", "999", "--yes"), 1, "no pending or rejected"),
        ("outbox drop without --yes, no terminal", rejected, ("outbox", "drop", str(rejected_ids[1])), 1, "--yes"),
        ("outbox drop, confirmed", rejected, ("outbox", "drop", str(rejected_ids[1]), "--yes"), 0, "dropped"),
        ("outbox drop of two ids", rejected, ("outbox", "drop", "1", "2", "--yes"), 2, "exactly one"),
        ("unknown command", good, ("frobnicate",), 2, "invalid choice"),
        ("unknown option", good, ("status", "--frobnicate"), 2, "unrecognized"),
        ("doctor, database missing", missing_db, ("doctor",), 1, "does not exist"),
        ("doctor, configuration invalid", invalid, ("doctor",), 1, "session_idle_minutes"),
        ("backfill, database missing", missing_db, ("backfill",), 69, ""),
        ("backfill, API down past the timeout", down, ("backfill", "--until-delivered-timeout", "1"), 69, ""),
        ("backfill, state directory unusable", unusable_state, ("backfill",), 73, "cannot"),
        ("check-config, invalid", invalid, ("check-config",), 78, "session_idle_minutes"),
        ("status, invalid", invalid, ("status",), 78, "session_idle_minutes"),
        ("run, invalid", invalid, ("run",), 78, "session_idle_minutes"),
    ]
    results = []
    for what, env, args, expected, text in cases:
        result = learner(env, *args)
        results.append((what, result.returncode, expected))
        assert result.returncode == expected, (
            f"{what}: exit {result.returncode}, expected {expected}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
        assert text in result.stdout + result.stderr, f"{what}: {text!r} not in\n{result.stdout}{result.stderr}"
        if what == "outbox list 999 while sessions are pending":
            assert "empty" not in result.stdout + result.stderr

    # -- 75 and running: a service holds the state; a second one by hand and a backfill refuse.
    service = start_learner(good)
    try:
        assert wait_until(lambda: learner(good, "status").returncode == 0, 20)
        results.append(("status, running", 0, 0))
        for what, args in (
            ("run by hand while the service runs", ("run",)),
            ("backfill while the service runs", ("backfill",)),
        ):
            result = learner(good, *args)
            results.append((what, result.returncode, 75))
            assert result.returncode == 75, f"{what}: {result.returncode}\n{result.stderr}{result.stdout}"
            assert f"pid {service.pid}" in result.stdout + result.stderr
        assert stop(service)[0] == 0
    finally:
        if service.poll() is None:
            service.kill()

    produced = {code for _, code, _ in results}
    assert produced == set(statuses), f"the man page lists {sorted(statuses)}; the commands produced {sorted(produced)}"
    for what, code, _ in results:
        assert code in statuses, what
    print("FIGURE exit statuses: " + "; ".join(f"{what}: {code}" for what, code, _ in results))


def test_every_status_named_in_exits_is_documented_or_unused():
    """exits.py's names: each is in the man page, or no command returns it."""
    statuses = man_exit_statuses()
    source = "\n".join(
        path.read_text() for path in (ROOT / "omnimemory_learner").rglob("*.py") if path.name != "exits.py"
    )
    for name, value in vars(exits).items():
        if not name.startswith("EX_"):
            continue
        used = re.search(rf"\b{name}\b", source) is not None
        assert value in statuses or not used, f"{name} ({value}) is returned but not in the man page"


@pytest.mark.parametrize("mode", [0o755, 0o750])
def test_an_existing_state_dir_keeps_its_mode_and_a_shared_one_is_warned_about(tmp_path, api, mode):
    db = create_db(tmp_path / "db" / "memory_data.db")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_STATE_DIR=shared)
    service = start_learner(env)
    try:
        assert wait_until(lambda: learner(env, "status").returncode == 0, 20)
        code, out = stop(service)
        assert code == 0
    finally:
        if service.poll() is None:
            service.kill()
    assert (shared.stat().st_mode & 0o777) == mode
    assert out.count(f"The state directory {shared} is mode {mode:o}") == 1, out
    # A directory the learner creates is private.
    fresh = tmp_path / "new" / "state"
    env = learner_env(tmp_path, api.url, db, OMNIMEMORY_LEARNER_STATE_DIR=fresh)
    result = learner(env, "backfill", "--until-delivered-timeout", "10")
    assert result.returncode == 0
    assert (fresh.stat().st_mode & 0o777) == 0o700
    assert "is mode" not in result.stdout + result.stderr
