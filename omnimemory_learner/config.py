"""Configuration: built-in defaults < TOML file < environment < command-line flags.

Every value remembers where it came from, for `check-config`.  Anything
invalid raises ConfigError naming the key, the value and the source; the CLI
turns that into exit status 78 (EX_CONFIG) before anything starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from .core.evidence import OUTCOME_RULES, SENT_OUTCOMES, OutcomeRule
from .core.mapping import build_event_map
from .core.privacy import PatternError, Privacy, compile_patterns

ENV_PREFIX = "OMNIMEMORY_LEARNER_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SESSION_ID_POLICIES = ("plain", "hashed", "omit")  # send_session_id (delivery/learn_api.py SessionIds)


class ConfigError(Exception):
    """An invalid configuration; the message names key, value and source."""


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _xdg(variable: str, fallback: str, env: Mapping[str, str]) -> Path:
    value = env.get(variable, "")
    # The XDG spec says relative values are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return _home() / fallback


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config", env) / "omnimemory" / "learner.toml"


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state", env) / "omnimemory-learner"


@dataclasses.dataclass(frozen=True)
class Config:
    db_path: Path
    api_url: str
    state_dir: Path
    log_file: Path
    session_idle_minutes: float = 5.0
    poll_interval_seconds: float = 30.0
    min_commands_for_learning: int = 3
    batch_size: int = 1000
    log_level: str = "INFO"
    max_session_commands: int = 1000
    max_open_sessions: int = 10000
    retry_max_seconds: float = 300.0
    request_timeout_seconds: float = 10.0
    session_retry_limit: int = 10
    session_retry_seconds: float = 3600.0
    watch: bool = True
    close_on: Tuple[str, ...] = ()
    fold_repeats: bool = False
    min_quality: float = 0.0
    outcome_rule: str = "evidence"
    inconclusive_outcome: str = "success"
    history_days: float = 30.0
    history_max_sessions: int = 100000
    reconcile: bool = True
    reconcile_interval_minutes: float = 10.0
    event_map: Mapping[str, str] = dataclasses.field(default_factory=build_event_map)
    # What may not be learned (core/privacy.py): glob patterns of session ids, exact event types.
    exclude_session_ids: Tuple[str, ...] = ()
    exclude_event_types: Tuple[str, ...] = ()
    send_session_id: str = "plain"  # "plain" | "hashed" | "omit": what a body's session_id tells the API
    # key -> "default" | "file PATH" | "environment VAR" | "flag --x"
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)
    config_file: Optional[Path] = dataclasses.field(default=None, compare=False)

    @property
    def idle_seconds(self) -> float:
        return self.session_idle_minutes * 60.0

    @property
    def outcome(self) -> OutcomeRule:
        return OutcomeRule(self.outcome_rule, self.inconclusive_outcome)

    @functools.cached_property
    def privacy(self) -> Privacy:
        """The exclusion rules, compiled once per configuration (a reload builds a new one)."""
        return Privacy(self.exclude_session_ids, self.exclude_event_types)


# key -> (kind, lower bound) for the scalar keys.
_SCALARS: Dict[str, tuple] = {
    "db_path": ("path", None),
    "api_url": ("url", None),
    "state_dir": ("path", None),
    "log_file": ("path", None),
    "session_idle_minutes": ("float", 0.0),
    "poll_interval_seconds": ("float", 0.0),
    "min_commands_for_learning": ("int", 1),
    "batch_size": ("int", 1),
    "log_level": ("level", None),
    "max_session_commands": ("int", 1),
    "max_open_sessions": ("int", 1),
    "retry_max_seconds": ("float", 0.0),
    "request_timeout_seconds": ("float", 0.0),
    "session_retry_limit": ("int", 1),
    "session_retry_seconds": ("float", 0.0),
    "watch": ("bool", None),
    "close_on": ("commands", None),
    "fold_repeats": ("bool", None),
    "min_quality": ("fraction", None),
    "outcome_rule": ("choice", OUTCOME_RULES),
    "inconclusive_outcome": ("choice", SENT_OUTCOMES),
    "history_days": ("float", 0.0),
    "history_max_sessions": ("int", 1),
    "reconcile": ("bool", None),
    "reconcile_interval_minutes": ("float_or_off", 0.0),  # 0: never periodically
    # -- what may not be learned (issue 26) --
    "exclude_session_ids": ("patterns", None),
    "exclude_event_types": ("names", None),
    "send_session_id": ("session_id_policy", None),
}
KEYS = (*tuple(_SCALARS), "event_map")

# Command-line flag -> key (the CLI defines the flags; this names them in messages).
FLAG_KEYS = {
    "--db": "db_path",
    "--api-url": "api_url",
    "--state-dir": "state_dir",
    "--log-level": "log_level",
    "--idle-minutes": "session_idle_minutes",
    "--poll-seconds": "poll_interval_seconds",
    "--min-commands": "min_commands_for_learning",
}


def defaults(env: Mapping[str, str] = os.environ) -> Dict[str, Any]:
    home = _home()
    return {
        "db_path": home / ".memory-daemon" / "storage" / "memory_data.db",
        "api_url": "http://localhost:8002",
        "state_dir": default_state_dir(env),
        "log_file": home / ".omnimemory" / "logs" / "workflow-learner.log",
    }


def _convert(key: str, value: Any, source: str, from_text: bool) -> Any:
    kind, lower = _SCALARS[key]
    given = value

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source}: invalid value {given!r} for '{key}': {why}")

    if kind in ("path", "url", "level"):
        if not isinstance(value, str) or not value.strip():
            raise bad("expected a non-empty string")
        return _TEXT_KINDS[kind](value.strip(), bad)
    if kind == "choice":
        if not isinstance(value, str) or value.strip().lower() not in lower:
            raise bad("expected one of " + ", ".join(lower))
        return value.strip().lower()
    if kind == "commands":
        return _commands(value, from_text, bad)
    if kind in ("patterns", "names"):
        return _exclusions(kind, value, from_text, bad)
    if kind == "session_id_policy":
        if not isinstance(value, str) or value.strip().lower() not in SESSION_ID_POLICIES:
            raise bad("expected one of " + ", ".join(SESSION_ID_POLICIES))
        return value.strip().lower()
    if kind == "fraction":
        return _fraction(value, from_text, bad)
    if kind == "bool":
        return _boolean(value, from_text, bad)
    return _number(kind, lower, value, from_text, bad)


_Bad = Callable[[str], ConfigError]


def _path(value: str, bad: _Bad) -> Path:
    if "\0" in value:
        raise bad("a path cannot hold a NUL character")
    return Path(os.path.expanduser(value)).absolute()


def _level(value: str, bad: _Bad) -> str:
    if value.upper() not in LOG_LEVELS:
        raise bad("expected one of " + ", ".join(LOG_LEVELS))
    return value.upper()


def _url(value: str, bad: _Bad) -> str:
    # httpx refuses ASCII controls and spaces in a URL on every request; other
    # characters (even odd Unicode ones) it percent-encodes: they are shown escaped.
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in value):
        raise bad("a URL has no spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # a port that is not a number from 0 to 65535 raises here
    except ValueError as error:  # an unclosed IPv6 bracket, a port such as 8002x
        raise bad(f"not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("expected an http:// or https:// URL with a host")
    if port == 0:
        raise bad("port 0 cannot be connected to")
    return value.rstrip("/")


_TEXT_KINDS: Dict[str, Callable[[str, _Bad], Any]] = {"path": _path, "level": _level, "url": _url}


def _commands(value: Any, from_text: bool, bad: _Bad) -> Tuple[str, ...]:
    # TOML: an array of command names; environment and flags: comma-separated.
    if from_text and isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item.strip() for item in value):
        raise bad("expected a list of non-empty command names")
    return tuple(item.strip() for item in value)


def _exclusions(kind: str, value: Any, from_text: bool, bad: _Bad) -> Tuple[str, ...]:
    # TOML: an array of strings; environment and flags: comma-separated. Kept as written (a
    # pattern's spaces are part of it), except that text drops the spaces around its commas.
    if from_text and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise bad("expected a list of non-empty strings")
    if kind == "patterns":
        try:
            compile_patterns(value)
        except PatternError as error:
            raise bad(str(error)) from None
    return tuple(value)


def _fraction(value: Any, from_text: bool, bad: _Bad) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad("expected a number from 0 to 1") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise bad("expected a number from 0 to 1")
    return float(value)


def _boolean(value: Any, from_text: bool, bad: _Bad) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    raise bad("expected true or false")


def _number(kind: str, lower: Any, value: Any, from_text: bool, bad: _Bad) -> Any:
    # TOML gives typed values; text (environment, flags) is parsed.
    if isinstance(value, bool):
        raise bad("expected a number")
    if from_text and isinstance(value, str):
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            raise bad("expected " + ("a whole number" if kind == "int" else "a number")) from None
    if kind == "int" and not isinstance(value, int):
        raise bad("expected a whole number")
    if kind != "int":
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("expected a finite number")
        value = float(value)
    # "float": above `lower`; "float_or_off" and "int": at least `lower` (0 turns a period off).
    if value <= lower if kind == "float" else value < lower:
        raise bad(f"must be {'greater than' if kind == 'float' else 'at least'} {lower:g}")
    return value


def _event_map(value: Any, source: str) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: invalid value {value!r} for 'event_map': expected a table")
    for event_type, command in value.items():
        if not event_type.strip() or not isinstance(command, str) or not command.strip():
            raise ConfigError(
                f"{source}: invalid value {command!r} for 'event_map.{event_type}': expected a non-empty command name"
            )
    return {event_type: command.strip() for event_type, command in value.items()}


def read_file(path: Path) -> Dict[str, Any]:
    """The TOML of a regular file of at most MAX_CONFIG_BYTES; anything else is a ConfigError.

    Opened non-blocking and checked before reading: a FIFO would block every
    command, a device such as /dev/zero would be read until memory runs out.
    """
    try:
        text = _read_regular(path, MAX_CONFIG_BYTES).decode("utf-8")
        return tomllib.loads(text)
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"configuration file {path} is not valid TOML: arrays or tables nested too deeply") from None


# A configuration is a few hundred bytes; a megabyte leaves room for any event_map.
MAX_CONFIG_BYTES = 1024 * 1024


def _read_regular(path: Path, limit: int) -> bytes:
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"configuration file {path} is not a regular file")
        if status.st_size > limit:
            raise ConfigError(f"configuration file {path} is larger than {limit // 1024} KiB")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while being read
            raise ConfigError(f"configuration file {path} is larger than {limit // 1024} KiB")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def load_config(
    config_path: Optional[Path] = None,
    env: Mapping[str, str] = os.environ,
    flags: Optional[Mapping[str, Any]] = None,
) -> Config:
    """Build the effective configuration.

    `config_path` is the --config file (must exist); without it the default
    file is read if present.  `flags` maps keys to command-line values (text).
    """
    values: Dict[str, Any] = dict(defaults(env))
    origins = dict.fromkeys(KEYS, "default")
    event_overrides: Dict[str, str] = {}

    if config_path is None and env.get(ENV_PREFIX + "CONFIG"):
        config_path = Path(env[ENV_PREFIX + "CONFIG"])
    explicit = config_path is not None
    path = Path(os.path.expanduser(str(config_path))) if explicit else default_config_path(env)
    used_file: Optional[Path] = None
    if explicit or path.exists():
        data = read_file(path)
        used_file = path
        source = f"file {path}"
        for key, value in data.items():
            if key == "event_map":
                event_overrides.update(_event_map(value, source))
            elif key in _SCALARS:
                values[key] = _convert(key, value, source, from_text=False)
            else:
                raise ConfigError(f"{source}: unknown key '{key}' (known keys: {', '.join(KEYS)})")
            origins[key] = source

    for key in _SCALARS:
        variable = ENV_PREFIX + key.upper()
        if variable in env:
            values[key] = _convert(key, env[variable], f"environment {variable}", from_text=True)
            origins[key] = f"environment {variable}"

    flag_names = {key: flag for flag, key in FLAG_KEYS.items()}
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in _SCALARS:
            raise ConfigError(f"unknown configuration key '{key}'")
        source = f"flag {flag_names.get(key, key)}"
        values[key] = _convert(key, value, source, from_text=True)
        origins[key] = source

    event_map = build_event_map(event_overrides)
    unknown = [name for name in values.get("close_on", ()) if name not in set(event_map.values())]
    if unknown:
        raise ConfigError(
            f"{origins['close_on']}: invalid value for 'close_on': {', '.join(map(repr, unknown))} "
            f"is not a command of the event map (commands: {', '.join(sorted(set(event_map.values())))})"
        )
    return Config(event_map=event_map, origins=origins, config_file=used_file, **values)


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, so any value reads back."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


_TOML_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def to_toml(config: Config, with_origins: bool = True) -> str:
    """The effective configuration as TOML, each value commented with its origin."""

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, tuple):
            return "[" + ", ".join(toml_string(item) for item in value) + "]"
        return toml_string(str(value))

    lines = []
    for key in _SCALARS:
        line = f"{key} = {literal(getattr(config, key))}"
        if with_origins:
            line += f"  # {config.origins.get(key, 'default')}"
        lines.append(line)
    lines.append("")
    header = "[event_map]"
    if with_origins:
        header += f"  # defaults, {config.origins.get('event_map', 'default')}"
    lines.append(header)
    for event_type, command in sorted(config.event_map.items()):
        lines.append(f"{literal(event_type)} = {literal(command)}")
    return "\n".join(lines) + "\n"
