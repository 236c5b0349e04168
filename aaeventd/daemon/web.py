"""HTTP on the WebSocket port: who may connect, and the plain GET endpoints.

Owns the ``process_request`` hook: the ``Host`` check (DNS rebinding), the
``Origin`` allow-list (cross-site WebSocket hijacking), the optional bearer token,
the ``max_clients`` limit, and the non-upgrade routes ``/healthz``, ``/metrics``,
``/clients`` and ``/`` (the web UI) of PROTOCOL §2.4 and §6.

It reads state through :class:`StatusSource` and never mutates the hub.
"""

from __future__ import annotations

import fnmatch
import hmac
import http
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from aaeventd.daemon.handshakes import LogThrottle
from aaeventd.daemon.peers import OwnerUnknown, PeerOwners

log = logging.getLogger("aaeventd.web")

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Headers read as one value: a request carrying one of them twice is refused with 400
# (RFC 9112 §3.2 for Host) instead of failing inside the access checks.
_SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Upgrade", "User-Agent")
WS_PATHS = frozenset({"/", "/ws"})
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(slots=True)
class AccessSettings:
    """Live-reloadable access rules."""

    allowed_origins: tuple[str, ...] = ("vscode-webview://*", "vscode-file://*")
    allow_remote: bool = False
    token: str | None = None
    max_clients: int = 256
    # uids whose processes may connect on loopback: ours plus sources.allowed_uids.
    allowed_uids: frozenset[int] = field(default_factory=lambda: frozenset({os.getuid()}))
    port: int = 0  # the real port once bound: its own origins are always allowed
    own_origins: frozenset[str] = field(default_factory=frozenset)

    def set_port(self, port: int) -> None:
        self.port = port
        self.own_origins = frozenset(
            f"http://{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]")
        )


