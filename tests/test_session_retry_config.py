"""The two keys that park a failing session: every source, every rejection, reload."""

import pytest
from helpers import learner_env, run_learner

from omnimemory_learner.config import ConfigError, load_config
from omnimemory_learner.delivery import Deliverer


def test_defaults_file_and_environment(tmp_path):
    assert (
        load_config(env={"HOME": str(tmp_path)}).session_retry_limit,
        load_config(env={"HOME": str(tmp_path)}).session_retry_seconds,
    ) == (10, 3600.0)
    path = tmp_path / "learner.toml"
    path.write_text("session_retry_limit = 4\nsession_retry_seconds = 90.5\n")
    config = load_config(path, {"HOME": str(tmp_path)})
    assert (config.session_retry_limit, config.session_retry_seconds) == (4, 90.5)
    assert config.origins["session_retry_limit"] == f"file {path}"
    config = load_config(path, {"HOME": str(tmp_path), "OMNIMEMORY_LEARNER_SESSION_RETRY_LIMIT": "7"})
    assert config.session_retry_limit == 7
    assert config.origins["session_retry_limit"] == "environment OMNIMEMORY_LEARNER_SESSION_RETRY_LIMIT"


@pytest.mark.parametrize(
    "text, value",
    [
        ("session_retry_limit = 0\n", "0"),
        ("session_retry_limit = 2.5\n", "2.5"),
        ('session_retry_limit = "3"\n', "'3'"),
        ("session_retry_seconds = 0\n", "0"),
        ("session_retry_seconds = -1\n", "-1"),
        ("session_retry_seconds = nan\n", "nan"),
        ("session_retry_seconds = true\n", "True"),
    ],
)
def test_bad_values_name_key_value_and_file(tmp_path, text, value):
    path = tmp_path / "learner.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, {"HOME": str(tmp_path)})
    assert str(path) in str(raised.value) and text.split(" ")[0] in str(raised.value) and value in str(raised.value)


def test_check_config_shows_them_and_exits_78_on_a_bad_one(tmp_path):
    env = learner_env(tmp_path, "http://127.0.0.1:9", tmp_path / "db", OMNIMEMORY_LEARNER_SESSION_RETRY_SECONDS=600)
    shown = run_learner(env, "check-config")
    assert shown.returncode == 0
    assert "session_retry_limit = 10  # default" in shown.stdout
    assert "session_retry_seconds = 600.0  # environment OMNIMEMORY_LEARNER_SESSION_RETRY_SECONDS" in shown.stdout
    env["OMNIMEMORY_LEARNER_SESSION_RETRY_LIMIT"] = "none"
    refused = run_learner(env, "check-config")
    assert refused.returncode == 78 and "session_retry_limit" in refused.stderr


def test_a_reload_takes_the_new_limits(tmp_path):
    deliverer = Deliverer.from_config(load_config(env={"HOME": str(tmp_path)}))
    assert (deliverer.health.limit, deliverer.health.limit_seconds) == (10, 3600.0)
    path = tmp_path / "learner.toml"
    path.write_text("session_retry_limit = 2\nsession_retry_seconds = 5\nrequest_timeout_seconds = 3\n")
    deliverer.apply_config(load_config(path, {"HOME": str(tmp_path)}))
    assert (deliverer.health.limit, deliverer.health.limit_seconds, deliverer.timeout) == (2, 5.0, 3.0)


def test_the_service_builds_its_deliverer_with_the_keys(tmp_path):
    """The loop makes the Deliverer: the two keys must reach it, not only backfill's."""
    from omnimemory_learner.service import Service

    path = tmp_path / "learner.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\ndb_path = "{tmp_path / "none.db"}"\n'
        "session_retry_limit = 4\nsession_retry_seconds = 90.5\n"
    )
    service = Service(load_config(path, {"HOME": str(tmp_path)}))
    assert service._open_state()
    try:
        assert (service.deliverer.health.limit, service.deliverer.health.limit_seconds) == (4, 90.5)
    finally:
        service.pipeline.close()
        service.lock.release()
