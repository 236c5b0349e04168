"""Where a program finds the daemon: its Unix socket path and its WebSocket/HTTP URLs.

* :func:`socket_path`: the one rule for the sources' socket (PROTOCOL §1), for the
  daemon (through :func:`aaeventd.config.resolve_socket_path`) and for programs that
  connect (the CLI; :mod:`aaeventd.client` keeps a vendorable copy, held to this one
  by ``tests/test_endpoints.py``).
* :func:`websocket_url` and :func:`http_base`: the client endpoint (PROTOCOL §2) from
  any of ``ws://``, ``wss://``, ``http://``, ``https://`` (the link ``aaeventd ui``
  prints works wherever a URL is asked for), with the stream's query.

Standard library only, no I/O (the environment is read, never written).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SOCKET_ENV = "AAEVENTD_SOCKET"
"""Set by whoever starts a program that connects, to name the daemon's socket."""

_WS_SCHEME = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_HTTP_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def socket_path(
    env: Mapping[str, str] | None = None,
    *,
    connecting: bool,
    configured: Path | None = None,
) -> Path:
    """The sources' Unix socket; the first rule that applies wins.

    1. ``$AAEVENTD_SOCKET``, for programs that connect (``connecting``);
    2. ``configured`` (``sources.socket_path``, already expanded);
    3. ``$RUNTIME_DIRECTORY/events.sock``, for the daemon only (the first path if
       systemd's ``RuntimeDirectory=`` lists several).  In a program that connects
       it names that program's own unit's directory, not the daemon's;
    4. ``$XDG_RUNTIME_DIR/aaeventd/events.sock``;
    5. ``/tmp/aaeventd-$UID/events.sock``.

    Empty values are ignored, and relative ones for the directory variables.

    Args:
        env: the environment to read; ``None`` means :data:`os.environ`.
        connecting: ``True`` for a program that connects, ``False`` for the daemon.
        configured: the configured path, if any.
    """
    env = os.environ if env is None else env
    named = env.get(SOCKET_ENV, "")
    if connecting and named:
        return Path(named)
    if configured is not None:
        return configured
    runtime = _env_dir(env, "RUNTIME_DIRECTORY")
    if not connecting and runtime is not None:
        return runtime / "events.sock"
    xdg_runtime = _env_dir(env, "XDG_RUNTIME_DIR")
    if xdg_runtime is not None:
        return xdg_runtime / "aaeventd" / "events.sock"
    return Path(f"/tmp/aaeventd-{os.getuid()}") / "events.sock"


def _env_dir(env: Mapping[str, str], name: str) -> Path | None:
    """The first absolute path of a (colon-separated) directory variable, or ``None``."""
    first = env.get(name, "").split(":", 1)[0]
    return Path(first) if os.path.isabs(first) else None


def url_host(host: str) -> str:
    """A bind address as the host part of a URL that reaches it from this machine.

    ``localhost`` (both loopback addresses) gives 127.0.0.1: one address, no resolver.
    """
    if host in ("0.0.0.0", "::", "") or host.lower() == "localhost":
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def http_base(url: str) -> str:
    """``http(s)://HOST:PORT/`` of the daemon that ``url`` names (path and query dropped).

    Raises:
        ValueError: ``url`` is not an ``http``, ``https``, ``ws`` or ``wss`` URL with a host.
    """
    parts = _split(url)
    return urlunsplit((_HTTP_SCHEME[parts.scheme], parts.netloc, "/", "", ""))


def websocket_url(
    url: str,
    *,
    types: str | None = None,
    since: int | None = None,
    epoch: str | None = None,
    token: str | None = None,
) -> str:
    """The WebSocket URL of a stream (PROTOCOL §2): ``url`` with ``ws``/``wss`` and a query.

    ``url`` keeps its path and query (a ``?token=`` in the link ``aaeventd ui``
    prints is kept); a parameter given here replaces one of the same name there.

    Args:
        url: the daemon's address (``http``, ``https``, ``ws`` or ``wss``).
        types: comma-separated type globs; ``None`` for all.
        since: replay the events after this seq.
        epoch: the journal the ``since`` belongs to.
        token: the client token, when the daemon requires one.

    Raises:
        ValueError: as :func:`http_base`.
    """
    parts = _split(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    given = {"types": types, "since": since, "epoch": epoch, "token": token}
    params.update({name: str(value) for name, value in given.items() if value is not None})
    return urlunsplit(
        (_WS_SCHEME[parts.scheme], parts.netloc, parts.path or "/", urlencode(params), "")
    )


class _Parts(NamedTuple):
    scheme: str  # lower case, one of _WS_SCHEME's keys
    netloc: str
    path: str
    query: str


def _split(url: str) -> _Parts:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _WS_SCHEME or not parts.hostname:
        raise ValueError(
            f"expected a daemon address like http://127.0.0.1:9876/ or ws://127.0.0.1:9876/,"
            f" got {url!r}"
        )
    try:
        parts.port  # noqa: B018 - parses the port: "host:x" raises here, not at connect
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}: {exc}") from None
    return _Parts(scheme, parts.netloc, parts.path, parts.query)
