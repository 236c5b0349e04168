"""The ``aaeventd`` command: ``run``, ``check-config``, ``emit``, ``watch``, ``confirm``,
``status``, ``clients``, ``ui``, ``install-service``, ``uninstall-service``.

``main(argv) -> int`` parses the command line and returns the exit code: 0 success,
1 runtime failure (daemon unreachable, event rejected, socket in use), 2 bad
configuration or usage, 130 Ctrl-C (quietly, in any command).  The command modules
(and with them pydantic) are imported only once a command runs: ``--version`` and
``--help`` stay cheap.  This package is the only one that prints; it reaches the
daemon only through :func:`aaeventd.daemon.app.serve` (imported by ``run`` alone), the
libraries :mod:`aaeventd.client` and :mod:`aaeventd.subscriber`, and the public
protocol (WebSocket, ``/healthz``, ``/clients``).  Here: the argparse tree, ``run``,
``check-config``, and rendering the man page ``install-service`` writes; each other
command is a module of its own (:mod:`.emit`, :mod:`.watch`, :mod:`.status` for
``status``/``clients``/``ui``, :mod:`.confirm`, :mod:`.service` for
``install-service`` and ``uninstall-service``), over :mod:`.common`; :mod:`.manpage`
writes the man page from the argparse tree.  What the text looks like is
:mod:`aaeventd.cli.console`'s business.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence

from aaeventd import __version__
from aaeventd.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    REMEMBER_CHOICES,
    CommandFailed,
    err,
    load,
)
from aaeventd.endpoints import url_host
from aaeventd.errors import ConfigError

# command -> (module under aaeventd.cli, or "" for this one; its function)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("", "_cmd_run"),
    "check-config": ("", "_cmd_check_config"),
    "emit": ("emit", "cmd_emit"),
    "watch": ("watch", "cmd_watch"),
    "confirm": ("confirm", "cmd_confirm"),
    "status": ("status", "cmd_status"),
    "clients": ("status", "cmd_clients"),
    "ui": ("status", "cmd_ui"),
    # Here: it renders the man page (cli/service.py imports no other aaeventd module).
    "install-service": ("", "_cmd_install_service"),
    "uninstall-service": ("service", "cmd_uninstall_service"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The example config inside the package (``check-config --example``).
EXAMPLE_CONFIG = "example-config.yaml"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; also what shell completion and the man page are made from
    (``shtab aaeventd.cli.build_parser``, :func:`aaeventd.cli.manpage.render_manpage`)."""
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
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="override logging.level of the config (until a reload reads the file again)",
    )
    _config_arg(run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file and exit (0 valid, 2 invalid)",
        description="Validate a config file without starting anything. Exit 0 if valid, 2 if not.",
        epilog=(
            "examples:\n  aaeventd check-config config/aaeventd.yaml\n"
            "  aaeventd check-config --example > ~/.config/aaeventd/config.yaml"
        ),
        formatter_class=fmt,
    )
    check.add_argument("path", nargs="?", help="the YAML file (default: the usual lookup)")
    check.add_argument(
        "--example",
        action="store_true",
        help="print the example config (every key with its default) and exit",
    )

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
            "  aaeventd watch --types 'skill_*,heal_*' --json\n"
            "  aaeventd watch --types '!step_*'"
        ),
        formatter_class=fmt,
    )
    watch.add_argument(
        "--types", help="comma-separated globs, '!' excludes, e.g. 'skill_*,heal_*' or '!step_*'"
    )
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
            "this Python interpreter, and the man page its Documentation= names to\n"
            "~/.local/share/man/man1/aaeventd.1 ($XDG_DATA_HOME/man/man1), run\n"
            "'systemctl --user daemon-reload' and print the commands that enable it.\n"
            "--dry-run prints the units and changes nothing. See docs/systemd.md."
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
        "--dry-run",
        action="store_true",
        help="print the units (and the man page's path) instead of writing them",
    )

    uninstall = sub.add_parser(
        "uninstall-service",
        help="stop, disable and remove the units install-service wrote",
        description=(
            "Run 'systemctl --user disable --now' on the aaeventd units in\n"
            "~/.config/systemd/user/ (the sockets first), remove their files and the man\n"
            "page install-service wrote, and run 'systemctl --user daemon-reload'. The\n"
            "config, token and journal stay.\n"
            "--dry-run prints what it would do and changes nothing."
        ),
        epilog="examples:\n  aaeventd uninstall-service --dry-run\n  aaeventd uninstall-service",
        formatter_class=fmt,
    )
    uninstall.add_argument(
        "--dry-run", action="store_true", help="print what would be done instead of doing it"
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
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C wherever it lands (an import, a connect, a print): no traceback.
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    module, name = COMMANDS[args.command]
    owner = importlib.import_module(f"{__name__}.{module}" if module else __name__)
    handler: Callable[[argparse.Namespace], int] = getattr(owner, name)
    try:
        return handler(args)
    except ConfigError as exc:
        err(f"config error: {exc}")
        return EXIT_USAGE
    except CommandFailed as exc:
        err(str(exc))
        return exc.code


# -- run, check-config, install-service ------------------------------------------------


# The daemon's event loop: "asyncio" (the default) or "uvloop" (the uvloop extra).
EVENT_LOOP_ENV = "AAEVENTD_EVENT_LOOP"


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from aaeventd.daemon.app import serve

    config, path = load(args)
    if args.log_level:
        logging = config.logging.model_copy(update={"level": args.log_level})
        config = config.model_copy(update={"logging": logging})
    # uvloop lowers the p99 latency and CPU of the fan-out at moderate rates, but at the
    # descriptor limit libuv's accept path is not the one docs/limits.md describes:
    # opt-in only (docs/performance.md).
    choice = os.environ.get(EVENT_LOOP_ENV) or "asyncio"
    if choice not in ("asyncio", "uvloop"):
        raise ConfigError(EVENT_LOOP_ENV, f"must be asyncio or uvloop, not {choice!r}")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigError(
                EVENT_LOOP_ENV, f"uvloop: {exc} (pip install 'aaeventd[uvloop]')"
            ) from None
        return uvloop.run(serve(config, config_path=path))
    return asyncio.run(serve(config, config_path=path))


def _cmd_check_config(args: argparse.Namespace) -> int:
    if args.example:
        if args.path is not None:
            err("give either PATH or --example, not both")
            return EXIT_USAGE
        from importlib.resources import files

        # Shipped in the wheel; config/aaeventd.yaml in the source tree is the same file.
        print(files("aaeventd").joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8"), end="")
        return EXIT_OK
    from aaeventd.config import load_config, resolve_socket_path, resolve_token_file

    config, path = load_config(args.path)
    where = path or "built-in defaults"
    print(f"{where}: ok")
    print(f"  sources:   {resolve_socket_path(config)}")
    print(f"  clients:   ws://{url_host(config.websocket.host)}:{config.websocket.port}/")
    token = resolve_token_file(config)
    print(f"  token:     {token if token else 'none (loopback, Host/Origin checks only)'}")
    return EXIT_OK


def _cmd_install_service(args: argparse.Namespace) -> int:
    from aaeventd.cli.manpage import render_manpage
    from aaeventd.cli.service import cmd_install_service

    page = render_manpage(build_parser(), version=__version__)
    return cmd_install_service(args, man_page=page)