class StatusSource(Protocol):
    """Read-only views of the daemon for the HTTP endpoints (implemented by the app)."""

    def health(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...

    def clients_view(self) -> dict[str, Any]: ...

    def client_count(self) -> int: ...


def host_is_loopback(host_header: str | None) -> bool:
    """True when a ``Host`` header names localhost, 127.0.0.1 or [::1] (any port)."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        rest = host[end + 1 :]
        host = host[: end + 1]
    else:
        host, _, port = host.partition(":")
        rest = ":" + port if port else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return False
    return host in _LOOPBACK_HOSTS


def origin_allowed(origin: str | None, settings: AccessSettings) -> bool:
    """Absent (non-browser clients), the daemon's own, or matching an allowed glob."""
    if origin is None:
        return True
    value = origin.strip().lower()
    if value in settings.own_origins:
        return True
    return any(fnmatch.fnmatchcase(value, glob.lower()) for glob in settings.allowed_origins)


def request_token(request: Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer`` or ``?token=``."""
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    query = parse_qs(urlsplit(request.path).query)
    values = query.get("token")
    return values[-1] if values else None


def token_ok(request: Request, expected: str) -> bool:
    got = request_token(request)
    return got is not None and hmac.compare_digest(got.encode(), expected.encode())


def is_upgrade(request: Request) -> bool:
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


class HttpFront:
    """The ``process_request`` hook given to websockets' ``serve``."""

    def __init__(self, settings: AccessSettings, status: StatusSource) -> None:
        self.settings = settings
        self.status = status
        self.refused: dict[int, int] = {}
        self.owners = PeerOwners()
        # An owner that cannot be determined (out of descriptors) comes in floods.
        self._owner_unknown_log = LogThrottle()

    @property
    def owner_unknown_refusals(self) -> int:
        """Requests refused 503 because the connection's owner could not be determined
        (also in :attr:`refused`); counted by the log throttle, the one place that sees them."""
        return self._owner_unknown_log.total

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        settings = self.settings
        path = urlsplit(request.path).path
        refusal = self._check_peer(connection)
        # The owner check logs its own 503s (rate-limited): they come in floods.
        logged = refusal is not None and refusal[0] == http.HTTPStatus.SERVICE_UNAVAILABLE
        refusal = refusal or _check_single_headers(request) or self._check_access(request, path)
        if refusal is not None:
            status, text = refusal
            self.refused[status] = self.refused.get(status, 0) + 1
            if not logged:
                log.warning(
                    "refused %s %s from %s: %s",
                    "upgrade" if is_upgrade(request) else "GET",
                    path,
                    _peer(connection),
                    text,
                )
            return _text(status, text + "\n")
        if is_upgrade(request):
            if path not in WS_PATHS:
                return _text(http.HTTPStatus.NOT_FOUND, "WebSocket endpoints are / and /ws\n")
            if self.status.client_count() >= settings.max_clients:
                self.refused[503] = self.refused.get(503, 0) + 1
                log.warning("refused client from %s: max_clients reached", _peer(connection))
                return _text(
                    http.HTTPStatus.SERVICE_UNAVAILABLE,
                    f"too many clients (max_clients={settings.max_clients})\n",
                )
            query = parse_qs(urlsplit(request.path).query)
            for key in ("since",):
                values = query.get(key)
                if values and not _is_count(values[-1]):
                    return _text(
                        http.HTTPStatus.BAD_REQUEST, f"{key} must be a non-negative integer\n"
                    )
            return None
        return self._route(path)

    def _check_peer(self, connection: ServerConnection) -> tuple[int, str] | None:
        """On loopback, only our own user's processes (and ``allowed_uids``) get in.

        Fails closed (PROTOCOL §2.4): an owner that cannot be determined is a 503,
        logged at most once a minute with the count; one no process holds is a 403.
        """
        settings = self.settings
        if settings.allow_remote:
            return None  # remote hosts: the token guards the door
        try:
            uid = self.owners.uid(connection.remote_address, connection.local_address)
        except LookupError:
            return http.HTTPStatus.FORBIDDEN, "the connection's owner could not be found"
        except OwnerUnknown as exc:
            count = self._owner_unknown_log.hit(connection.loop.time())
            if count is not None:
                log.warning(
                    "refusing requests (503): the connection's owner cannot be determined:"
                    " %s (%d refused since the last report, %d in all)",
                    exc,
                    count,
                    self._owner_unknown_log.total,
                )
            return (
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                "the connection's owner cannot be determined now; try again",
            )
        if uid in settings.allowed_uids:
            return None
        return http.HTTPStatus.FORBIDDEN, f"uid {uid} may not connect (not the daemon's user)"

    def _check_access(self, request: Request, path: str) -> tuple[int, str] | None:
        settings = self.settings
        if not settings.allow_remote and not host_is_loopback(request.headers.get("Host")):
            return http.HTTPStatus.FORBIDDEN, "Host must be localhost, 127.0.0.1 or [::1]"
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, settings):
            return http.HTTPStatus.FORBIDDEN, f"Origin {origin!r} is not allowed"
        if (
            settings.token is not None
            and not (path == "/healthz" and not is_upgrade(request))
            and not token_ok(request, settings.token)
        ):
            return http.HTTPStatus.UNAUTHORIZED, "a valid token is required"
        return None

    def _route(self, path: str) -> Response:
        if path == "/healthz":
            return _json(self.status.health())
        if path == "/metrics":
            return _body(
                http.HTTPStatus.OK,
                self.status.metrics_text().encode(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        if path == "/clients":
            return _json(self.status.clients_view())
        if path in ("/", "/index.html"):
            return _static("index.html")
        if path.startswith("/static/"):
            return _static(path.removeprefix("/static/"))
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n")


def _check_single_headers(request: Request) -> tuple[int, str] | None:
    for name in _SINGLE_HEADERS:
        if len(request.headers.get_all(name)) > 1:
            return http.HTTPStatus.BAD_REQUEST, f"more than one {name} header"
    return None


def _is_count(value: str) -> bool:
    """A non-negative integer that ``int()`` converts (at most 4300 digits by default)."""
    if not (value.isascii() and value.isdigit()):
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


def _peer(connection: ServerConnection) -> str:
    try:
        return str(connection.remote_address)
    except Exception:  # pragma: no cover - transport already gone
        return "?"


def _body(status: int, body: bytes, content_type: str) -> Response:
    code = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            # No foreign page may frame the UI (clickjacking a confirmation answer),
            # and the ?token= in its address never leaves in a Referer.
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "frame-ancestors 'none'"),
            ("Referrer-Policy", "no-referrer"),
            ("Connection", "close"),
        ]
    )
    return Response(code.value, code.phrase, headers, body)


def _text(status: int, text: str) -> Response:
    return _body(status, text.encode(), "text/plain; charset=utf-8")


def _json(obj: Any) -> Response:
    return _body(http.HTTPStatus.OK, json.dumps(obj, indent=2).encode() + b"\n", "application/json")


def _static(name: str) -> Response:
    if "/" in name or name.startswith("."):
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n")
    suffix = name[name.rfind(".") :] if "." in name else ""
    content_type = _STATIC_TYPES.get(suffix)
    try:
        data = resources.files("aaeventd.daemon").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n")
    if content_type is None:
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n")
    return _body(http.HTTPStatus.OK, data, content_type)
