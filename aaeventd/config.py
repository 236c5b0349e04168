"""The daemon's configuration: frozen models, YAML loading, path resolution.

Owns:

* one frozen pydantic model per section of PROTOCOL §7 (:class:`SourcesConfig`,
  :class:`WebSocketConfig`, :class:`AuthConfig`, :class:`EventsConfig`,
  :class:`ConfirmationsConfig`, :class:`JournalConfig`, :class:`LoggingConfig`) and the
  top-level :class:`Config`; ``Config()`` is the built-in defaults;
* :func:`parse_config` / :func:`load_config`, which turn a YAML document into a
  :class:`Config` or raise :class:`~aaeventd.errors.ConfigError` naming the dotted key;
* the rules that turn ``null`` paths into real ones (:func:`resolve_socket_path`,
  :func:`resolve_journal_dir`, :func:`resolve_token_file`);
* which keys a SIGHUP reload cannot change (:data:`RESTART_KEYS`).

Validation is strict: types are never coerced (``"9876"`` is not a port, ``true`` is
not a count; an integer is accepted where a number of seconds is expected), unknown
keys are refused, and impossible values (a port above 65535, a default timeout above
the maximum, a public bind address without a token) are refused.

This module does no I/O beyond reading the config file, and imports only the standard
library, pydantic, PyYAML and :mod:`aaeventd.errors`: no other aaeventd module, no
asyncio, no websockets.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import pwd
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from aaeventd.endpoints import socket_path
from aaeventd.errors import ConfigError

__all__ = [
    "RESTART_KEYS",
    "AuthConfig",
    "Config",
    "ConfirmationsConfig",
    "DesktopConfig",
    "EventsConfig",
    "JournalConfig",
    "LoggingConfig",
    "SourcesConfig",
    "WebSocketConfig",
    "changed_restart_keys",
    "is_loopback_host",
    "load_config",
    "parse_config",
    "resolve_journal_dir",
    "resolve_socket_path",
    "resolve_token_file",
    "with_restart_keys_from",
]

#: Keys that need new sockets: a SIGHUP reload keeps their old value (PROTOCOL §5).
RESTART_KEYS: tuple[str, ...] = ("sources.socket_path", "websocket.host", "websocket.port")

# Custom validation errors carry the reason, and optionally a key relative to the
# location pydantic reports (a model validator only knows its own model's location).
_CUSTOM_ERROR = "config_value"


def _invalid(reason: str, *, field: str = "") -> PydanticCustomError:
    return PydanticCustomError(_CUSTOM_ERROR, "{reason}", {"reason": reason, "field": field})


# ---------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------


def _list_to_tuple(value: object) -> object:
    """YAML gives lists; the frozen models store tuples (strict mode refuses lists)."""
    return tuple(value) if isinstance(value, list) else value


def _check_path(value: str) -> str:
    if not value:
        raise _invalid("must not be empty (use null for the default)")
    if "\0" in value:
        raise _invalid("must not contain a NUL character")
    if not (value.startswith("~") or os.path.isabs(value)):
        # The daemon's working directory is arbitrary (``/`` under systemd).
        raise _invalid(f"must be an absolute path or start with ~, got {value!r}")
    return value


#: A filesystem path as written in the config; ``~`` is expanded when resolved.
ConfigPath = Annotated[str, AfterValidator(_check_path)]
#: A number of seconds: an int or a float, finite and > 0.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: A uid; 2**32 - 1 is ``(uid_t) -1``, never a real user.
Uid = Annotated[int, Field(ge=0, le=2**32 - 2)]

_UidTuple = Annotated[tuple[Uid, ...], BeforeValidator(_list_to_tuple)]
_StrTuple = Annotated[tuple[str, ...], BeforeValidator(_list_to_tuple)]


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a bind address) is loopback only.

    ``localhost`` (any case), any address in ``127.0.0.0/8``, ``::1`` and the IPv4-mapped
    form of a 127/8 address are loopback; anything else, names included, is not.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


class SourcesConfig(BaseModel):
    """``sources``: the Unix socket that sources write NDJSON events to (PROTOCOL §1)."""

    # Spelt out in each class: the pydantic mypy plugin only reads a literal ConfigDict.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: ``None``: ``$RUNTIME_DIRECTORY/events.sock``, ``$XDG_RUNTIME_DIR/aaeventd/
    #: events.sock`` or ``/tmp/aaeventd-$UID/events.sock`` (see :func:`resolve_socket_path`).
    socket_path: ConfigPath | None = None
    #: Uids allowed to connect besides the daemon's own.
    allowed_uids: _UidTuple = ()
    # Limits
    max_line_bytes: Annotated[int, Field(ge=64)] = 1_048_576
    max_connections: Annotated[int, Field(ge=1)] = 64
    # Timeouts
    #: An unfinished line older than this gets ``line_timeout`` and closes the source.
    line_timeout_seconds: Seconds = 30.0


class WebSocketConfig(BaseModel):
    """``websocket``: the endpoint clients connect to (PROTOCOL §2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: ``localhost`` listens on 127.0.0.1 and ::1 (when the host has it), one port.
    host: Annotated[str, Field(min_length=1)] = "localhost"
    #: ``0`` picks a free port.
    port: Annotated[int, Field(ge=0, le=65535)] = 9876
    #: Needed (with ``auth.token_file``) to bind a non-loopback address.
    allow_remote: bool = False
    #: ``fnmatch`` globs; the daemon's own origin is always allowed.
    allowed_origins: _StrTuple = ("vscode-webview://*", "vscode-file://*")
    # Limits
    max_clients: Annotated[int, Field(ge=1)] = 256
    max_message_bytes: Annotated[int, Field(ge=1024)] = 65_536
    slow_client_buffer_bytes: Annotated[int, Field(ge=1024)] = 4_194_304
    #: All clients' unsent data together; past it the largest backlogs are closed (1013).
    clients_buffer_budget_bytes: Annotated[int, Field(ge=1024)] = 67_108_864
    #: Connections still in their opening handshake at once.
    max_pending_handshakes: Annotated[int, Field(ge=1)] = 64
    # Timeouts; ``None`` disables keepalive pings.
    ping_interval_seconds: Seconds | None = 20.0
    ping_timeout_seconds: Seconds | None = 20.0
    #: A connection that has not completed its opening handshake by then is closed.
    handshake_timeout_seconds: Seconds = 10.0


class AuthConfig(BaseModel):
    """``auth``: the optional bearer token (PROTOCOL §2.4)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: ``None``: no token required (loopback only).
    token_file: ConfigPath | None = None


class EventsConfig(BaseModel):
    """``events``: what sources may send and how much is kept for replay (§1.3, §2.3)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    allow_unknown_types: bool = True
    #: Events kept in memory for ``since=`` replay; ``0``: replay from the journal only.
    replay_buffer: Annotated[int, Field(ge=0)] = 10_000
    #: The same ring bounded by bytes (its encoded frames): the oldest leave first.
    replay_buffer_bytes: Annotated[int, Field(ge=0)] = 33_554_432


class ConfirmationsConfig(BaseModel):
    """``confirmations``: timeouts of human confirmations (PROTOCOL §3)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    default_timeout_seconds: Seconds = 60.0
    max_timeout_seconds: Seconds = 3600.0
    max_pause_seconds: Seconds = 600.0
    # Limits (§3.7): past either, ``too_many_confirmations``.
    max_pending: Annotated[int, Field(ge=1)] = 100
    max_pending_per_source: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _default_within_max(self) -> ConfirmationsConfig:
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise _invalid(
                f"must be <= max_timeout_seconds ({self.max_timeout_seconds:g}),"
                f" got {self.default_timeout_seconds:g}",
                field="default_timeout_seconds",
            )
        return self


class JournalConfig(BaseModel):
    """``journal``: the JSON Lines record of every broadcast event (PROTOCOL §4)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True
    #: ``None``: ``$STATE_DIRECTORY/journal`` or ``$XDG_STATE_HOME/aaeventd/journal``.
    directory: ConfigPath | None = None
    max_file_bytes: Annotated[int, Field(ge=4096)] = 67_108_864
    #: Files kept, the one being written included.
    max_files: Annotated[int, Field(ge=1)] = 8
    fsync: Literal["always", "interval", "never"] = "interval"
    #: Oldest files are removed while the file system has less free space than this.
    keep_free_bytes: Annotated[int, Field(ge=0)] = 268_435_456


class DesktopConfig(BaseModel):
    """``desktop``: desktop notifications over the session D-Bus (PROTOCOL §3.6)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: ``auto``: on when a session bus is reachable; ``always``: a missing bus is a
    #: WARNING and ``degraded``; ``never``: off.
    notify: Literal["auto", "always", "never"] = "auto"
    #: A confirmation some client was sent is shown after this long unanswered (one that
    #: reached no client at once).
    notify_after_seconds: Seconds = 10.0
    #: Globs of other event types also shown (e.g. ``skill_failed``), one a second at most.
    notify_types: _StrTuple = ()


class LoggingConfig(BaseModel):
    """``logging``: stderr log lines (PROTOCOL §4)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Accepted in any case, stored upper-case.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    #: Where records go: ``stderr`` lines, the native ``journal`` protocol, or ``auto``
    #: (the journal when ``$JOURNAL_STREAM`` says stderr is journald's, else stderr).
    target: Literal["auto", "stderr", "journal"] = "auto"
    #: Field names shown as ``***`` in logs; stored lower-case (matching ignores case).
    redact_fields: _StrTuple = ("token", "password", "secret", "authorization")

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redact_fields", mode="after")
    @classmethod
    def _lower_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name.lower() for name in value)


