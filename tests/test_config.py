"""Configuration sources, precedence and every rejection (pyfakefs: paths only)."""

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnimemory_learner.cli import main as cli
from omnimemory_learner.cli.exits import EX_CONFIG
from omnimemory_learner.config import ConfigError, load_config, to_toml

HOME = "/home/dev"


@pytest.fixture
def env(fs, monkeypatch):
    monkeypatch.setenv("HOME", HOME)
    fs.create_dir(HOME)
    return {"HOME": HOME}


def write(fs, path, text):
    fs.create_file(path, contents=text)
    return Path(path)


def test_defaults_are_the_originals(env):
    config = load_config(env=env)
    assert config.session_idle_minutes == 5
    assert config.idle_seconds == 300
    assert config.poll_interval_seconds == 30
    assert config.min_commands_for_learning == 3
    assert config.api_url == "http://localhost:8002"
    assert config.db_path == Path(HOME, ".memory-daemon/storage/memory_data.db")
    assert config.batch_size == 1000
    assert config.state_dir == Path(HOME, ".local/state/omnimemory-learner")
    assert config.log_file == Path(HOME, ".omnimemory/logs/workflow-learner.log")
    assert config.max_session_commands == 1000 and config.max_open_sessions == 10000
    assert len(config.event_map) == 15
    assert set(config.origins.values()) == {"default"}


def test_xdg_directories_are_honoured(env):
    env = dict(env, XDG_STATE_HOME="/xdg/state", XDG_CONFIG_HOME="/xdg/config")
    write_path = Path("/xdg/config/omnimemory/learner.toml")
    os.makedirs(write_path.parent)
    write_path.write_text("batch_size = 50\n")
    config = load_config(env=env)
    assert config.state_dir == Path("/xdg/state/omnimemory-learner")
    assert config.batch_size == 50 and config.config_file == write_path


def test_relative_xdg_values_are_ignored(env):
    config = load_config(env=dict(env, XDG_STATE_HOME="relative/state"))
    assert config.state_dir == Path(HOME, ".local/state/omnimemory-learner")


def test_precedence_default_file_environment_flag(fs, env):
    path = write(
        fs,
        "/etc/learner.toml",
        'session_idle_minutes = 0.05\nbatch_size = 10\napi_url = "http://127.0.0.1:9"\n'
        'db_path = "~/events.db"\n[event_map]\nfile_open = "view_file"\nlint_run = "run_linter"\n',
    )
    env = dict(env, OMNIMEMORY_LEARNER_BATCH_SIZE="20", OMNIMEMORY_LEARNER_API_URL="https://api.example:8443/")
    config = load_config(path, env, {"api_url": "http://127.0.0.1:8002", "poll_interval_seconds": None})
    assert config.session_idle_minutes == 0.05 and config.idle_seconds == pytest.approx(3.0)
    assert config.batch_size == 20
    assert config.api_url == "http://127.0.0.1:8002"
    assert config.db_path == Path(HOME, "events.db")
    assert config.event_map["file_open"] == "view_file" and config.event_map["lint_run"] == "run_linter"
    assert config.event_map["git_push"] == "push_changes"
    assert config.origins["session_idle_minutes"] == f"file {path}"
    assert config.origins["batch_size"] == "environment OMNIMEMORY_LEARNER_BATCH_SIZE"
    assert config.origins["api_url"] == "flag --api-url"
    assert config.origins["poll_interval_seconds"] == "default"
    text = to_toml(config)
    assert 'api_url = "http://127.0.0.1:8002"  # flag --api-url' in text
    assert '"lint_run" = "run_linter"' in text


def test_config_file_from_environment(fs, env):
    path = write(fs, "/cfg/other.toml", "min_commands_for_learning = 5\n")
    assert load_config(env=dict(env, OMNIMEMORY_LEARNER_CONFIG=str(path))).min_commands_for_learning == 5


