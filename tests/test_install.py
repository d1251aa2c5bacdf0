"""`service install|uninstall|status` without a service manager: files, manifest, launchd calls.

The systemd branch under the real user manager is in test_systemd.py; here the
files it writes (--no-start), and the macOS branch with a fake `launchctl` on
PATH that records every call (nothing here ran on a real Mac).
"""

import os
import plistlib
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import ROOT, RecordingAPI, create_db, insert_events, learner_env, output_of, start_learner, wait_until

from omnimemory_learner.cli.service import learner_files
from omnimemory_learner.system.installer import (
    InstallError,
    InstallPaths,
    data_file,
    find_program,
    install,
    uninstall,
)
from omnimemory_learner.system.launchd import LABEL, agent_program
from omnimemory_learner.system.platforms import installer_for
from omnimemory_learner.system.systemd import UNITS, exec_start_program


def tree(root):
    """Every path under root with its kind and mode, to compare before and after."""
    return {str(p.relative_to(root)): (p.is_dir(), stat.S_IMODE(p.lstat().st_mode)) for p in root.rglob("*")}


def fake_program(directory):
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "omnimemory-learner"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return program


@pytest.fixture
def home(tmp_path):
    # A home with a blank and a percent sign: both need quoting in a unit file.
    home = tmp_path / "a home %h"
    (home / ".config").mkdir(parents=True)
    (home / ".config" / "mine.conf").write_text("the user's own\n")
    return home


def user_paths(home, program):
    return InstallPaths.for_user(
        program, home / ".local/state/omnimemory-learner", home / ".omnimemory/logs", {"HOME": str(home)}
    )


def test_systemd_install_writes_every_file_pointing_at_the_program(home):
    program = fake_program(home / "venv dir" / "bin")
    installer = installer_for(user_paths(home, program), "linux")
    report = install(installer, start=False)
    units = home / ".config/systemd/user"
    expected = {units / name for name in UNITS} | {
        home / ".local/share/man/man1/omnimemory-learner.1",
        home / ".local/share/man/man5/omnimemory-learner.toml.5",
        home / ".config/omnimemory/logrotate.conf",
    }
    assert set(report.written) == expected
    for path in expected:
        assert "@" not in path.read_text().replace("@system-service", "").replace("@privileged", "").replace(
            "@resources", ""
        ), path
    assert exec_start_program(units / "omnimemory-learner.service") == program
    assert installer.installed_program() == program
    assert (home / ".local/share/man/man1/omnimemory-learner.1").read_bytes() == (
        ROOT / "man/omnimemory-learner.1"
    ).read_bytes()
    assert stat.S_IMODE((home / ".config/omnimemory").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / ".config/omnimemory/logrotate.conf").stat().st_mode) == 0o600
    assert (home / ".omnimemory/logs").is_dir()
    logrotate = (home / ".config/omnimemory/logrotate.conf").read_text()
    assert f'"{home}/.omnimemory/logs/*.log" {{' in logrotate


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_with_blanks_and_percent_signs_in_paths_verify_and_name_the_program(home):
    program = fake_program(home / "venv dir" / "bin")
    install(installer_for(user_paths(home, program), "linux"), start=False)
    units = sorted((home / ".config/systemd/user").iterdir())
    logrotate = shutil.which("logrotate")
    if logrotate is None:  # verify checks the executable exists; stand one in
        pytest.skip("logrotate is not installed")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # verify found the program (it checks ExecStart='s executable exists), so the quoting holds.
    text = (home / ".config/systemd/user/omnimemory-learner.service").read_text()
    assert f'ExecStart="{str(program).replace("%", "%%")}" run' in text