class Config(BaseModel):
    """The whole configuration; ``Config()`` is the built-in defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    websocket: WebSocketConfig = Field(default_factory=WebSocketConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    confirmations: ConfirmationsConfig = Field(default_factory=ConfirmationsConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    desktop: DesktopConfig = Field(default_factory=DesktopConfig)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_section_is_default(cls, value: object) -> object:
        # ``websocket:`` with every key commented out is YAML null: keep the defaults.
        return {} if value is None else value

    @model_validator(mode="after")
    def _remote_bind_needs_token(self) -> Config:
        problem = _remote_bind_problem(self)
        if problem is not None:
            raise _invalid(problem, field="websocket.host")
        return self


def _remote_bind_problem(cfg: Config) -> str | None:
    """Why ``cfg``'s bind address is not allowed (PROTOCOL §2.4), or ``None``."""
    host = cfg.websocket.host
    if is_loopback_host(host):
        return None
    missing = []
    if not cfg.websocket.allow_remote:
        missing.append("websocket.allow_remote: true")
    if cfg.auth.token_file is None:
        missing.append("auth.token_file")
    if not missing:
        return None
    return f"{host!r} is not a loopback address; binding it needs " + " and ".join(missing)


# ---------------------------------------------------------------------------------------
# Parsing and loading
# ---------------------------------------------------------------------------------------


