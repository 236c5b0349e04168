"""Tests for aaeventd.config: models, validation messages, lookup and path rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from aaeventd.config import (
    RESTART_KEYS,
    AuthConfig,
    Config,
    SourcesConfig,
    WebSocketConfig,
    changed_restart_keys,
    is_loopback_host,
    load_config,
    parse_config,
    resolve_journal_dir,
    resolve_socket_path,
    resolve_token_file,
    with_restart_keys_from,
)
from aaeventd.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "aaeventd.yaml"


def parse(text: str) -> Config:
    """Parse a YAML snippet the way load_config does."""
    return parse_config(yaml.safe_load(text))


def parse_error(text: str) -> ConfigError:
    """The ConfigError a YAML snippet raises."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (creating parents) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def remote_config(**websocket: Any) -> Config:
    """A config bound to 0.0.0.0 with allow_remote and a token."""
    return Config(
        websocket=WebSocketConfig(host="0.0.0.0", allow_remote=True, **websocket),
        auth=AuthConfig(token_file="/etc/aaeventd/token"),
    )


# --- defaults and the shipped file ----------------------------------------------------


def test_defaults_match_protocol() -> None:
    """Config() carries the PROTOCOL §7 defaults in every section."""
    cfg = Config()
    assert cfg.sources.socket_path is None
    assert cfg.sources.allowed_uids == ()
    assert cfg.sources.max_line_bytes == 1_048_576
    assert cfg.sources.max_connections == 64
    assert cfg.websocket.host == "localhost"  # 127.0.0.1 and ::1 (PROTOCOL §2)
    assert cfg.websocket.port == 9876
    assert cfg.websocket.allow_remote is False
    assert cfg.websocket.allowed_origins == ("vscode-webview://*", "vscode-file://*")
    assert cfg.websocket.max_clients == 256
    assert cfg.websocket.max_message_bytes == 65_536
    assert cfg.websocket.ping_interval_seconds == 20
    assert cfg.websocket.ping_timeout_seconds == 20
    assert cfg.websocket.slow_client_buffer_bytes == 4_194_304
    assert cfg.auth.token_file is None
    assert cfg.events.allow_unknown_types is True
    assert cfg.events.replay_buffer == 10_000
    assert cfg.confirmations.default_timeout_seconds == 60
    assert cfg.confirmations.max_timeout_seconds == 3600
    assert cfg.confirmations.max_pause_seconds == 600
    assert cfg.journal.enabled is True
    assert cfg.journal.directory is None
    assert cfg.journal.max_file_bytes == 67_108_864
    assert cfg.journal.max_files == 8
    assert cfg.journal.fsync == "interval"
    assert cfg.logging.level == "INFO"
    assert cfg.logging.format == "text"
    assert cfg.logging.redact_fields == ("token", "password", "secret", "authorization")


@pytest.mark.parametrize("data", [None, {}])
def test_empty_document_is_defaults(data: object) -> None:
    """An empty document (None) or an empty mapping gives the built-in defaults."""
    assert parse_config(data) == Config()


def test_shipped_yaml_parses_to_defaults() -> None:
    """The shipped config/aaeventd.yaml is exactly the built-in defaults."""
    cfg, source = load_config(SHIPPED, env={})
    assert cfg == Config()
    assert source == str(SHIPPED)


def test_shipped_yaml_lists_every_key() -> None:
    """The shipped file names every field of every model, and nothing else."""
    document = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))

    def walk(model: type[BaseModel], mapping: dict[str, Any], prefix: str) -> None:
        assert set(mapping) == set(model.model_fields), prefix or "top level"
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                assert isinstance(mapping[name], dict), f"{prefix}{name}"
                walk(annotation, mapping[name], f"{prefix}{name}.")

    walk(Config, document, "")


def test_shipped_yaml_comments_every_key() -> None:
    """Every key line of the shipped file carries a comment."""
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    leaves = [line for line in lines if line.startswith("  ") and ":" in line]
    assert leaves
    assert all("#" in line for line in leaves), [line for line in leaves if "#" not in line]