def test_bool_and_level_values(fs, env):
    config = load_config(env=dict(env, OMNIMEMORY_LEARNER_WATCH="no", OMNIMEMORY_LEARNER_LOG_LEVEL="debug"))
    assert config.watch is False and config.log_level == "DEBUG"


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("unknown_key = 1\n", "unknown_key", None),
        ("session_idle_minutes = 0\n", "session_idle_minutes", "0"),
        ("session_idle_minutes = -2.5\n", "session_idle_minutes", "-2.5"),
        ("session_idle_minutes = nan\n", "session_idle_minutes", "nan"),
        ('poll_interval_seconds = "soon"\n', "poll_interval_seconds", "'soon'"),
        ("min_commands_for_learning = 2.5\n", "min_commands_for_learning", "2.5"),
        ("min_commands_for_learning = true\n", "min_commands_for_learning", "True"),
        ("batch_size = 0\n", "batch_size", "0"),
        ('api_url = "ftp://localhost:8002"\n', "api_url", "'ftp://localhost:8002'"),
        ('api_url = "localhost:8002"\n', "api_url", "'localhost:8002'"),
        ('api_url = "http://"\n', "api_url", "'http://'"),
        ('log_level = "LOUD"\n', "log_level", "'LOUD'"),
        ('db_path = ""\n', "db_path", "''"),
        ("watch = 1\n", "watch", "1"),
        ("[event_map]\nfile_open = 3\n", "event_map.file_open", "3"),
        ('[event_map]\nfile_open = ""\n', "event_map.file_open", "''"),
        ('event_map = "x"\n', "event_map", "'x'"),
    ],
)
def test_invalid_file_values_name_key_value_and_file(fs, env, text, key, value):
    path = write(fs, "/cfg/learner.toml", text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env)
    message = str(raised.value)
    assert str(path) in message and key in message
    if value is not None:
        assert value in message


@pytest.mark.parametrize(
    "variable, value",
    [
        ("OMNIMEMORY_LEARNER_BATCH_SIZE", "many"),
        ("OMNIMEMORY_LEARNER_SESSION_IDLE_MINUTES", "-1"),
        ("OMNIMEMORY_LEARNER_API_URL", "file:///etc/passwd"),
        ("OMNIMEMORY_LEARNER_WATCH", "maybe"),
    ],
)
def test_invalid_environment_values_are_rejected(env, variable, value):
    with pytest.raises(ConfigError) as raised:
        load_config(env=dict(env, **{variable: value}))
    assert variable in str(raised.value) and value in str(raised.value)


def test_invalid_flag_value_is_rejected(env):
    with pytest.raises(ConfigError, match="flag --min-commands.*'zero'.*min_commands_for_learning"):
        load_config(env=env, flags={"min_commands_for_learning": "zero"})


def test_missing_named_file_is_an_error_but_missing_default_file_is_not(fs, env):
    with pytest.raises(ConfigError, match="cannot read configuration file /nowhere.toml"):
        load_config(Path("/nowhere.toml"), env)
    assert load_config(env=env).config_file is None