def parse_config(data: object, *, source: str | None = None) -> Config:
    """Validate a loaded YAML document.

    Args:
        data: what ``yaml.safe_load`` returned; ``None`` (an empty document) means
            the built-in defaults, and so does ``null`` for a whole section.
        source: where ``data`` came from, for the error message.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: ``key`` is the dotted path of the first offending key
            (``websocket.port``, ``sources.allowed_uids.1``), ``""`` when the document
            is not a mapping; ``reason`` lists any further errors as ``also:`` lines.
    """
    if data is None:
        return Config()
    if not isinstance(data, Mapping):
        raise ConfigError(
            "",
            f"the config must be a mapping of sections (sources:, websocket:, ...),"
            f" got {_describe(data)}",
            source=source,
        )
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_explain(error) for error in exc.errors()]
    key, reason = problems[0]
    also = [f"also: {k}: {r}" if k else f"also: {r}" for k, r in problems[1:]]
    raise ConfigError(key, "\n".join([reason, *also]), source=source)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[Config, str | None]:
    """Find, read and validate the config (PROTOCOL §7).

    Lookup order: ``path``; else ``$AAEVENTD_CONFIG`` (an empty value counts as
    unset); else ``$XDG_CONFIG_HOME/aaeventd/config.yaml`` (``XDG_CONFIG_HOME``
    defaults to ``~/.config``) if that file exists; else the built-in defaults.
    A file named by ``path`` or ``AAEVENTD_CONFIG`` must exist.

    Args:
        path: an explicit config file (``--config``).
        env: the environment to read; ``None`` means :data:`os.environ`.

    Returns:
        The config and the file it came from, or ``None`` for the built-in defaults.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML (the reason gives the
            line and column) or is not a valid config.
    """
    env = os.environ if env is None else env
    if path is not None:
        chosen = os.fspath(path)
    elif env.get("AAEVENTD_CONFIG"):
        chosen = env["AAEVENTD_CONFIG"]
    else:
        candidate = _xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "aaeventd" / "config.yaml"
        if not os.path.lexists(candidate):
            return Config(), None
        chosen = str(candidate)
    return parse_config(_read_yaml(chosen), source=chosen), chosen


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # ``<<`` merges may legitimately be overridden by explicit keys.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"cannot read config file: not UTF-8 ({exc})", source=path) from exc
    except OSError as exc:
        raise ConfigError(
            "", f"cannot read config file: {exc.strerror or exc}", source=path
        ) from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError("", f"invalid YAML{where}: {problem}", source=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}", source=path) from exc