def test_a_second_install_changes_nothing_and_a_changed_file_is_put_back(home):
    program = fake_program(home / "venv" / "bin")
    installer = installer_for(user_paths(home, program), "linux")
    install(installer, start=False)
    before = tree(home)
    again = install(installer, start=False)
    assert not again.changed and tree(home) == before
    unit = home / ".config/systemd/user/omnimemory-learner.service"
    unit.write_text(unit.read_text().replace("Nice=10", "Nice=0"))
    repaired = install(installer, start=False)
    assert repaired.written == [unit] and "Nice=10" in unit.read_text()


def test_a_reinstalled_program_at_the_same_path_is_noticed(home, launchctl):
    """pipx reinstall (or its Python changed): same path, new files; the running service must restart."""
    program = fake_program(home / "venv" / "bin")
    installer = installer_for(user_paths(home, program), "darwin")
    installer.uid = 501
    install(installer)
    program.unlink()
    fake_program(home / "venv" / "bin")  # a new file where the old one was
    report = install(installer)
    plist_path = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert report.written == [] and "reinstalled" in report.actions[0]
    assert launchctl()[3:] == [f"print gui/501/{LABEL}", f"bootout gui/501/{LABEL}", f"bootstrap gui/501 {plist_path}"]
    assert not install(installer).changed  # and once noticed, not again


def test_install_after_the_program_moved_rewrites_the_units(home):
    """A pipx environment rebuilt elsewhere: the unit must follow the program."""
    old = fake_program(home / "old" / "bin")
    install(installer_for(user_paths(home, old), "linux"), start=False)
    shutil.rmtree(home / "old")
    new = fake_program(home / "new" / "bin")
    report = install(installer_for(user_paths(home, new), "linux"), start=False)
    assert home / ".config/systemd/user/omnimemory-learner.service" in report.written
    assert exec_start_program(home / ".config/systemd/user/omnimemory-learner.service") == new


def test_uninstall_removes_exactly_what_install_wrote(home):
    program = fake_program(home / "venv" / "bin")
    before = tree(home)
    installer = installer_for(user_paths(home, program), "linux")
    install(installer, start=False)
    # The user's own file in a directory install created: it and its directory stay.
    (home / ".config/omnimemory/learner.toml").write_text('api_url = "http://127.0.0.1:9"\n')
    state = home / ".local/state/omnimemory-learner"
    state.mkdir(parents=True)
    (state / "state.db").write_bytes(b"x")
    (home / ".omnimemory/logs/workflow-learner.log").write_text("a log line\n")
    report = uninstall(installer)
    assert report.warnings == [] or all("systemctl" in w for w in report.warnings)
    after = tree(home)
    kept = {
        ".config/omnimemory",
        ".config/omnimemory/learner.toml",
        ".local/state",
        ".local/state/omnimemory-learner",
        ".local/state/omnimemory-learner/state.db",
        ".local",
        ".omnimemory",
        ".omnimemory/logs",
        ".omnimemory/logs/workflow-learner.log",
    }
    assert set(after) - set(before) == kept
    assert set(before) - set(after) == set()


def test_uninstall_purge_removes_state_and_logs_and_nothing_else(home):
    program = fake_program(home / "venv" / "bin")
    before = tree(home)
    installer = installer_for(user_paths(home, program), "linux")
    install(installer, start=False)
    (home / ".local/state/omnimemory-learner").mkdir(parents=True)
    (home / ".local/state/omnimemory-learner/state.db").write_bytes(b"x")
    (home / ".omnimemory/logs/workflow-learner.log").write_text("a log line\n")
    uninstall(installer, learner_files(installer.paths.state_dir, home / ".omnimemory/logs/workflow-learner.log"))
    # .local/state is not ours (the learner's state directory is); it stays, empty.
    assert set(tree(home)) - set(before) == {".local", ".local/state"}