# --- unknown keys and wrong types ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus: 1", "bogus"),
        ("websocket:\n  bogus: 1", "websocket.bogus"),
        ("journal:\n  fsnyc: always", "journal.fsnyc"),
    ],
)
def test_unknown_key_is_refused(text: str, key: str) -> None:
    """An unknown key, at top level or in a section, is refused with its dotted path."""
    error = parse_error(text)
    assert error.key == key
    assert error.reason.startswith("unknown key")


def test_unknown_key_suggests_close_match() -> None:
    """A misspelt key gets a 'did you mean' hint."""
    error = parse_error("websocket:\n  prot: 1")
    assert "did you mean 'port'" in error.reason


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('websocket:\n  port: "9876"', "websocket.port", "expected an integer, got str '9876'"),
        ("sources:\n  max_connections: true", "sources.max_connections", "got bool true"),
        ("journal:\n  fsync: sometimes", "journal.fsync", "got str 'sometimes'"),
        ("sources:\n  allowed_uids: [1000, x]", "sources.allowed_uids.1", "expected an integer"),
        ("sources:\n  allowed_uids: 1000", "sources.allowed_uids", "expected a list"),
        ("websocket: 5", "websocket", "expected a mapping"),
        ('websocket:\n  allow_remote: "yes"', "websocket.allow_remote", "true or false"),
        ("websocket:\n  host: 127", "websocket.host", "expected a string"),
        ("websocket:\n  ping_interval_seconds: true", "websocket.ping_interval_seconds", "number"),
        ("logging:\n  level: verbose", "logging.level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("logging:\n  format: xml", "logging.format", "got str 'xml'"),
        ("1: x", "1", "keys must be strings"),
    ],
)
def test_wrong_type_names_dotted_key(text: str, key: str, reason: str) -> None:
    """A value of the wrong type is refused, never coerced, naming its dotted key."""
    error = parse_error(text)
    assert error.key == key
    assert reason in error.reason


def test_int_accepted_for_seconds() -> None:
    """An integer is a valid number of seconds, stored as a float."""
    cfg = parse(
        "confirmations:\n  default_timeout_seconds: 5\nwebsocket:\n  ping_timeout_seconds: 2.5"
    )
    assert cfg.confirmations.default_timeout_seconds == 5.0
    assert isinstance(cfg.confirmations.default_timeout_seconds, float)
    assert cfg.websocket.ping_timeout_seconds == 2.5


def test_null_ping_disables_pings() -> None:
    """null for the ping interval and timeout is accepted (pings off)."""
    cfg = parse("websocket:\n  ping_interval_seconds: null\n  ping_timeout_seconds: null")
    assert cfg.websocket.ping_interval_seconds is None
    assert cfg.websocket.ping_timeout_seconds is None


def test_null_section_is_defaults() -> None:
    """A section with every key commented out (null) keeps its defaults."""
    assert parse("websocket:\n  # port: 1234\njournal:\n") == Config()


def test_several_errors_are_all_reported() -> None:
    """The first error gives .key; the others follow as 'also:' lines."""
    error = parse_error("websocket:\n  port: -1\n  max_clients: 0\nbogus: 1")
    assert error.key == "websocket.port"
    assert "also: websocket.max_clients: must be >= 1, got 0" in error.reason
    assert "also: bogus: unknown key" in error.reason
    assert str(error).startswith("websocket.port: must be >= 0, got -1")


# --- impossible values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("websocket.port", 65536),
        ("websocket.port", -1),
        ("sources.max_line_bytes", 63),
        ("sources.max_connections", 0),
        ("sources.allowed_uids.0", -1),
        ("sources.allowed_uids.0", 2**32 - 1),
        ("websocket.max_clients", 0),
        ("websocket.max_message_bytes", 1023),
        ("websocket.slow_client_buffer_bytes", 1023),
        ("websocket.ping_interval_seconds", 0),
        ("websocket.ping_timeout_seconds", -1.5),
        ("websocket.ping_interval_seconds", float("inf")),
        ("events.replay_buffer", -1),
        ("confirmations.default_timeout_seconds", 0),
        ("confirmations.max_timeout_seconds", -5),
        ("confirmations.max_pause_seconds", 0),
        ("confirmations.max_pause_seconds", float("nan")),
        ("journal.max_file_bytes", 4095),
        ("journal.max_files", 0),
    ],
)
def test_impossible_value_is_refused(key: str, value: object) -> None:
    """A value out of its range is refused with the dotted key."""
    section, name, *index = key.split(".")
    data = {section: {name: [value] if index else value}}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key
    assert "must be" in info.value.reason


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("websocket.port", 0),
        ("websocket.port", 65535),
        ("sources.max_line_bytes", 64),
        ("websocket.max_message_bytes", 1024),
        ("events.replay_buffer", 0),
        ("journal.max_file_bytes", 4096),
        ("journal.max_files", 1),
    ],
)
def test_boundary_value_is_accepted(key: str, value: int) -> None:
    """The smallest (or largest) allowed value is accepted."""
    section, name = key.split(".")
    cfg = parse_config({section: {name: value}})
    assert getattr(getattr(cfg, section), name) == value