# Reasons for pydantic's error types, phrased for someone editing a YAML file.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _explain(error: ErrorDetails) -> tuple[str, str]:
    """The dotted key and a short human reason for one pydantic error."""
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == _CUSTOM_ERROR:
        if ctx.get("field"):
            loc.append(str(ctx["field"]))
        return ".".join(loc), str(ctx.get("reason", error["msg"]))
    key = ".".join(loc)
    if kind == "extra_forbidden":
        known = _fields_at(error["loc"][:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1) if loc else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return key, f"unknown key{hint}"
    if kind in _EXPECTED:
        return key, f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "literal_error":
        return key, f"expected {ctx.get('expected')}, got {_describe(value)}"
    if kind in _BOUNDS:
        limit = next(iter(ctx.values()), "?")
        return key, f"must be {_BOUNDS[kind]} {_number(limit)}, got {_number(value)}"
    if kind == "finite_number":
        return key, f"must be a finite number, got {_number(value)}"
    if kind == "string_too_short":
        return key, "must not be empty"
    if kind == "invalid_key":
        return key, f"keys must be strings, got {_describe(value)}"
    return key, str(error["msg"])


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the model at ``loc`` (for "did you mean" hints)."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _number(value: object) -> str:
    """``0``, ``0.5``, ``inf``: a bound or a value in a range message."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _describe(value: object) -> str:
    """``str '9876'``, ``bool true``, ``null``: a value as the error message shows it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {'true' if value else 'false'}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


# ---------------------------------------------------------------------------------------
# Path resolution
# ---------------------------------------------------------------------------------------


def resolve_socket_path(
    cfg: Config, env: Mapping[str, str] | None = None, *, connecting: bool = False
) -> Path:
    """Where the Unix socket for sources lives (the rule is :func:`aaeventd.endpoints.socket_path`).

    For the daemon, in order: ``sources.socket_path`` (``~`` expanded);
    ``$RUNTIME_DIRECTORY/events.sock`` when systemd's ``RuntimeDirectory=`` sets
    ``RUNTIME_DIRECTORY`` (the first path if it lists several; for
    ``RuntimeDirectory=aaeventd`` in a user unit this is the same file as the next
    rule, and it follows the unit when the unit says otherwise);
    ``$XDG_RUNTIME_DIR/aaeventd/events.sock``; ``/tmp/aaeventd-$UID/events.sock``.
    Empty or relative environment values are ignored.

    Args:
        cfg: the config.
        env: the environment to read; ``None`` means :data:`os.environ`.
        connecting: for a program that connects to the daemon (``aaeventd emit``):
            ``$AAEVENTD_SOCKET`` comes first, and ``RUNTIME_DIRECTORY`` (that of the
            program's own unit) is not read.
    """
    env = os.environ if env is None else env
    configured = cfg.sources.socket_path
    return socket_path(
        env,
        connecting=connecting,
        configured=None if configured is None else Path(_expand(configured, env)),
    )


def resolve_journal_dir(cfg: Config, env: Mapping[str, str] | None = None) -> Path:
    """Where the journal files live.

    In order: ``journal.directory`` (``~`` expanded); ``$STATE_DIRECTORY/journal`` (the
    first path if systemd's ``StateDirectory=`` lists several);
    ``$XDG_STATE_HOME/aaeventd/journal``; ``~/.local/state/aaeventd/journal``.
    Empty or relative environment values are ignored.

    Args:
        cfg: the config.
        env: the environment to read; ``None`` means :data:`os.environ`.
    """
    env = os.environ if env is None else env
    if cfg.journal.directory is not None:
        return Path(_expand(cfg.journal.directory, env))
    state = _env_dir(env, "STATE_DIRECTORY")
    if state is not None:
        return state / "journal"
    return _xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "aaeventd" / "journal"


def resolve_token_file(cfg: Config, env: Mapping[str, str] | None = None) -> Path | None:
    """The token file (``~`` expanded), or ``None`` when no token is required.

    Args:
        cfg: the config.
        env: the environment whose ``HOME`` expands ``~``; ``None`` means
            :data:`os.environ`.
    """
    if cfg.auth.token_file is None:
        return None
    return Path(_expand(cfg.auth.token_file, os.environ if env is None else env))


def _home(env: Mapping[str, str]) -> str:
    home = env.get("HOME")
    return home if home else pwd.getpwuid(os.getuid()).pw_dir


def _expand(path: str, env: Mapping[str, str]) -> str:
    """``os.path.expanduser``, but ``~`` alone reads ``HOME`` from ``env``."""
    if path == "~" or path.startswith("~/"):
        return _home(env) + path[1:]
    return os.path.expanduser(path)


def _env_dir(env: Mapping[str, str], name: str) -> Path | None:
    """The first absolute path of a (colon-separated) directory variable, or ``None``."""
    first = env.get(name, "").split(":", 1)[0]
    return Path(first) if os.path.isabs(first) else None


def _xdg_dir(env: Mapping[str, str], name: str, default_under_home: str) -> Path:
    """An XDG base directory: ``$name`` if absolute (as the spec says), else the default."""
    value = env.get(name, "")
    if os.path.isabs(value):
        return Path(value)
    return Path(_home(env)) / default_under_home


# ---------------------------------------------------------------------------------------
# Reload
# ---------------------------------------------------------------------------------------


def _value_at(cfg: Config, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def changed_restart_keys(old: Config, new: Config) -> list[str]:
    """The keys of :data:`RESTART_KEYS` whose value differs between ``old`` and ``new``."""
    return [key for key in RESTART_KEYS if _value_at(old, key) != _value_at(new, key)]


def with_restart_keys_from(old: Config, new: Config) -> Config:
    """``new`` with the :data:`RESTART_KEYS` values of ``old`` (what a reload applies).

    Raises:
        ConfigError: ``websocket.host``: the running daemon is bound to a non-loopback
            address and ``new`` withdraws ``allow_remote`` or the token, which would leave
            a public port unguarded until a restart. The reload must then change nothing.
    """
    merged = new.model_copy(
        update={
            "sources": new.sources.model_copy(update={"socket_path": old.sources.socket_path}),
            "websocket": new.websocket.model_copy(
                update={"host": old.websocket.host, "port": old.websocket.port}
            ),
        }
    )
    problem = _remote_bind_problem(merged)
    if problem is not None:
        raise ConfigError(
            "websocket.host", f"{problem} (the running daemon keeps its address until restart)"
        )
    return merged