def test_purge_removes_only_the_learners_files_even_when_pointed_at_home(home, monkeypatch):
    """Hostile review: with log_file in the home directory, --purge removed the whole home."""
    monkeypatch.setenv("HOME", str(home))
    program = fake_program(home / "venv" / "bin")
    installer = installer_for(user_paths(home, program), "linux")
    install(installer, start=False)
    (home / "Documents").mkdir()
    (home / "Documents" / "thesis.txt").write_text("years of work\n")
    (home / "learner.log").write_text("ours\n")
    (home / "learner.log.1.gz").write_bytes(b"ours, rotated")
    (home / "memory-daemon.log").write_text("another program's\n")
    (home / "state.db").write_bytes(b"ours")
    report = uninstall(installer, learner_files(home, home / "learner.log"))
    assert (home / "Documents" / "thesis.txt").read_text() == "years of work\n"
    assert (home / "memory-daemon.log").exists() and (home / ".config" / "mine.conf").exists()
    assert not (home / "learner.log").exists() and not (home / "learner.log.1.gz").exists()
    assert not (home / "state.db").exists()
    assert home not in report.removed and home.is_dir()


def test_uninstall_without_a_manifest_touches_nothing(home):
    program = fake_program(home / "venv" / "bin")
    unit = home / ".config/systemd/user/omnimemory-learner.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/somewhere/else run\n")  # not ours to remove
    report = uninstall(installer_for(user_paths(home, program), "linux"))
    assert report.removed == [] and unit.exists()
    assert "no install manifest" in report.warnings[0]


def test_a_damaged_manifest_is_a_clear_error(home):
    program = fake_program(home / "venv" / "bin")
    installer = installer_for(user_paths(home, program), "linux")
    installer.paths.manifest.parent.mkdir(parents=True)
    installer.paths.manifest.write_text("{not json")
    with pytest.raises(InstallError, match="install manifest"):
        install(installer, start=False)
    installer.paths.manifest.write_text('{"version": 99}')
    with pytest.raises(InstallError, match="not an install manifest"):
        uninstall(installer)


def test_a_file_an_earlier_install_wrote_and_this_one_does_not_is_removed(home):
    program = fake_program(home / "venv" / "bin")
    installer = installer_for(user_paths(home, program), "linux")
    install(installer, start=False)
    import json

    manifest = json.loads(installer.paths.manifest.read_text())
    stale = home / ".config/systemd/user/omnimemory-learner-old.timer"
    stale.write_text("[Timer]\n")
    manifest["files"].append(str(stale))
    installer.paths.manifest.write_text(json.dumps(manifest))
    report = install(installer, start=False)
    assert report.removed == [stale] and not stale.exists()


def test_find_program_takes_the_one_beside_the_interpreter_without_resolving_links(tmp_path):
    venv_bin = tmp_path / "pipx/venvs/omnimemory-learner/bin"
    program = fake_program(venv_bin)
    python = venv_bin / "python"
    python.symlink_to(sys.executable)  # a venv's python is a link to the system's
    assert find_program(str(python)) == program
    program.unlink()
    bare = tmp_path / "bare" / "python3"
    bare.parent.mkdir()
    bare.symlink_to(sys.executable)
    try:
        found = find_program(str(bare))
    except InstallError as error:
        assert "install the package first" in str(error)
    else:  # an installed distribution's own script (importlib.metadata) is the other answer
        assert found.name == "omnimemory-learner" and os.access(found, os.X_OK)


def test_other_platforms_are_refused_plainly(home):
    with pytest.raises(InstallError, match="no service manager support for win32"):
        installer_for(user_paths(home, home / "p"), "win32")


def test_the_build_hook_puts_packaging_and_man_into_the_package(tmp_path):
    """setup.py's build_py copies the two trees; the wheel is this build tree zipped."""
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    shutil.rmtree(ROOT / "omnimemory_learner.egg-info", ignore_errors=True)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "lib/omnimemory_learner/_data"
    sources = [p for tree_name in ("packaging", "man") for p in (ROOT / tree_name).rglob("*") if p.is_file()]
    assert len(sources) >= 7
    for source in sources:
        copied = data / source.relative_to(ROOT)
        assert copied.read_bytes() == source.read_bytes(), source
    assert (tmp_path / "lib/omnimemory_learner/system/installer.py").exists()


