"""Configuration files as a user's editor, a typo or a hostile path leave them: a clear exit 78, never a hang or a crash.

At start and in `check-config` an invalid file exits 78 naming what is wrong;
a reload (SIGHUP) of the same file keeps the running service on its old
configuration.
"""

import os
import signal
import time

import pytest
from helpers import create_db, learner_env, output_of, run_learner, start_learner, stop, wait_until

from omnimemory_learner.cli.exits import EX_CONFIG
from omnimemory_learner.config import MAX_CONFIG_BYTES, ConfigError, load_config

NESTED = "x = " + "[" * 5000 + "]" * 5000 + "\n"
# (file text, what the error names)
INVALID = {
    "an unclosed IPv6 bracket": ('api_url = "http://[::1:8002"\n', "api_url"),
    "a typo in the port": ('api_url = "http://127.0.0.1:8002x"\n', "8002x"),
    "a port out of range": ('api_url = "http://127.0.0.1:80020"\n', "api_url"),
    "port 0": ('api_url = "http://127.0.0.1:0"\n', "port 0"),
    "arrays nested past the parser's depth": (NESTED, "nested too deeply"),
    "a NUL byte in log_file": ('log_file = "/tmp/learner\\u0000.log"\n', "NUL"),
    "a NUL byte in state_dir": ('state_dir = "/tmp/state\\u0000"\n', "state_dir"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_file_is_a_config_error(tmp_path, case):
    text, named = INVALID[case]
    path = tmp_path / "learner.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    assert named in str(raised.value)


def test_a_valid_ipv6_url_and_port_are_kept(tmp_path):
    path = tmp_path / "learner.toml"
    path.write_text('api_url = "http://[::1]:8002/"\n')
    assert load_config(path, env={}).api_url == "http://[::1]:8002"


def _check_config(tmp_path, path):
    env = learner_env(tmp_path, "http://127.0.0.1:9", tmp_path / "db.sqlite")
    started = time.monotonic()
    result = run_learner(env, "--config", str(path), "check-config", timeout=30)
    return result, time.monotonic() - started


@pytest.mark.parametrize("case", ["a typo in the port", "an unclosed IPv6 bracket", "a NUL byte in log_file"])
def test_check_config_and_start_exit_78(tmp_path, case):
    path = tmp_path / "learner.toml"
    path.write_text(INVALID[case][0])
    result, _ = _check_config(tmp_path, path)
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    env = learner_env(tmp_path, "http://127.0.0.1:9", tmp_path / "db.sqlite")
    started = run_learner(env, "--config", str(path), "run", timeout=30)
    assert started.returncode == EX_CONFIG and "Traceback" not in started.stderr


def test_a_fifo_as_the_configuration_does_not_hang(tmp_path):
    fifo = tmp_path / "learner.toml"
    os.mkfifo(fifo)
    result, took = _check_config(tmp_path, fifo)
    assert result.returncode == EX_CONFIG and "not a regular file" in result.stderr
    assert took < 20


def test_a_device_is_not_read_until_memory_runs_out(tmp_path):
    result, _ = _check_config(tmp_path, "/dev/zero")
    assert result.returncode == EX_CONFIG and "not a regular file" in result.stderr


def test_a_file_over_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / "learner.toml"
    with open(path, "wb") as file:
        file.truncate(MAX_CONFIG_BYTES + 1)  # sparse: its size alone refuses it
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path, env={})
    path.write_text("# comment\n" * 10)
    assert load_config(path, env={}).config_file == path


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text("min_commands_for_learning = 4\n")
    link = tmp_path / "learner.toml"
    link.symlink_to(real)
    assert load_config(link, env={}).min_commands_for_learning == 4


@pytest.mark.slow
def test_a_reload_of_each_invalid_file_keeps_the_service_and_its_configuration(tmp_path, api):
    db = create_db(tmp_path / "db" / "memory_data.db")
    config = tmp_path / "learner.toml"
    config.write_text("min_commands_for_learning = 3\n")
    env = learner_env(tmp_path, api.url, db)
    learner = start_learner(env, "--config", str(config))
    try:
        assert wait_until(lambda: "Procedural API" in output_of(learner), timeout=30)
        cases = ["an unclosed IPv6 bracket", "arrays nested past the parser's depth", "a NUL byte in log_file"]
        for number, case in enumerate(cases, start=1):
            config.write_text(INVALID[case][0])
            learner.send_signal(signal.SIGHUP)
            assert wait_until(
                lambda number=number: output_of(learner).count("was not applied") >= number, timeout=20
            ), output_of(learner)
            assert learner.poll() is None, f"died on a reload of {case}"
    finally:
        code, out = stop(learner)
    assert code == 0, out
    assert "Traceback" not in out
