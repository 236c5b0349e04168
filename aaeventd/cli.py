"""The ``aaeventd`` command: ``run``, ``check-config``, ``emit``, ``watch``.

``main(argv) -> int`` parses the command line and returns the exit code: 0 success,
1 runtime failure (daemon unreachable, event rejected, socket in use), 2 bad
configuration or usage.  This is the only module that prints; it reaches the
daemon's internals only through :mod:`aaeventd.app`, :mod:`aaeventd.client` and
the public protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from aaeventd import __version__
from aaeventd.config import Config, load_config, resolve_socket_path, resolve_token_file
from aaeventd.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


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
    emit.add_argument("--socket", help="the daemon's Unix socket (default: from config)")
    emit.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    _config_arg(emit)

    watch = sub.add_parser(
        "watch",
        help="print events as they arrive",
        description=(
            "Connect over WebSocket and print one line per event (or raw JSON lines with\n"
            "--json). Reconnects and resumes after a disconnect. Ctrl-C exits."
        ),
        epilog="examples:\n  aaeventd watch\n  aaeventd watch --types 'skill_*,heal_*' --json",
        formatter_class=fmt,
    )
    watch.add_argument("--types", help="comma-separated globs, e.g. 'skill_*,heal_*'")
    watch.add_argument("--json", action="store_true", help="print raw JSON lines")
    watch.add_argument("--since", type=int, help="first replay every event after this seq")
    watch.add_argument("--url", help="WebSocket URL (default: from config)")
    watch.add_argument(
        "--count", type=int, help="exit after printing this many events (for scripts)"
    )
    _config_arg(watch)
    return parser


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
    }[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        _err(f"config error: {exc}")
        return EXIT_USAGE


def _err(text: str, stream: TextIO | None = None) -> None:
    print(f"aaeventd: {text}", file=stream or sys.stderr)


def _load(args: argparse.Namespace) -> tuple[Config, str | None]:
    return load_config(getattr(args, "config", None))


# -- run -----------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from aaeventd.app import serve

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
        lines = [("", args.json_obj.encode())]
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
        # RUNTIME_DIRECTORY, when set, belongs to the unit running *this* command,
        # not to the daemon's: resolve the socket as a shell outside systemd would.
        env = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
        socket_path = resolve_socket_path(config, env)
    status = EXIT_OK
    try:
        with EventSource(socket_path, name="aaeventd-emit") as source:
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
                if not args.quiet:
                    extra = f" id={ack.id}" if ack.id else ""
                    print(f"accepted seq={ack.seq} delivered={ack.delivered}{extra}")
    except SourceError as exc:
        _err(str(exc))
        return EXIT_FAILURE
    return status


# -- watch ---------------------------------------------------------------------------


def _ws_url(config: Config, args: argparse.Namespace, since: int | None, epoch: str | None) -> str:
    base = args.url or f"ws://{_url_host(config.websocket.host)}:{config.websocket.port}/"
    params: dict[str, str] = {}
    if args.types:
        params["types"] = args.types
    if since is not None:
        params["since"] = str(since)
    if epoch is not None:
        params["epoch"] = epoch
    token_file = resolve_token_file(config)
    if token_file is not None and token_file.exists():
        params["token"] = token_file.read_text(encoding="utf-8").splitlines()[0].strip()
    if not params:
        return base
    return base + ("&" if "?" in base else "?") + urlencode(params)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def format_event(event: dict[str, Any]) -> str:
    """One readable line: ``seq time type key=value ...``."""
    seq = event.get("seq", "-")
    stamp = str(event.get("timestamp", ""))
    clock = stamp[11:23] if len(stamp) >= 23 else stamp
    skip = {"type", "seq", "timestamp"}
    rest = " ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
        for k, v in event.items()
        if k not in skip
    )
    return f"{seq!s:>6} {clock:12} {event.get('type')} {rest}".rstrip()


def _cmd_watch(args: argparse.Namespace) -> int:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    if args.count is not None and args.count < 1:
        _err("--count must be at least 1")
        return EXIT_USAGE
    config, _ = _load(args)
    since: int | None = args.since
    epoch: str | None = None
    printed = 0
    connected_once = False
    backoff = 0.2
    out = sys.stdout
    try:
        while True:
            url = _ws_url(config, args, since, epoch)
            try:
                with connect(url, open_timeout=5, max_size=None) as ws:
                    connected_once = True
                    backoff = 0.2
                    for raw in ws:
                        msg = json.loads(raw)
                        kind = msg.get("type")
                        if kind == "connected":
                            epoch = msg.get("epoch")
                            if since is None:
                                since = int(msg.get("seq", 0))
                            continue
                        if kind == "replay_gap":
                            _err(f"replay gap: {msg}")
                            continue
                        if "seq" in msg:
                            since = int(msg["seq"])
                        out.write(
                            (
                                json.dumps(msg, ensure_ascii=False)
                                if args.json
                                else format_event(msg)
                            )
                            + "\n"
                        )
                        out.flush()
                        printed += 1
                        if args.count is not None and printed >= args.count:
                            return EXIT_OK
            except InvalidStatus as exc:
                _err(f"{url.split('?')[0]} refused the connection: HTTP {exc.response.status_code}")
                return EXIT_FAILURE
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                if not connected_once:
                    _err(f"cannot connect to {url.split('?')[0]}: {exc} (is aaeventd running?)")
                    return EXIT_FAILURE
                _err(f"disconnected ({exc}); reconnecting")
            time.sleep(backoff)  # back-off between reconnect attempts, not synchronisation
            backoff = min(backoff * 2, 5.0)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        with contextlib.suppress(Exception):
            out.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
