"""The ``aaeventd`` command: ``run``, ``check-config``, ``emit``, ``watch``, ``confirm``,
``status``, ``clients``, ``ui``, ``install-service``.

``main(argv) -> int`` parses the command line and returns the exit code: 0 success,
1 runtime failure (daemon unreachable, event rejected, socket in use), 2 bad
configuration or usage.  This is the only module that prints; it reaches the
daemon's internals only through :mod:`aaeventd.daemon.app`, :mod:`aaeventd.client`,
:mod:`aaeventd.cli.service` and the public protocol (WebSocket, ``/healthz``,
``/clients``).  What the text looks like is :mod:`aaeventd.cli.console`'s business.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import http.client
import json
import math
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import urlencode

from aaeventd import __version__
from aaeventd.cli.console import LiveView, format_clients, format_event, format_health
from aaeventd.config import Config, load_config, resolve_socket_path, resolve_token_file
from aaeventd.endpoints import http_base, url_host, websocket_url
from aaeventd.errors import AaeventdError, ConfigError
from aaeventd.tokens import read_token

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
REMEMBER_CHOICES = ("none", "this-error", "this-skill", "always")


class CommandFailed(AaeventdError):
    """A command cannot do its job: the message goes to stderr, ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="aaeventd",
        description="aaeventd: the per-user event hub between workflow sources and local UIs.",
        epilog="Run 'aaeventd COMMAND --help' for a command's options and an example.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"aaeventd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground until SIGTERM or Ctrl-C.",
        epilog="example:\n  aaeventd run --config ~/.config/aaeventd/config.yaml",
        formatter_class=fmt,
    )
    _config_arg(run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file and exit (0 valid, 2 invalid)",
        description="Validate a config file without starting anything. Exit 0 if valid, 2 if not.",
        epilog="example:\n  aaeventd check-config config/aaeventd.yaml",
        formatter_class=fmt,
    )
    check.add_argument("path", nargs="?", help="the YAML file (default: the usual lookup)")

    emit = sub.add_parser(
        "emit",
        help="send one event (or NDJSON from stdin) to the daemon",
        description=(
            "Send an event to the daemon and wait for its ack. KEY=VALUE values are JSON if\n"
            "they parse as JSON (3, true, null, [1,2], {...}), else strings.\n"
            "Exit 0 when accepted, 1 when rejected (the daemon's error is printed) or unreachable."
        ),
        epilog=(
            "examples:\n"
            "  aaeventd emit skill_started skill_name=start_work total_steps=5\n"
            '  aaeventd emit --json \'{"type":"persona_changed","persona":"devops"}\'\n'
            "  cat events.ndjson | aaeventd emit -"
        ),
        formatter_class=fmt,
    )
    emit.add_argument("type", nargs="?", help="event type, or '-' to read NDJSON from stdin")
    emit.add_argument("fields", nargs="*", metavar="KEY=VALUE", help="event fields")
    emit.add_argument("--json", dest="json_obj", metavar="OBJ", help="the whole event as JSON")
    emit.add_argument(
        "--socket", help="the daemon's Unix socket (default: $AAEVENTD_SOCKET, else from config)"
    )
    emit.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    _config_arg(emit)

    watch = sub.add_parser(
        "watch",
        help="print events as they arrive (--live: a live screen)",
        description=(
            "Connect over WebSocket and print one line per event (or raw JSON lines with\n"
            "--json). Reconnects and resumes after a disconnect. Ctrl-C exits.\n"
            "--live redraws the terminal in place instead: a progress bar per running skill\n"
            "(step i/n, step name, elapsed), the pending confirmations with their countdown,\n"
            "and the last events. When stdout is not a terminal, --live prints lines."
        ),
        epilog=(
            "examples:\n"
            "  aaeventd watch\n"
            "  aaeventd watch --live\n"
            "  aaeventd watch --types 'skill_*,heal_*' --json"
        ),
        formatter_class=fmt,
    )
    watch.add_argument("--types", help="comma-separated globs, e.g. 'skill_*,heal_*'")
    watch.add_argument("--json", action="store_true", help="print raw JSON lines")
    watch.add_argument(
        "--live", action="store_true", help="a live screen of skills, confirmations and events"
    )
    watch.add_argument("--since", type=int, help="first replay every event after this seq")
    _daemon_url_arg(watch)
    watch.add_argument(
        "--count", type=int, help="exit after printing this many events (for scripts)"
    )
    _config_arg(watch)

    confirm = sub.add_parser(
        "confirm",
        help="list pending confirmations, or answer one",
        description=(
            "Without arguments: list the pending confirmations (id, seconds left, options,\n"
            "prompt) and, on a terminal, ask which one to answer and how.\n"
            "With ID RESPONSE: answer that confirmation. Exit 0 when this answer won, 1 when\n"
            "the daemon refused it (unknown_confirmation: already answered, expired or never\n"
            "pending; invalid_response: not one of its options) or is unreachable."
        ),
        epilog=(
            "examples:\n"
            "  aaeventd confirm\n"
            "  aaeventd confirm 3f2a9c1e-5b7d-4c1a-9e8f-2d6b0a4c7e11 yes --remember this-skill"
        ),
        formatter_class=fmt,
    )
    confirm.add_argument("id", nargs="?", help="the confirmation's id")
    confirm.add_argument("response", nargs="?", help="one of its options")
    confirm.add_argument(
        "--remember",
        choices=REMEMBER_CHOICES,
        default="none",
        help="what the source should remember (default: none)",
    )
    _daemon_url_arg(confirm)
    _config_arg(confirm)

    status = sub.add_parser(
        "status",
        help="show the daemon's health (/healthz) and the web UI link",
        description=(
            "Ask the running daemon for /healthz and print it readably (version, uptime,\n"
            "seq, clients, sources, socket path, ...), then the web UI link (with\n"
            "?token=T when a token is configured). Exit 0 when the daemon is healthy,\n"
            "1 when it cannot be reached or reports a problem."
        ),
        epilog="examples:\n  aaeventd status\n  aaeventd status --json | jq .seq",
        formatter_class=fmt,
    )
    status.add_argument("--json", action="store_true", help="print the raw /healthz JSON")
    _daemon_url_arg(status)
    _config_arg(status)

    clients = sub.add_parser(
        "clients",
        help="list the connected WebSocket clients and sources (/clients)",
        description=(
            "Ask the running daemon for /clients and print two tables: the WebSocket\n"
            "clients (id, address, user agent, filter, connected since, frames sent,\n"
            "backlog) and the sources (pid, uid, hello name, executable, systemd unit,\n"
            "events accepted, errors, dropped replies). Exit 1 when unreachable."
        ),
        epilog="examples:\n  aaeventd clients\n  aaeventd clients --json",
        formatter_class=fmt,
    )
    clients.add_argument("--json", action="store_true", help="print the raw /clients JSON")
    _daemon_url_arg(clients)
    _config_arg(clients)

    ui = sub.add_parser(
        "ui",
        help="print the web UI link (with the token, if one is configured)",
        description=(
            "Print the link to the web UI: http://HOST:PORT/, plus ?token=T when\n"
            "auth.token_file is set (the page passes it on to its WebSocket, so this one\n"
            "link is all a browser needs). --open also opens it in a browser."
        ),
        epilog="examples:\n  aaeventd ui\n  aaeventd ui --open",
        formatter_class=fmt,
    )
    ui.add_argument("--open", action="store_true", help="open the link in a web browser")
    _daemon_url_arg(ui)
    _config_arg(ui)

    install = sub.add_parser(
        "install-service",
        help="install the systemd user units for this installation",
        description=(
            "Write aaeventd.service (and with --socket-activated aaeventd.socket and\n"
            "aaeventd-ws.socket) to ~/.config/systemd/user/, with an ExecStart that runs\n"
            "this Python interpreter, run 'systemctl --user daemon-reload' and print the\n"
            "commands that enable it. --dry-run prints the units and changes nothing.\n"
            "See docs/systemd.md."
        ),
        epilog=(
            "examples:\n"
            "  aaeventd install-service --dry-run\n"
            "  aaeventd install-service && systemctl --user enable --now aaeventd.service\n"
            "  aaeventd install-service --socket-activated"
        ),
        formatter_class=fmt,
    )
    install.add_argument(
        "--socket-activated",
        action="store_true",
        help="also install the socket units (start the daemon on first connection)",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print the units instead of writing them"
    )
    return parser


