"""The files a user installs: launchd plist, logrotate, units, man pages."""

import os
import plistlib
import shutil
import signal
import subprocess
import time

import pytest
from helpers import ROOT, RecordingAPI, create_db, learner_env, start_learner

PACKAGING = ROOT / "packaging"


def substitute(text, **paths):
    for key, value in paths.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def test_launchd_plist_is_valid_and_fully_substituted(tmp_path):
    text = substitute(
        (PACKAGING / "launchd/com.omnimemory.learner.plist").read_text(),
        BINDIR="/Users/dev/.local/bin",
        LOGDIR="/Users/dev/.omnimemory/logs",
    )
    import re

    assert re.findall(r"@[A-Z]+@", text.split("-->", 1)[1]) == []
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "com.omnimemory.learner"
    assert plist["ProgramArguments"] == ["/Users/dev/.local/bin/omnimemory-learner", "run"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 10
    assert plist["ProcessType"] == "Background"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert os.path.isabs(plist[key]) and "~" not in plist[key]
    assert plist["EnvironmentVariables"]["PYTHONUNBUFFERED"] == "1"


def test_make_install_is_a_thin_wrapper_over_service_install(tmp_path):
    """One installer: make install builds a venv and runs its `service install`; uninstall likewise."""
    home = tmp_path / "home"
    result = subprocess.run(
        ["make", "-n", "install", f"HOME={home}", "START=0"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    venv_program = f"{home}/.local/lib/omnimemory-learner/venv/bin/omnimemory-learner"
    assert f"{venv_program} service install --no-start" in result.stdout
    started = subprocess.run(["make", "-n", "install", f"HOME={home}"], cwd=ROOT, capture_output=True, text=True)
    assert (
        f"{venv_program} service install \n" in started.stdout + "\n"
        or f"{venv_program} service install" in started.stdout.splitlines()[-1]
    )
    removed = subprocess.run(
        ["make", "-n", "uninstall", f"HOME={home}", "PURGE=1"], cwd=ROOT, capture_output=True, text=True
    )
    assert "service uninstall --purge" in removed.stdout
    # No second copy of the installer's work (units, man pages, plist) in the Makefile.
    makefile = (ROOT / "Makefile").read_text()
    install_rules = makefile[makefile.index("\ninstall:") : makefile.index("\nclean:")]
    for duplicate in ("systemctl", "launchctl", "man1", "LaunchAgents", "@BINDIR@"):
        assert duplicate not in install_rules, duplicate


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_verify_clean(tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    program = tmp_path / "bin" / "omnimemory-learner"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    for unit in (
        "omnimemory-learner.service",
        "omnimemory-learner-logrotate.service",
        "omnimemory-learner-logrotate.timer",
    ):
        text = substitute(
            (PACKAGING / "systemd" / unit).read_text(),
            BINDIR=program.parent,
            STATEDIR=tmp_path / "state",
            CONFDIR=tmp_path / "conf",
        )
        (units / unit).write_text(text.replace("/usr/sbin/logrotate", logrotate))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, sorted(units.iterdir()))], capture_output=True, text=True
    )
    # It can exit 0 with warnings: the output is what counts.
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr
    service = (units / "omnimemory-learner.service").read_text()
    for line in (
        "Type=notify",
        "RestartPreventExitStatus=78",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StartLimitBurst=",
        "TimeoutStopSec=",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "PrivateUsers=yes",
    ):
        assert line in service


@pytest.mark.skipif(not shutil.which("mandoc"), reason="mandoc is not installed")
def test_man_pages_lint_clean_and_document_the_cli():
    pages = [ROOT / "man/omnimemory-learner.1", ROOT / "man/omnimemory-learner.toml.5"]
    result = subprocess.run(["mandoc", "-Tlint", "-Wwarning", *map(str, pages)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr
    from omnimemory_learner.cli.main import build_parser

    parser = build_parser()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in pages[0].read_text().replace("\\-", "-"), option
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        assert name in pages[0].read_text().replace("\\-", "-"), name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in pages[0].read_text().replace("\\-", "-"), (name, option)
    for status in ("0", "1", "2", "3", "4", "69", "73", "75", "78"):
        assert f".B {status}\n" in pages[0].read_text(), status
    from omnimemory_learner.config import KEYS

    five = pages[1].read_text().replace("\\-", "-")
    for key in KEYS:
        assert key in five, key


LOGROTATE = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)


@pytest.mark.skipif(LOGROTATE is None, reason="logrotate is not installed")
def test_logrotate_config_is_clean_and_the_service_keeps_logging_after_a_rotation(tmp_path):
    logs = tmp_path / "logs"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        substitute(
            (PACKAGING / "logrotate/omnimemory-learner").read_text(), LOGDIR=logs, STATEDIR=tmp_path, CONFDIR=tmp_path
        )
    )
    state = tmp_path / "logrotate.state"
    api = RecordingAPI().start()
    try:
        db = create_db(tmp_path / "db" / "memory_data.db")
        env = learner_env(
            tmp_path,
            api.url,
            db,
            OMNIMEMORY_LEARNER_LOG_FILE=logs / "workflow-learner.log",
            OMNIMEMORY_LEARNER_LOG_LEVEL="DEBUG",
        )
        learner = start_learner(env, stdout=subprocess.DEVNULL)
        log = logs / "workflow-learner.log"
        deadline = time.monotonic() + 10
        while not (log.exists() and "Watching" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        dry = subprocess.run([LOGROTATE, "-d", "--state", str(state), str(conf)], capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert "error" not in (dry.stdout + dry.stderr).lower()
        forced = subprocess.run([LOGROTATE, "-f", "--state", str(state), str(conf)], capture_output=True, text=True)
        assert forced.returncode == 0, forced.stderr
        assert (logs / "workflow-learner.log.1").exists()
        assert log.exists() and oct(log.stat().st_mode & 0o777) == "0o600"  # `create 0600`
        learner.send_signal(signal.SIGHUP)  # anything that logs will do; a reload logs two lines
        deadline = time.monotonic() + 10
        while "Configuration reloaded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Configuration reloaded" in log.read_text()
        assert "Configuration reloaded" not in (logs / "workflow-learner.log.1").read_text()
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(10) == 0
        assert "Workflow learner stopped" in log.read_text()
    finally:
        api.stop()
