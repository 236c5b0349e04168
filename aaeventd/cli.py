"""The ``aaeventd`` command: ``run``, ``check-config``, ``emit``, ``watch``, ``confirm``.

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
import getpass
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
REMEMBER_CHOICES = ("none", "this-error", "this-skill", "always")


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
    confirm.add_argument("--url", help="WebSocket URL (default: from config)")
    _config_arg(confirm)
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
        "confirm": _cmd_confirm,
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
        # RUNTIME_DIRECTORY, when set, belongs to the unit running *this* command,
        # not to the daemon's: resolve the socket as a shell outside systemd would.
        env = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
        socket_path = resolve_socket_path(config, env)
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


def _ws_url(config: Config, args: argparse.Namespace, since: int | None, epoch: str | None) -> str:
    base = args.url or f"ws://{_url_host(config.websocket.host)}:{config.websocket.port}/"
    params: dict[str, str] = {}
    types = getattr(args, "types", None)
    if types:
        params["types"] = types
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
    args.types = "confirmation_answered"
    url = _ws_url(config, args, None, None)
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