def test_unreadable_and_invalid_toml_files(fs, env):
    path = write(fs, "/cfg/bad.toml", "this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env)
    locked = write(fs, "/cfg/locked.toml", "batch_size = 5\n")
    os.chmod(locked, 0o000)
    if os.getuid() != 0:  # root reads anything, also in pyfakefs
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(locked, env)


def test_cli_exits_78_before_anything_starts(fs, env, monkeypatch, capsys):
    monkeypatch.setattr(os, "environ", dict(env))
    write(fs, "/cfg/bad.toml", "session_idle_minutes = -1\n")
    assert cli.main(["--config", "/cfg/bad.toml", "run"]) == EX_CONFIG
    error = capsys.readouterr().err
    assert "configuration error" in error and "/cfg/bad.toml" in error and "session_idle_minutes" in error
    assert not os.path.exists(HOME + "/.local/state/omnimemory-learner")  # nothing started
    assert cli.main(["check-config", "--api-url", "gopher://x"]) == EX_CONFIG


def test_check_config_prints_effective_toml_that_parses(fs, env, monkeypatch, capsys):
    import tomllib

    monkeypatch.setattr(os, "environ", dict(env, OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS="7"))
    assert cli.main(["check-config", "--idle-minutes", "2"]) == 0
    out = capsys.readouterr().out
    parsed = tomllib.loads(out)
    assert parsed["session_idle_minutes"] == 2.0 and parsed["poll_interval_seconds"] == 7.0
    assert "# flag --idle-minutes" in out and "# environment OMNIMEMORY_LEARNER_POLL_INTERVAL_SECONDS" in out
    assert len(parsed["event_map"]) == 15


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_check_config_strings_read_back_whatever_they_hold(text):
    from omnimemory_learner.config import toml_string

    assert tomllib.loads(f"key = {toml_string(text)}\n")["key"] == text
    assert "\n" not in toml_string(text)


@pytest.mark.parametrize("url", ["http://localhost:8002/a\nb", "http://local\x1bhost:8002", "http://a b:1"])
def test_an_api_url_with_control_characters_or_spaces_is_invalid(url):
    with pytest.raises(ConfigError, match="no spaces or control characters"):
        load_config(None, {"OMNIMEMORY_LEARNER_API_URL": url, "HOME": "/tmp"}, {})


def test_the_keys_of_real_time_learning_quality_and_history(tmp_path):
    path = tmp_path / "learner.toml"
    path.write_text(
        'close_on = ["push_changes", "commit_changes"]\nfold_repeats = true\nmin_quality = 0.35\n'
        "history_days = 7\nhistory_max_sessions = 5000\n"
    )
    config = load_config(path, {"HOME": str(tmp_path)}, {})
    assert (config.close_on, config.fold_repeats, config.min_quality) == (
        ("push_changes", "commit_changes"),
        True,
        0.35,
    )
    assert (config.history_days, config.history_max_sessions) == (7.0, 5000)
    assert 'close_on = ["push_changes", "commit_changes"]' in to_toml(config)
    from_env = load_config(
        None,
        {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_CLOSE_ON": "push_changes,", "OMNIMEMORY_LEARNER_MIN_QUALITY": "0"},
        {},
    )
    assert from_env.close_on == ("push_changes",) and from_env.min_quality == 0.0
    assert load_config(None, {"HOME": str(tmp_path)}, {}).close_on == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ('close_on = "push_changes"', "expected a list of non-empty command names"),
        ('close_on = ["push_changes", ""]', "expected a list of non-empty command names"),
        ('close_on = ["git_push"]', "'git_push' is not a command of the event map"),
        ("min_quality = 1.5", "expected a number from 0 to 1"),
        ("min_quality = -0.1", "expected a number from 0 to 1"),
        ("history_days = 0", "must be greater than 0"),
        ("history_max_sessions = 0", "must be at least 1"),
        ("fold_repeats = 1", "expected true or false"),
    ],
)
def test_bad_values_of_the_new_keys_name_the_key(tmp_path, text, message):
    path = tmp_path / "learner.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, {"HOME": str(tmp_path)}, {})


def test_close_on_may_name_a_command_of_the_users_own_event_map(tmp_path):
    path = tmp_path / "learner.toml"
    path.write_text('close_on = ["deploy"]\n[event_map]\ndeploy_done = "deploy"\n')
    assert load_config(path, {"HOME": str(tmp_path)}, {}).close_on == ("deploy",)


def test_exclusions_from_the_file_and_the_environment_and_check_config_shows_them(fs, env, monkeypatch, capsys):
    path = write(
        fs, "/cfg/l.toml", 'exclude_session_ids = ["scratch-*", "client [x]"]\nexclude_event_types = ["git_push"]\n'
    )
    config = load_config(path, env)
    assert config.exclude_session_ids == ("scratch-*", "client [x]") and config.exclude_event_types == ("git_push",)
    assert config.privacy is config.privacy  # compiled once per configuration
    assert config.privacy.excludes_id("scratch-1") and config.privacy.excludes_id("client x")
    from_env = load_config(None, dict(env, OMNIMEMORY_LEARNER_EXCLUDE_SESSION_IDS="a*, b?"))
    assert from_env.exclude_session_ids == ("a*", "b?")
    monkeypatch.setattr(os, "environ", dict(env))
    assert cli.main(["--config", "/cfg/l.toml", "check-config"]) == 0
    parsed = tomllib.loads(capsys.readouterr().out)
    assert parsed["exclude_session_ids"] == ["scratch-*", "client [x]"] and parsed["exclude_event_types"] == [
        "git_push"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('exclude_session_ids = ["ok-*", "bad-[x"]', "'bad-\\[x'.*never closed"),
        ('exclude_session_ids = [""]', "non-empty"),
        ("exclude_session_ids = 3", "list of non-empty strings"),
        ('exclude_event_types = ["git_push", 1]', "list of non-empty strings"),
    ],
)
def test_an_invalid_exclusion_names_the_key_and_the_pattern_and_exits_78(fs, env, monkeypatch, capsys, text, message):
    path = write(fs, "/cfg/x.toml", text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, env)
    monkeypatch.setattr(os, "environ", dict(env))
    assert cli.main(["--config", "/cfg/x.toml", "check-config"]) == EX_CONFIG
    assert "exclude_" in capsys.readouterr().err