def test_default_timeout_above_max_is_refused() -> None:
    """confirmations.default_timeout_seconds may not exceed max_timeout_seconds."""
    error = parse_error("confirmations:\n  default_timeout_seconds: 120\n  max_timeout_seconds: 60")
    assert error.key == "confirmations.default_timeout_seconds"
    assert "max_timeout_seconds" in error.reason


def test_default_timeout_equal_to_max_is_accepted() -> None:
    """default_timeout_seconds equal to max_timeout_seconds is fine."""
    cfg = parse("confirmations:\n  default_timeout_seconds: 60\n  max_timeout_seconds: 60")
    assert cfg.confirmations.max_timeout_seconds == 60


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sources.socket_path", "relative/events.sock"),
        ("sources.socket_path", ""),
        ("auth.token_file", "token"),
        ("journal.directory", "/var/lib/\0journal"),
    ],
)
def test_bad_path_is_refused(key: str, value: str) -> None:
    """Paths must be absolute (or start with ~), non-empty and free of NUL."""
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        parse_config({section: {name: value}})
    assert info.value.key == key


# --- bind address (PROTOCOL §2.4) ----------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org", "128.0.0.1"])
def test_non_loopback_host_is_refused(host: str) -> None:
    """A non-loopback bind address is a config error on websocket.host."""
    with pytest.raises(ConfigError) as info:
        parse_config({"websocket": {"host": host}})
    assert info.value.key == "websocket.host"
    assert "allow_remote" in info.value.reason
    assert "auth.token_file" in info.value.reason


def test_non_loopback_host_needs_both_allow_remote_and_token() -> None:
    """allow_remote without a token, or a token without allow_remote, is not enough."""
    only_remote = {"websocket": {"host": "0.0.0.0", "allow_remote": True}}
    with pytest.raises(ConfigError) as info:
        parse_config(only_remote)
    assert info.value.key == "websocket.host"
    assert "auth.token_file" in info.value.reason
    only_token = {"websocket": {"host": "0.0.0.0"}, "auth": {"token_file": "~/t"}}
    with pytest.raises(ConfigError) as info:
        parse_config(only_token)
    assert info.value.key == "websocket.host"
    assert "allow_remote" in info.value.reason


def test_non_loopback_host_accepted_with_allow_remote_and_token() -> None:
    """allow_remote: true plus auth.token_file makes a public bind valid."""
    cfg = parse_config(
        {
            "websocket": {"host": "0.0.0.0", "allow_remote": True},
            "auth": {"token_file": "~/.config/aaeventd/token"},
        }
    )
    assert cfg.websocket.host == "0.0.0.0"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "localhost", "LocalHost"]
)
def test_loopback_host_is_accepted(host: str) -> None:
    """Loopback addresses and localhost need no allow_remote."""
    assert parse_config({"websocket": {"host": host}}).websocket.host == host
    assert is_loopback_host(host)


def test_direct_construction_also_checks_host() -> None:
    """Building Config in code enforces the same bind rule."""
    with pytest.raises(ValidationError):
        Config(websocket=WebSocketConfig(host="0.0.0.0"))


def test_empty_host_is_refused() -> None:
    """An empty host (every interface, implicitly) is refused."""
    assert parse_error('websocket:\n  host: ""').key == "websocket.host"


# --- normalisation and immutability --------------------------------------------------------


def test_logging_level_and_redact_fields_are_normalised() -> None:
    """logging.level accepts any case (stored upper); redact_fields are stored lower."""
    cfg = parse("logging:\n  level: debug\n  redact_fields: [Token, API_KEY]")
    assert cfg.logging.level == "DEBUG"
    assert cfg.logging.redact_fields == ("token", "api_key")