def _daemon_url_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="the daemon's address, http://HOST:PORT/ (ws:// also accepted; default: from config)",
    )


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $AAEVENTD_CONFIG, then $XDG_CONFIG_HOME/aaeventd/config.yaml)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aaeventd`` command; returns the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    handler = {
        "run": _cmd_run,
        "check-config": _cmd_check_config,
        "emit": _cmd_emit,
        "watch": _cmd_watch,
        "confirm": _cmd_confirm,
        "status": _cmd_status,
        "clients": _cmd_clients,
        "ui": _cmd_ui,
        "install-service": _cmd_install_service,
    }[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        _err(f"config error: {exc}")
        return EXIT_USAGE
    except CommandFailed as exc:
        _err(str(exc))
        return exc.code


def _err(text: str, stream: TextIO | None = None) -> None:
    print(f"aaeventd: {text}", file=stream or sys.stderr)


def _load(args: argparse.Namespace) -> tuple[Config, str | None]:
    return load_config(getattr(args, "config", None))


# -- run -----------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from aaeventd.daemon.app import serve

    config, path = _load(args)
    return asyncio.run(serve(config, config_path=path))


def _cmd_check_config(args: argparse.Namespace) -> int:
    config, path = load_config(args.path)
    where = path or "built-in defaults"
    print(f"{where}: ok")
    print(f"  sources:   {resolve_socket_path(config)}")
    print(f"  clients:   ws://{config.websocket.host}:{config.websocket.port}/")
    token = resolve_token_file(config)
    print(f"  token:     {token if token else 'none (loopback, Host/Origin checks only)'}")
    return EXIT_OK


# -- emit ----------------------------------------------------------------------------


def _parse_fields(items: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            fields[key] = _strict_json(raw)
        except ValueError:
            fields[key] = raw
    return fields


def _strict_json(raw: str) -> Any:
    """``json.loads`` without Python's extensions: ``NaN``, ``Infinity`` and numbers
    that overflow a double raise, so such values stay strings (the daemon would
    refuse them as ``invalid_json``)."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not strict JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} overflows a double")
        return value

    return json.loads(raw, parse_constant=no_constant, parse_float=finite)


def _cmd_emit(args: argparse.Namespace) -> int:
    from aaeventd.client import EventRejected, EventSource, SourceError

    # (label for error messages, the JSON line); the label names the stdin line.
    lines: list[tuple[str, bytes]]
    if args.type == "-":
        if args.fields or args.json_obj is not None:
            _err("'-' reads every event from stdin; give no KEY=VALUE or --json with it")
            return EXIT_USAGE
        lines = []
        for number, raw in enumerate(sys.stdin.buffer, start=1):
            line = raw.rstrip(b"\r\n")
            if line.strip():
                lines.append((f"stdin line {number}: ", line))
    elif args.json_obj is not None:
        if args.type is not None:
            _err("give either TYPE KEY=VALUE... or --json OBJ, not both")
            return EXIT_USAGE
        # One event, one line: a pretty-printed object is sent on one line (JSON
        # whitespace), so the daemon's single reply is its reply.
        text = args.json_obj.replace("\r", " ").replace("\n", " ")
        lines = [("", text.encode())]
    elif args.type is not None:
        try:
            event = {"type": args.type, **_parse_fields(args.fields)}
        except ValueError as exc:
            _err(str(exc))
            return EXIT_USAGE
        lines = [("", json.dumps(event, ensure_ascii=False).encode())]
    else:
        _err("emit needs TYPE [KEY=VALUE...], --json OBJ, or - (NDJSON on stdin)")
        return EXIT_USAGE
    if args.socket:
        socket_path = Path(args.socket)
    else:
        config, _ = _load(args)
        socket_path = resolve_socket_path(config, connecting=True)
    status = EXIT_OK
    try:
        # No reconnect: a one-shot command reports an absent daemon instead of buffering.
        with EventSource(socket_path, name="aaeventd-emit", reconnect=False) as source:
            for label, line in lines:
                try:
                    ack = source.send_line(line)
                except EventRejected as exc:
                    status = EXIT_FAILURE
                    _err(f"{label}rejected ({exc.code}): {exc.message}")
                    for detail in (exc.details or [])[1:]:
                        loc = ".".join(str(p) for p in detail.get("loc", []))
                        print(f"  {loc}: {detail.get('msg')}", file=sys.stderr)
                    continue
                assert ack is not None  # reconnect=False never buffers
                if not args.quiet:
                    extra = f" id={ack.id}" if ack.id else ""
                    print(f"accepted seq={ack.seq} delivered={ack.delivered}{extra}")
    except SourceError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    return status


# -- watch ---------------------------------------------------------------------------

# watch --live redraws on each event, but at most this often (seconds).
REDRAW_INTERVAL = 0.2
# Alternate screen on, cursor hidden / cursor shown, alternate screen off.
_SCREEN_ENTER = "\x1b[?1049h\x1b[?25l"
_SCREEN_LEAVE = "\x1b[?25h\x1b[?1049l"


def _read_token(config: Config) -> str | None:
    """The configured token (:func:`aaeventd.tokens.read_token` of ``auth.token_file``).

    Returns:
        ``None`` when no token is configured, or the file does not exist yet (the
        daemon creates it when it starts) or its first line is empty.

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    token_file = resolve_token_file(config)
    return None if token_file is None else read_token(token_file)


class _Sink(Protocol):
    """Where :func:`_follow` puts what it receives: plain lines or the live screen."""

    def connected(self, snapshot: dict[str, Any], url: str) -> None:
        """The ``connected`` frame of a new connection (``url`` without its query)."""

    def event(self, msg: dict[str, Any]) -> None:
        """A stream event (or a control reply such as ``error``)."""

    def gap(self, msg: dict[str, Any]) -> None:
        """A ``replay_gap`` frame."""

    def notice(self, text: str) -> None:
        """A disconnect or reconnect note."""

    def timeout(self) -> float | None:
        """How long to wait for a frame before :meth:`idle` (``None``: forever)."""

    def idle(self) -> None:
        """No frame came within :meth:`timeout`."""

    def wait(self, seconds: float) -> None:
        """The back-off before a reconnect."""


class _PlainSink:
    """One line per event: readable, or the raw JSON with ``--json``."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def connected(self, snapshot: dict[str, Any], url: str) -> None:
        pass  # nothing to print: the events are what this mode shows

    def event(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, ensure_ascii=False) if self.as_json else format_event(msg)
        self.out.write(line + "\n")
        self.out.flush()

    def gap(self, msg: dict[str, Any]) -> None:
        _err(f"replay gap: {msg}")

    def notice(self, text: str) -> None:
        _err(text)

    def timeout(self) -> float | None:
        return None

    def idle(self) -> None:  # pragma: no cover - timeout() is None: never idle
        pass

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)  # back-off between reconnect attempts, not synchronisation


class _LiveSink:
    """The live screen: a :class:`LiveView` redrawn in the terminal's alternate screen.

    Redraws on each frame, at most every :data:`REDRAW_INTERVAL`, and between frames
    so that countdowns and elapsed times move; a frame identical to the one on screen
    is not written again.  Used as a context manager: the terminal gets its normal
    screen and cursor back however the block ends (Ctrl-C included).
    """

    def __init__(
        self,
        out: TextIO,
        view: LiveView,
        *,
        clock: Callable[[], float] = time.time,
        size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    ) -> None:
        self.out = out
        self.view = view
        self.clock = clock
        self.size = size
        self.last_draw = -math.inf
        self.dirty = False
        self.on_screen: tuple[list[str], os.terminal_size] | None = None

    def __enter__(self) -> _LiveSink:
        self.out.write(_SCREEN_ENTER)
        self.draw(force=True)  # "connecting" until the first snapshot
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.dirty:
                self.draw(force=True)
        finally:
            self.out.write(_SCREEN_LEAVE)
            self.out.flush()

    def draw(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_draw < REDRAW_INTERVAL:
            self.dirty = True
            return
        size = self.size()
        # One column spare: writing the last cell of a line makes some terminals wrap.
        lines = self.view.render(now, size.columns - 1, size.lines)
        self.last_draw = now
        self.dirty = False
        if self.on_screen == (lines, size):
            return
        self.on_screen = (lines, size)
        self.out.write("\x1b[H" + "\x1b[K\r\n".join(lines) + "\x1b[K\x1b[J")
        self.out.flush()

    def connected(self, snapshot: dict[str, Any], url: str) -> None:
        self.view.feed(snapshot, self.clock())
        self.view.status = f"connected to {url}"
        self.draw(force=True)

    def event(self, msg: dict[str, Any]) -> None:
        self.view.feed(msg, self.clock())
        self.draw()

    def gap(self, msg: dict[str, Any]) -> None:
        self.event(msg)

    def notice(self, text: str) -> None:
        self.view.status = text
        self.draw(force=True)

    def timeout(self) -> float | None:
        if self.dirty:
            return max(0.0, self.last_draw + REDRAW_INTERVAL - self.clock())
        return REDRAW_INTERVAL

    def idle(self) -> None:
        self.draw()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, REDRAW_INTERVAL))  # back-off, redrawn while it lasts
            self.draw()


def _follow(config: Config, args: argparse.Namespace, sink: _Sink) -> int:
    """Receive events until ``--count`` of them (or forever); the
    :class:`~aaeventd.subscriber.Subscriber` reconnects and resumes after a disconnect.

    Raises:
        CommandFailed: the first connection fails, or the daemon refuses the handshake.
    """
    from aaeventd.subscriber import Subscriber, SubscriberError

    base = _stream_url(config, args)
    received = 0
    sub = Subscriber(
        base,
        types=getattr(args, "types", None) or None,
        since=args.since,
        token=_read_token(config),
        on_disconnect=lambda exc: sink.notice(f"disconnected ({exc}); reconnecting"),
        sleep=sink.wait,
    )
    with sub:
        while True:
            try:
                msg = sub.recv(timeout=sink.timeout())
            except SubscriberError as exc:
                raise CommandFailed(str(exc)) from exc
            if msg is None:
                sink.idle()
                continue
            kind = msg.get("type")
            if kind == "connected":
                sink.connected(msg, sub.shown_url)
            elif kind == "replay_gap":
                sink.gap(msg)
            else:
                sink.event(msg)
                received += 1
                if args.count is not None and received >= args.count:
                    return EXIT_OK


def _can_show(out: TextIO, text: str) -> bool:
    try:
        text.encode(out.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _cmd_watch(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        _err("--count must be at least 1")
        return EXIT_USAGE
    if args.live and args.json:
        _err("--live draws a screen, --json prints JSON lines: choose one")
        return EXIT_USAGE
    config, _ = _load(args)
    out = sys.stdout
    try:
        if args.live and out.isatty():
            view = LiveView(ascii=not _can_show(out, "█░▏▎▍▌▋▊▉…"))
            with _LiveSink(out, view) as sink:
                return _follow(config, args, sink)
        # Not a terminal (a pipe, a file): --live falls back to one line per event.
        return _follow(config, args, _PlainSink(out, as_json=args.json))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        with contextlib.suppress(OSError, ValueError):  # stdout closed under us
            out.flush()


# -- status, clients, ui -------------------------------------------------------------

HTTP_TIMEOUT = 3.0  # seconds, for /healthz and /clients


def _daemon_base(config: Config, args: argparse.Namespace) -> str:
    """The daemon's ``http://HOST:PORT/``: from ``--url`` (http(s) or ws(s)), else the config.

    Raises:
        CommandFailed: (exit 2) a malformed ``--url``, or port 0 in the config.
    """
    if args.url:
        try:
            return http_base(args.url)
        except ValueError as exc:
            raise _bad_url(args.url) from exc
    if config.websocket.port == 0:
        raise CommandFailed(
            "websocket.port is 0 in the config: the daemon picked its port at start "
            "(its log says which); pass --url http://127.0.0.1:PORT/",
            EXIT_USAGE,
        )
    return f"http://{url_host(config.websocket.host)}:{config.websocket.port}/"


def _stream_url(
    config: Config, args: argparse.Namespace, *, types: str | None = None, token: str | None = None
) -> str:
    """The WebSocket URL of ``watch`` and ``confirm``: ``--url`` (its path and query
    kept) or the config's address, as :func:`aaeventd.endpoints.websocket_url` makes it.

    Raises:
        CommandFailed: as :func:`_daemon_base`.
    """
    try:
        return websocket_url(args.url or _daemon_base(config, args), types=types, token=token)
    except ValueError as exc:
        raise _bad_url(args.url) from exc


def _bad_url(url: str) -> CommandFailed:
    return CommandFailed(
        f"--url must look like http://127.0.0.1:9876/ (or ws://...), got {url!r}", EXIT_USAGE
    )


def _ui_link(base: str, token: str | None) -> str:
    """The web UI link; with a token, ``?token=T`` (PROTOCOL §2.4: one link is enough)."""
    return base + ("?" + urlencode({"token": token}) if token is not None else "")


def _http_json(base: str, path: str, config: Config, token: str | None) -> tuple[Any, str]:
    """GET ``base + path`` and parse the JSON answer; (the object, the body as text).

    Raises:
        CommandFailed: unreachable, refused (401 says the token is at fault) or not JSON.
    """
    url = base.rstrip("/") + path
    request = urllib.request.Request(url, headers={"User-Agent": f"aaeventd-cli/{__version__}"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    # Never through an HTTP proxy from the environment: the daemon is on this machine,
    # and a proxy would be handed the token.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(200).decode("utf-8", "replace").strip()
        if exc.code == 401:
            token_file = resolve_token_file(config)
            where = (
                f"auth.token_file is {token_file}"
                if token_file is not None
                else "this config sets no auth.token_file"
            )
            raise CommandFailed(
                f"{url}: HTTP 401: the token is missing or wrong ({where})"
            ) from exc
        raise CommandFailed(f"{url}: HTTP {exc.code}: {detail or exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise CommandFailed(
            f"cannot reach aaeventd at {base}: {exc.reason} (is aaeventd running?)"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise CommandFailed(
            f"cannot reach aaeventd at {base}: {exc or type(exc).__name__} "
            "(is aaeventd running on that port?)"
        ) from exc
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise CommandFailed(f"{url} did not answer with a JSON object: is that aaeventd?")
    return obj, text


def _cmd_status(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    base = _daemon_base(config, args)
    token = _read_token(config)
    health, text = _http_json(base, "/healthz", config, token)
    if args.json:
        print(text.rstrip("\n"))
    else:
        for line in format_health(health, _ui_link(base, token)):
            print(line)
        _warn_no_token(config, token)
    if health.get("status") != "ok":
        _err(f"the daemon reports status {health.get('status')!r}")
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_clients(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    base = _daemon_base(config, args)
    view, text = _http_json(base, "/clients", config, _read_token(config))
    if args.json:
        print(text.rstrip("\n"))
        return EXIT_OK
    for line in format_clients(view):
        print(line)
    return EXIT_OK


def _warn_no_token(config: Config, token: str | None) -> None:
    token_file = resolve_token_file(config)
    if token is None and token_file is not None:
        _err(
            f"no token in {token_file} yet (the daemon creates it when it starts): "
            "the link will be refused until then"
        )


def _cmd_ui(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    base = _daemon_base(config, args)
    token = _read_token(config)
    if token is None and resolve_token_file(config) is not None:
        _warn_no_token(config, token)
        return EXIT_FAILURE
    link = _ui_link(base, token)
    print(link)
    if args.open:
        import webbrowser

        if not webbrowser.open(link):
            _err("no web browser could be started: open the link above yourself")
            return EXIT_FAILURE
    return EXIT_OK


# -- install-service -----------------------------------------------------------------


def _cmd_install_service(args: argparse.Namespace) -> int:
    from aaeventd.cli.service import install_service

    return install_service(
        socket_activated=args.socket_activated,
        dry_run=args.dry_run,
        out=sys.stdout,
        err=sys.stderr,
    )


# -- confirm -------------------------------------------------------------------------


def _cmd_confirm(args: argparse.Namespace) -> int:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    if (args.id is None) != (args.response is None):
        _err("confirm needs both ID and RESPONSE, or neither (to list and choose)")
        return EXIT_USAGE
    config, _ = _load(args)
    # Only what tells whether we won (errors and heartbeat_ack are never filtered):
    # a busy stream must not pile up while a human reads the prompt.
    url = _stream_url(config, args, types="confirmation_answered", token=_read_token(config))
    shown = url.split("?")[0]
    try:
        with connect(
            url,
            open_timeout=5,
            max_size=None,
            close_timeout=2,
            # Shown as answered_by.user_agent and in the daemon's audit line.
            user_agent_header=f"aaeventd-confirm/{__version__} ({_login()})",
        ) as ws:
            snapshot = json.loads(ws.recv(timeout=10))
            if args.id is not None:
                return _answer(ws, args.id, args.response, args.remember)
            pending = snapshot.get("pending_confirmations") or []
            _print_pending(pending)
            if not pending or not sys.stdin.isatty():
                return EXIT_OK
            choice = _choose(pending)
            if choice is None:
                return EXIT_OK
            cid, response, remember = choice
            return _answer(ws, cid, response, remember)
    except InvalidStatus as exc:
        _err(f"{shown} refused the connection: HTTP {exc.response.status_code}")
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        _err(f"cannot connect to {shown}: {exc} (is aaeventd running?)")
    except ConnectionClosed as exc:
        _err(f"the daemon closed the connection: {exc}")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        _err("nothing answered")
    return EXIT_FAILURE


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for our uid
        return f"uid {os.getuid()}"


def _print_pending(pending: list[dict[str, Any]]) -> None:
    if not pending:
        print("no pending confirmations")
        return
    for number, item in enumerate(pending, start=1):
        remaining = item.get("remaining_seconds")
        left = f"{remaining:.1f}s left" if isinstance(remaining, int | float) else "?"
        if item.get("paused"):
            left += ", paused"
        options = "/".join(str(o) for o in item.get("options") or [])
        print(f"{number}. {item.get('id')}  ({left})  [{options}]")
        print(f"   {item.get('prompt') or item.get('message')}")
        where = [
            f"{key}={item[key]}"
            for key in ("skill_name", "skill_id", "step_name", "step_index")
            if item.get(key) is not None
        ]
        if where:
            print(f"   {' '.join(where)}")
        if item.get("claude_suggestion") is not None:
            print(f"   suggestion: {item['claude_suggestion']}")


def _choose(pending: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """Ask on the terminal which confirmation to answer and how (None: none)."""
    if len(pending) == 1:
        item = pending[0]
    else:
        while True:
            raw = input(f"answer which one? [1-{len(pending)}, empty: none] ").strip()
            if not raw:
                return None
            if raw.isdigit() and 1 <= int(raw) <= len(pending):
                item = pending[int(raw) - 1]
                break
            print(f"type a number from 1 to {len(pending)}")
    options = [str(o) for o in item.get("options") or []]
    while True:
        raw = input(f"response to {item.get('id')} [{'/'.join(options)}, empty: none] ").strip()
        if not raw:
            return None
        if raw in options:
            response = raw
            break
        print(f"type one of: {', '.join(options)}")
    while True:
        raw = input(f"remember [{'/'.join(REMEMBER_CHOICES)}, empty: none] ").strip() or "none"
        if raw in REMEMBER_CHOICES:
            return str(item.get("id")), response, raw
        print(f"type one of: {', '.join(REMEMBER_CHOICES)}")


def _answer(ws: Any, cid: str, response: str, remember: str) -> int:
    """Send the answer and tell whether it won.

    A ``heartbeat`` sent right after is the barrier: the daemon handles a client's
    messages in order and writes the outcome of the answer (the ``error`` reply, or
    the ``confirmation_answered`` broadcast) before the ``heartbeat_ack``.  So the
    answer won exactly when ``confirmation_answered`` for this id, and no ``error``,
    arrives before that ack (another client's earlier win is followed by our error).
    """
    ws.send(
        json.dumps(
            {"type": "confirmation_response", "id": cid, "response": response, "remember": remember}
        )
    )
    ws.send(json.dumps({"type": "heartbeat"}))
    answered: dict[str, Any] | None = None
    while True:
        msg = json.loads(ws.recv(timeout=10))
        kind = msg.get("type")
        if kind == "error":
            _err(f"not answered ({msg.get('code')}): {msg.get('message')}")
            return EXIT_FAILURE
        if kind == "confirmation_answered" and msg.get("id") == cid:
            answered = msg
        elif kind == "heartbeat_ack":
            break
    if answered is None:  # pragma: no cover - the daemon broke the protocol
        _err(f"no confirmation_answered for {cid} from the daemon")
        return EXIT_FAILURE
    print(f"answered {cid}: {answered.get('response')} (remember={answered.get('remember')})")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