def test_the_sdist_carries_packaging_man_and_the_build_hook(tmp_path):
    import tarfile

    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    shutil.rmtree(ROOT / "omnimemory_learner.egg-info", ignore_errors=True)
    assert result.returncode == 0, result.stderr
    (sdist,) = tmp_path.glob("omnimemory*learner-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for tree_name in ("packaging", "man"):
        for source in (ROOT / tree_name).rglob("*"):
            if source.is_file():
                assert str(source.relative_to(ROOT)) in names, source
    assert {"setup.py", "pyproject.toml", "CHANGELOG.md", "omnimemory_learner/system/installer.py"} <= names


def test_data_files_come_from_the_source_tree_when_not_installed():
    assert data_file("packaging/systemd/omnimemory-learner.service").read_text().startswith("#")
    with pytest.raises(InstallError, match="not in this installation"):
        data_file("packaging/nothing-here")


# -- macOS, with a fake launchctl -------------------------------------------------------

FAKE_LAUNCHCTL = textwrap.dedent("""\
    #!/bin/sh
    # Records each call; keeps "loaded" as a file; FAKE_OLD_LAUNCHCTL=1 has no bootstrap/bootout/print.
    echo "$*" >> "$FAKE_LAUNCHCTL_LOG"
    state="$FAKE_LAUNCHCTL_LOG.loaded"
    if [ "$FAKE_OLD_LAUNCHCTL" = 1 ]; then
        case "$1" in bootstrap|bootout|print) echo "Unrecognized subcommand: $1" >&2; exit 64;; esac
    fi
    case "$1" in
        print) [ -f "$state" ] && { echo "state = running"; exit 0; }; exit 113;;
        list) [ -f "$state" ] && { echo '"PID" = 4242;'; exit 0; }; exit 113;;
        bootstrap) cp "$3" "$FAKE_LAUNCHCTL_LOG.plist" && touch "$state";;
        load) cp "$3" "$FAKE_LAUNCHCTL_LOG.plist" && touch "$state";;
        bootout|unload) [ -f "$state" ] || exit 3; rm -f "$state";;
    esac
    """)


@pytest.fixture
def launchctl(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "launchctl"
    script.write_text(FAKE_LAUNCHCTL)
    script.chmod(0o755)
    log = tmp_path / "launchctl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LAUNCHCTL_LOG", str(log))
    monkeypatch.delenv("FAKE_OLD_LAUNCHCTL", raising=False)

    def calls():
        return log.read_text().splitlines() if log.exists() else []

    calls.log = log
    return calls


def test_launchd_install_bootstraps_a_valid_agent_once(home, launchctl):
    program = fake_program(home / "venv" / "bin")
    installer = installer_for(user_paths(home, program), "darwin")
    installer.uid = 501
    report = install(installer)
    plist_path = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert plist_path in report.written
    assert launchctl() == [f"print gui/501/{LABEL}", f"list {LABEL}", f"bootstrap gui/501 {plist_path}"]
    with plist_path.open("rb") as handle:
        plist = plistlib.load(handle)
    assert plist["Label"] == LABEL and plist["ProgramArguments"] == [str(program), "run"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["Umask"] == 0o077  # as the unit's UMask: the log and state are the user's alone
    assert plist["StandardErrorPath"] == f"{home}/.omnimemory/logs/workflow-learner.stderr.log"
    assert plist["EnvironmentVariables"]["PATH"].startswith(f"{program.parent}:")
    assert (launchctl.log.parent / "launchctl.log.plist").read_bytes() == plist_path.read_bytes()
    assert agent_program(plist_path) == program
    # Again: loaded and unchanged, so nothing but the question.
    again = install(installer)
    assert not again.changed and launchctl()[3:] == [f"print gui/501/{LABEL}"]
    assert installer.state().running


def test_launchd_reinstall_with_a_new_program_boots_out_then_in(home, launchctl):
    installer = installer_for(user_paths(home, fake_program(home / "one" / "bin")), "darwin")
    installer.uid = 501
    install(installer)
    moved = installer_for(user_paths(home, fake_program(home / "two" / "bin")), "darwin")
    moved.uid = 501
    install(moved)
    plist_path = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert launchctl()[3:] == [f"print gui/501/{LABEL}", f"bootout gui/501/{LABEL}", f"bootstrap gui/501 {plist_path}"]
    assert agent_program(plist_path) == home / "two/bin/omnimemory-learner"


def test_launchd_falls_back_to_load_and_unload(home, launchctl, monkeypatch):
    monkeypatch.setenv("FAKE_OLD_LAUNCHCTL", "1")
    program = fake_program(home / "venv" / "bin")
    before = tree(home)
    installer = installer_for(user_paths(home, program), "darwin")
    installer.uid = 501
    install(installer)
    plist_path = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert launchctl() == [
        f"print gui/501/{LABEL}",
        f"list {LABEL}",
        f"bootstrap gui/501 {plist_path}",
        f"load -w {plist_path}",
    ]
    assert installer.state().running
    report = uninstall(installer)
    assert launchctl()[-3:] == [f"list {LABEL}", f"bootout gui/501/{LABEL}", f"unload -w {plist_path}"]
    assert f"unloaded {LABEL}" in report.actions
    assert tree(home) == before


def test_launchd_uninstall_boots_out_and_leaves_the_home_as_it_was(home, launchctl):
    program = fake_program(home / "venv" / "bin")
    before = tree(home)
    installer = installer_for(user_paths(home, program), "darwin")
    installer.uid = 501
    install(installer)
    uninstall(installer)
    assert launchctl()[-1] == f"bootout gui/501/{LABEL}"
    assert not installer.state().running
    assert tree(home) == before


def test_under_launchd_a_bad_configuration_waits_for_the_fix_instead_of_exiting(tmp_path):
    """launchd would restart an exit 78 every ThrottleInterval; the learner waits instead."""
    api = RecordingAPI().start()
    try:
        db = create_db(tmp_path / "db" / "memory_data.db")
        config = tmp_path / "learner.toml"
        config.write_text("session_idle_minutes = -1\n")
        env = learner_env(tmp_path, api.url, db, XPC_SERVICE_NAME=LABEL)
        learner = start_learner(env, "--config", str(config))
        try:
            assert wait_until(lambda: "waiting for" in output_of(learner), 15), output_of(learner)
            assert learner.poll() is None and "session_idle_minutes" in output_of(learner)
            # Still the same bad file: still waiting, not restarted, not exited.
            assert not wait_until(lambda: learner.poll() is not None, 3)
            config.write_text("session_idle_minutes = 0.02\n")
            insert_events(
                db,
                [
                    ("2026-01-01T10:00:00", kind, "fixed")
                    for kind in ("file_open", "code_edit", "file_save", "git_commit")
                ],
            )
            assert api.wait_for(1, timeout=30), output_of(learner)
            assert api.sessions()[0][1]["session_id"] == "fixed"
        finally:
            learner.send_signal(signal.SIGTERM)
            learner.wait(15)
    finally:
        api.stop()


def test_outside_launchd_a_bad_configuration_still_exits_78(tmp_path):
    config = tmp_path / "learner.toml"
    config.write_text("session_idle_minutes = -1\n")
    env = learner_env(tmp_path, "http://127.0.0.1:9", tmp_path / "db.sqlite")
    env.pop("XPC_SERVICE_NAME", None)
    result = subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "--config", str(config), "run"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78 and "waiting for" not in result.stderr


def test_version_is_the_package_version():
    from omnimemory_learner import __version__

    result = subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "--version"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == f"omnimemory-learner {__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {__version__} " in changelog
    debian = (ROOT / "debian/changelog").read_text().splitlines()[0]
    assert debian.startswith(f"omnimemory-learner ({__version__}) ")


def test_doctor_names_a_unit_whose_program_is_gone_and_the_command_that_fixes_it(home, monkeypatch):
    from omnimemory_learner.cli import doctor

    program = fake_program(home / "pipx venv" / "bin")
    install(installer_for(user_paths(home, program), "linux"), start=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setattr(doctor.sys, "platform", "linux")
    first = doctor.check_service_manager()[0]
    assert first.level == doctor.OK and str(program) in first.message
    shutil.rmtree(home / "pipx venv")  # pipx uninstalled it, or the venv was rebuilt elsewhere
    first = doctor.check_service_manager()[0]
    assert first.level == doctor.PROBLEM and f"runs {program}, which is not there any more" in first.message
    assert "omnimemory-learner service install" in first.fix


# -- install then uninstall leaves any home as it found it -------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Places install writes into or next to, where a user may already have things of their own.
NEIGHBOURS = [
    ".config",
    ".config/systemd",
    ".config/systemd/user",
    ".config/omnimemory",
    ".local",
    ".local/share",
    ".local/share/man",
    ".local/share/man/man1",
    ".local/share/man/man5",
    ".local/share/omnimemory-learner",
    ".omnimemory",
    ".omnimemory/logs",
    "Library/LaunchAgents",
]
OWN_FILES = [
    ".config/systemd/user/other.service",
    ".config/omnimemory/learner.toml",
    ".local/share/man/man1/ls.1",
    ".omnimemory/logs/daemon.log",
    ".config/omnimemory/logrotate.conf.orig",
    "Library/LaunchAgents/com.example.other.plist",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dirs=st.sets(st.sampled_from(NEIGHBOURS)),
    files=st.sets(st.sampled_from(OWN_FILES)),
    platform=st.sampled_from(["linux", "darwin"]),
    installs=st.integers(1, 3),
    modes=st.sampled_from([0o700, 0o755, 0o750]),
)
def test_install_then_uninstall_restores_any_home(tmp_path_factory, dirs, files, platform, installs, modes):
    import tempfile as tempfile_module

    home = Path(tempfile_module.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    for directory in sorted(dirs):
        (home / directory).mkdir(parents=True, exist_ok=True)
        (home / directory).chmod(modes)
    for name in files:
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(f"the user's {name}\n")
    program = fake_program(home.parent / (home.name + "-venv") / "bin")
    before = {
        path: (kind, mode, (home / path).read_bytes() if not kind else b"") for path, (kind, mode) in tree(home).items()
    }
    installer = installer_for(
        user_paths(home, program), platform, run=lambda argv: subprocess.CompletedProcess(argv, 1, "", "")
    )
    for _ in range(installs):
        install(installer, start=False)
    uninstall(installer)
    after = {
        path: (kind, mode, (home / path).read_bytes() if not kind else b"") for path, (kind, mode) in tree(home).items()
    }
    assert after == before


def test_service_uninstall_and_status_work_with_an_invalid_configuration(tmp_path):
    home = tmp_path / "home"
    (home / ".config/omnimemory").mkdir(parents=True)
    (home / ".config/omnimemory/learner.toml").write_text("session_idle_minutes = -1\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
    status = subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "service", "status"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 3 and "using the default paths" in status.stdout, status.stdout + status.stderr
    assert "manifest: none" in status.stdout
    removed = subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "service", "uninstall"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert removed.returncode == 0 and "no install manifest" in removed.stdout, removed.stdout + removed.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "omnimemory_learner", "service", "install", "--no-start"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 78 and "session_idle_minutes" in refused.stderr
    assert {p.name for p in home.rglob("*")} == {".config", "omnimemory", "learner.toml"}  # nothing written