def test_lists_are_stored_as_tuples() -> None:
    """YAML lists become tuples, so configs are hashable."""
    cfg = parse(
        "sources:\n  allowed_uids: [1001, 1002]\nwebsocket:\n  allowed_origins: ['https://*']"
    )
    assert cfg.sources.allowed_uids == (1001, 1002)
    assert cfg.websocket.allowed_origins == ("https://*",)
    assert len({cfg, Config(), cfg}) == 2


def test_configs_are_frozen() -> None:
    """Assigning to a config or one of its sections raises."""
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.websocket = WebSocketConfig()  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.websocket.port = 1  # type: ignore[misc]


def test_non_mapping_document_is_refused() -> None:
    """A document that is a list or a scalar is refused with key ''."""
    for data in ([1, 2], "port: 1", 42):
        with pytest.raises(ConfigError) as info:
            parse_config(data, source="x.yaml")
        assert info.value.key == ""
        assert "must be a mapping" in info.value.reason
        assert str(info.value).startswith("x.yaml: ")


# --- load_config ---------------------------------------------------------------------------


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    """A YAML syntax error is a ConfigError giving the line."""
    path = write(tmp_path / "c.yaml", "websocket:\n  port: 1\n  host: [oops\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == ""
    assert "invalid YAML at line" in info.value.reason
    assert info.value.source == str(path)


def test_yaml_error_line_is_one_based(tmp_path: Path) -> None:
    """The reported line is the 1-based line of the problem."""
    path = write(tmp_path / "c.yaml", "sources:\n  max_connections: 3\n\tbad: tab\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "line 3," in info.value.reason


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    """A key given twice is an error naming its line, not a silent override."""
    path = write(tmp_path / "c.yaml", "websocket:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "duplicate key 'port'" in info.value.reason
    assert "line 3" in info.value.reason


@pytest.mark.parametrize("text", ["", "# only comments\n", "---\n"])
def test_empty_file_is_defaults(tmp_path: Path, text: str) -> None:
    """An empty (or comment-only) file gives the built-in defaults."""
    path = write(tmp_path / "c.yaml", text)
    assert load_config(path, env={}) == (Config(), str(path))


def test_validation_error_carries_source(tmp_path: Path) -> None:
    """A validation error from a file names the file."""
    path = write(tmp_path / "c.yaml", "websocket:\n  port: 99999\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == "websocket.port"
    assert str(info.value).startswith(f"{path}: websocket.port: ")


def test_missing_explicit_file_is_refused(tmp_path: Path) -> None:
    """A --config path that does not exist is an error, not the defaults."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == ""
    assert info.value.reason.startswith("cannot read config file: ")
    assert info.value.source == str(path)


def test_directory_as_config_is_refused(tmp_path: Path) -> None:
    """A directory given as the config file cannot be read."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.reason.startswith("cannot read config file: ")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused as unreadable."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"websocket:\n  host: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "not UTF-8" in info.value.reason


@pytest.fixture
def lookup_env(tmp_path: Path) -> dict[str, str]:
    """An env with a private HOME and XDG_CONFIG_HOME holding a config file (port 1001)."""
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    write(xdg / "aaeventd" / "config.yaml", "websocket:\n  port: 1001\n")
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(xdg)}


def test_lookup_explicit_path_wins(tmp_path: Path, lookup_env: dict[str, str]) -> None:
    """An explicit path beats $AAEVENTD_CONFIG and the XDG file."""
    explicit = write(tmp_path / "explicit.yaml", "websocket:\n  port: 1003\n")
    env_file = write(tmp_path / "env.yaml", "websocket:\n  port: 1002\n")
    cfg, source = load_config(explicit, env={**lookup_env, "AAEVENTD_CONFIG": str(env_file)})
    assert (cfg.websocket.port, source) == (1003, str(explicit))


def test_lookup_env_variable_beats_xdg(tmp_path: Path, lookup_env: dict[str, str]) -> None:
    """$AAEVENTD_CONFIG beats the XDG file."""
    env_file = write(tmp_path / "env.yaml", "websocket:\n  port: 1002\n")
    cfg, source = load_config(env={**lookup_env, "AAEVENTD_CONFIG": str(env_file)})
    assert (cfg.websocket.port, source) == (1002, str(env_file))


def test_lookup_xdg_file(tmp_path: Path, lookup_env: dict[str, str]) -> None:
    """Without path or $AAEVENTD_CONFIG, $XDG_CONFIG_HOME/aaeventd/config.yaml is read."""
    cfg, source = load_config(env=lookup_env)
    assert cfg.websocket.port == 1001
    assert source == str(tmp_path / "xdg" / "aaeventd" / "config.yaml")


def test_lookup_empty_env_variable_is_unset(lookup_env: dict[str, str]) -> None:
    """An empty $AAEVENTD_CONFIG is ignored."""
    cfg, _ = load_config(env={**lookup_env, "AAEVENTD_CONFIG": ""})
    assert cfg.websocket.port == 1001


def test_lookup_home_config_when_xdg_unset(tmp_path: Path) -> None:
    """Without XDG_CONFIG_HOME, ~/.config/aaeventd/config.yaml (HOME from env) is read."""
    path = write(tmp_path / ".config" / "aaeventd" / "config.yaml", "websocket:\n  port: 1004\n")
    cfg, source = load_config(env={"HOME": str(tmp_path)})
    assert (cfg.websocket.port, source) == (1004, str(path))


def test_lookup_relative_xdg_config_home_is_ignored(tmp_path: Path) -> None:
    """A relative XDG_CONFIG_HOME is ignored, as the XDG spec says."""
    path = write(tmp_path / ".config" / "aaeventd" / "config.yaml", "websocket:\n  port: 1005\n")
    cfg, source = load_config(env={"HOME": str(tmp_path), "XDG_CONFIG_HOME": "rel"})
    assert (cfg.websocket.port, source) == (1005, str(path))


def test_lookup_falls_back_to_defaults(tmp_path: Path) -> None:
    """No file anywhere: the built-in defaults, with source None."""
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert load_config(env=env) == (Config(), None)


def test_lookup_missing_env_file_is_refused(tmp_path: Path, lookup_env: dict[str, str]) -> None:
    """A $AAEVENTD_CONFIG naming a missing file is an error, not a fallback."""
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(env={**lookup_env, "AAEVENTD_CONFIG": missing})
    assert info.value.source == missing


def test_lookup_invalid_xdg_file_is_refused(lookup_env: dict[str, str]) -> None:
    """An XDG file that exists but is invalid is an error, not a fallback to defaults."""
    write(Path(lookup_env["XDG_CONFIG_HOME"]) / "aaeventd" / "config.yaml", "bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(env=lookup_env)
    assert info.value.key == "bogus"


# --- path resolution -----------------------------------------------------------------------


def with_sources(**fields: Any) -> Config:
    """Config() with some sources fields set."""
    return Config(sources=SourcesConfig(**fields))


def test_socket_path_configured_expands_home() -> None:
    """A configured socket_path wins, with ~ expanded from HOME."""
    cfg = with_sources(socket_path="~/run/ev.sock")
    env = {"HOME": "/home/u", "RUNTIME_DIRECTORY": "/run/x", "XDG_RUNTIME_DIR": "/run/user/1"}
    assert resolve_socket_path(cfg, env) == Path("/home/u/run/ev.sock")
    assert resolve_socket_path(with_sources(socket_path="/srv/a.sock"), env) == Path("/srv/a.sock")


def test_socket_path_runtime_directory_beats_xdg() -> None:
    """$RUNTIME_DIRECTORY (systemd) wins over $XDG_RUNTIME_DIR; the first path is used."""
    env = {"RUNTIME_DIRECTORY": "/run/user/1/aaeventd:/run/user/1/other", "XDG_RUNTIME_DIR": "/x"}
    assert resolve_socket_path(Config(), env) == Path("/run/user/1/aaeventd/events.sock")


def test_socket_path_xdg_runtime_dir() -> None:
    """Without RUNTIME_DIRECTORY: $XDG_RUNTIME_DIR/aaeventd/events.sock."""
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert resolve_socket_path(Config(), env) == Path("/run/user/1000/aaeventd/events.sock")


@pytest.mark.parametrize("env", [{}, {"XDG_RUNTIME_DIR": ""}, {"XDG_RUNTIME_DIR": "relative"}])
def test_socket_path_tmp_fallback(env: dict[str, str]) -> None:
    """No (usable) runtime dir: /tmp/aaeventd-$UID/events.sock."""
    expected = Path(f"/tmp/aaeventd-{os.getuid()}/events.sock")
    assert resolve_socket_path(Config(), env) == expected


def test_journal_dir_configured() -> None:
    """A configured journal.directory wins, with ~ expanded."""
    cfg = parse("journal:\n  directory: ~/j")
    env = {"HOME": "/home/u", "STATE_DIRECTORY": "/var/lib/x"}
    assert resolve_journal_dir(cfg, env) == Path("/home/u/j")


def test_journal_dir_state_directory_first_path() -> None:
    """$STATE_DIRECTORY/journal, the first of several colon-separated paths."""
    env = {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b", "XDG_STATE_HOME": "/s"}
    assert resolve_journal_dir(Config(), env) == Path("/var/lib/a/journal")


def test_journal_dir_xdg_state_home() -> None:
    """Without STATE_DIRECTORY: $XDG_STATE_HOME/aaeventd/journal."""
    env = {"XDG_STATE_HOME": "/s", "HOME": "/home/u"}
    assert resolve_journal_dir(Config(), env) == Path("/s/aaeventd/journal")


def test_journal_dir_home_default() -> None:
    """Otherwise ~/.local/state/aaeventd/journal (HOME from env)."""
    env = {"HOME": "/home/u"}
    assert resolve_journal_dir(Config(), env) == Path("/home/u/.local/state/aaeventd/journal")


def test_token_file_resolution() -> None:
    """resolve_token_file is None without a token file, else the ~-expanded path."""
    assert resolve_token_file(Config()) is None
    cfg = Config(auth=AuthConfig(token_file="~/tok"))
    assert resolve_token_file(cfg, {"HOME": "/home/u"}) == Path("/home/u/tok")
    assert resolve_token_file(cfg) == Path(os.path.expanduser("~/tok"))


# --- reload --------------------------------------------------------------------------------


def test_restart_keys() -> None:
    """The restart-only keys are the socket path, host and port."""
    assert RESTART_KEYS == ("sources.socket_path", "websocket.host", "websocket.port")


def test_changed_restart_keys() -> None:
    """changed_restart_keys lists exactly the restart-only keys that differ."""
    old = Config()
    assert changed_restart_keys(old, Config()) == []
    live_only = parse("logging:\n  level: DEBUG\nwebsocket:\n  max_clients: 3")
    assert changed_restart_keys(old, live_only) == []
    new = parse("sources:\n  socket_path: /s.sock\nwebsocket:\n  host: ::1\n  port: 1")
    assert changed_restart_keys(old, new) == list(RESTART_KEYS)
    assert changed_restart_keys(old, parse("websocket:\n  port: 0")) == ["websocket.port"]


def test_with_restart_keys_from_keeps_old_sockets() -> None:
    """with_restart_keys_from takes the three restart keys from old, the rest from new."""
    old = parse("sources:\n  socket_path: /old.sock\nwebsocket:\n  port: 1111")
    new = parse(
        "sources:\n  socket_path: /new.sock\n  max_connections: 5\n"
        "websocket:\n  host: 127.0.0.1\n  port: 2222\n  max_clients: 7\n"
        "logging:\n  level: ERROR"
    )
    merged = with_restart_keys_from(old, new)
    assert merged.sources.socket_path == "/old.sock"
    assert merged.websocket.host == "localhost"
    assert merged.websocket.port == 1111
    assert merged.sources.max_connections == 5
    assert merged.websocket.max_clients == 7
    assert merged.logging.level == "ERROR"
    assert changed_restart_keys(old, merged) == []


def test_with_restart_keys_from_refuses_unguarding_public_bind() -> None:
    """A reload cannot drop the token while the daemon stays bound to a public address."""
    old = remote_config()
    with pytest.raises(ConfigError) as info:
        with_restart_keys_from(old, Config())
    assert info.value.key == "websocket.host"
    assert with_restart_keys_from(old, remote_config(max_clients=3)).websocket.max_clients == 3
