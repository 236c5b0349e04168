"""``aaeventd install-service`` / ``uninstall-service``: the systemd user units, rendered
for this installation, the man page their ``Documentation=`` names, and their removal.

Owns the unit templates (``systemd/*.service|socket`` in the source tree are these
templates rendered for ``/usr/bin/python3``; a test keeps them identical), writing
them to the user unit directory, writing the man page text it is given to
``$XDG_DATA_HOME/man/man1/aaeventd.1``, and ``systemctl --user daemon-reload``.  See
docs/systemd.md for what each directive is for and what was checked on systemd 252.

Must not touch: the daemon (no other aaeventd module is imported: the CLI renders the
man page with :mod:`aaeventd.cli.manpage` and passes the text in).  Messages go to
the ``out``/``err`` streams it is given, so the CLI decides where they land.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

SERVICE_UNIT = "aaeventd.service"
EVENTS_SOCKET_UNIT = "aaeventd.socket"
WS_SOCKET_UNIT = "aaeventd-ws.socket"
SOCKET_UNITS = (EVENTS_SOCKET_UNIT, WS_SOCKET_UNIT)
# The page ``Documentation=man:aaeventd(1)`` names, under a man directory's man1/.
MAN_PAGE = "aaeventd.1"

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_SERVICE = """\
# aaeventd as a systemd *user* service (systemd >= 252), written by
# `aaeventd install-service`; docs/systemd.md explains every line.
# ExecStart execs Python itself: NotifyAccess=main accepts sd_notify only from it.
[Unit]
Description=aaeventd event hub (sources -> WebSocket clients)
# install-service writes the page to ~/.local/share/man/man1/aaeventd.1.
Documentation=man:aaeventd(1)

[Service]
# notify-reload needs systemd 253: on 252 ExecReload sends SIGHUP and waits for
# RELOADING=1 ... READY=1.
Type=notify
NotifyAccess=main
ExecStart=@EXEC@ -m aaeventd run
ExecReload=kill -HUP $MAINPID
WatchdogSec=10
Restart=on-failure
RestartSec=1
TimeoutStopSec=10
# Backstops sized from docs/limits.md: idle ~40 MiB plus the 246 MiB the limits allow
# under any misbehaviour fits under MemoryHigh; every theoretical maximum under MemoryMax.
MemoryHigh=384M
MemoryMax=512M
# Threads: the event loop, asyncio's default executor (min(32, CPUs+4): replay reads,
# the fsync once a second), the group commit's fsync thread; at most 34 on any machine,
# 7 seen on a busy daemon with 2 CPUs (docs/systemd.md).
TasksMax=64
SyslogIdentifier=aaeventd
# $RUNTIME_DIRECTORY holds events.sock; preserved so that aaeventd.socket's file
# (%t/aaeventd/events.sock) survives a stop of the service.
RuntimeDirectory=aaeventd
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
# $STATE_DIRECTORY/journal (systemd 252 puts it under ~/.config, later ones ~/.local/state).
StateDirectory=aaeventd
StateDirectoryMode=0700
UMask=0077
# In a user manager the namespace and capability options below take effect only
# with PrivateUsers=yes (without it some fail the start, others do nothing).
PrivateUsers=yes
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
SystemCallArchitectures=native
CapabilityBoundingSet=

[Install]
WantedBy=default.target
"""

_EVENTS_SOCKET = """\
# Socket activation of aaeventd.service: the sources' Unix socket, passed as the fd
# named "events".  The path is the daemon's default one, so `aaeventd emit` and the
# sources find it; it lives in %t/aaeventd, which aaeventd.service preserves.
[Unit]
Description=aaeventd sources socket

[Socket]
ListenStream=%t/aaeventd/events.sock
FileDescriptorName=events
SocketMode=0600
DirectoryMode=0700
Service=aaeventd.service

[Install]
WantedBy=sockets.target
"""

_WS_SOCKET = """\
# Socket activation of aaeventd.service: the WebSocket/HTTP port on both loopback
# addresses (what websocket.host: localhost binds), passed as two fds named
# "websocket".  websocket.host/port in the config are then not used: change the
# addresses here (systemctl --user edit aaeventd-ws.socket).
[Unit]
Description=aaeventd WebSocket socket

[Socket]
ListenStream=127.0.0.1:9876
ListenStream=[::1]:9876
# The [::1] socket takes IPv6 only (127.0.0.1 has its own).
BindIPv6Only=ipv6-only
FileDescriptorName=websocket
Service=aaeventd.service

[Install]
WantedBy=sockets.target
"""

# What needs no quoting in the executable of an ExecStart= line.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+:,=@%$-]+")


def exec_path(path: str) -> str:
    """``path`` as the executable of an ``ExecStart=`` line (checked on systemd 252).

    ``%`` becomes ``%%`` (specifiers are expanded on the whole line); ``$`` stays as
    it is (variables are not expanded in the executable, ``$$`` would stay doubled);
    a path with a space or other unusual character is double-quoted.

    Raises:
        ValueError: the path has a quote, a backslash or a control character, which
            systemd refuses in an executable name ("contains special characters").
    """
    if any(ch in "\"'\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise ValueError(f"systemd refuses quotes, backslashes and control characters: {path!r}")
    escaped = path.replace("%", "%%")
    return escaped if _PLAIN_PATH.fullmatch(path) else f'"{escaped}"'


def render_units(*, python: str, socket_activated: bool) -> dict[str, str]:
    """The unit files by name: the service, plus both socket units if ``socket_activated``.

    Args:
        python: the absolute path of the interpreter that has aaeventd installed.
        socket_activated: also render ``aaeventd.socket`` and ``aaeventd-ws.socket``.
    """
    units = {SERVICE_UNIT: _SERVICE.replace("@EXEC@", exec_path(python))}
    if socket_activated:
        units[EVENTS_SOCKET_UNIT] = _EVENTS_SOCKET
        units[WS_SOCKET_UNIT] = _WS_SOCKET
    return units


def default_unit_dir(env: dict[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user`` by default)."""
    env = dict(os.environ) if env is None else env
    config_home = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config_home):
        config_home = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(config_home) / "systemd" / "user"


def default_man_path(env: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/man/man1/aaeventd.1`` (``~/.local/share/man/man1/aaeventd.1`` by
    default: man-db searches ``~/.local/share/man`` when ``~/.local/bin`` is on ``PATH``)."""
    env = dict(os.environ) if env is None else env
    data_home = env.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data_home):
        data_home = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "man" / "man1" / MAN_PAGE


def install_service(
    *,
    socket_activated: bool,
    dry_run: bool,
    unit_dir: Path | None = None,
    python: str = sys.executable,
    man_page: str | None = None,
    man_path: Path | None = None,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Write the user units for this installation; the exit code for the CLI.

    Writes ``aaeventd.service`` (and with ``socket_activated`` the two socket
    units) whose ``ExecStart`` runs ``python -m aaeventd run``, and ``man_page`` if
    given (the unit's ``Documentation=man:aaeventd(1)``; a failure there is reported,
    not fatal), runs ``systemctl --user daemon-reload`` when ``systemctl`` is on
    ``PATH`` (a failure there is reported, not fatal: the files are written), then
    prints the commands that enable and start it.  ``dry_run`` prints the units and
    the man page's path instead and changes nothing.

    Args:
        socket_activated: install the socket units too (start on first connection).
        dry_run: print what would be written and run; touch nothing.
        unit_dir: where to write; ``None`` means :func:`default_unit_dir`.
        python: the interpreter for ``ExecStart`` (must be absolute and executable).
        man_page: the text of aaeventd(1) to write; ``None`` writes no man page.
        man_path: where to write it; ``None`` means :func:`default_man_path`.
        out: progress and the next commands.
        err: warnings and errors; ``None`` means :data:`sys.stderr`.

    Returns:
        0 done, 1 a file could not be written, 2 ``python`` is unusable.
    """
    err = sys.stderr if err is None else err
    if not python or not os.path.isabs(python) or not os.access(python, os.X_OK):
        print(f"aaeventd: {python!r} is not an absolute path to an executable", file=err)
        return EXIT_USAGE
    target = default_unit_dir() if unit_dir is None else unit_dir
    page_path = default_man_path() if man_path is None else man_path
    try:
        units = render_units(python=python, socket_activated=socket_activated)
    except ValueError as exc:
        print(f"aaeventd: cannot put the interpreter path in a unit: {exc}", file=err)
        return EXIT_USAGE
    for place in (python, str(Path(__file__).resolve())):
        if place.startswith(("/tmp/", "/var/tmp/")):
            print(
                f"aaeventd: warning: {place} is under a temporary directory, which "
                "PrivateTmp=yes hides from the service: it will not start",
                file=err,
            )
    if dry_run:
        for name, text in units.items():
            print(f"# {target / name} (dry run: not written)", file=out)
            out.write(text)
            print(file=out)
        if man_page is not None:
            print(f"Would write {page_path}", file=out)
        print("Would run: systemctl --user daemon-reload", file=out)
    else:
        try:
            for name, text in units.items():
                _write_atomically(target / name, text)
                print(f"wrote {target / name}", file=out)
        except OSError as exc:
            print(f"aaeventd: cannot write the unit files: {exc}", file=err)
            return EXIT_FAILURE
        if man_page is not None:
            try:
                _write_atomically(page_path, man_page)
            except OSError as exc:
                print(
                    f"aaeventd: warning: cannot write the man page: {exc}; `man aaeventd` "
                    "will not find it (the units are written)",
                    file=err,
                )
            else:
                print(f"wrote {page_path}", file=out)
        _daemon_reload(out, err)
    if not socket_activated:
        stale = [n for n in SOCKET_UNITS if (target / n).exists()]
        if stale:
            print(
                f"aaeventd: warning: {', '.join(stale)} from an earlier --socket-activated "
                f"install still in {target}; if enabled they hold the sockets: "
                f"systemctl --user disable --now {' '.join(stale)}",
                file=err,
            )
    _print_next_steps(out, target, units, default=unit_dir is None or target == default_unit_dir())
    return EXIT_OK


def uninstall_service(
    *,
    dry_run: bool,
    unit_dir: Path | None = None,
    man_page: Path | None = None,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Undo :func:`install_service`; the exit code for the CLI.

    Runs ``systemctl --user disable --now`` on the units ``install-service`` wrote that
    are in ``unit_dir`` (a failure there is reported, not fatal: no user manager may be
    running), removes their files and ``man_page`` if it exists, then ``systemctl
    --user daemon-reload``.  Nothing else is touched: the config, the token and the
    journal stay.  ``dry_run`` prints what would be run and removed.

    Args:
        dry_run: print what would be run and removed; touch nothing.
        unit_dir: where the units are; ``None`` means :func:`default_unit_dir`.
        man_page: the man page to remove too (the CLI passes
            :func:`default_man_path`); ``None`` leaves man pages alone.
        out: progress.
        err: warnings and errors; ``None`` means :data:`sys.stderr`.

    Returns:
        0 done (also when nothing was installed), 1 a file could not be removed.
    """
    err = sys.stderr if err is None else err
    target = default_unit_dir() if unit_dir is None else unit_dir
    # Sockets first: stopping the service alone would let them start it again.
    names = [n for n in (*SOCKET_UNITS, SERVICE_UNIT) if os.path.lexists(target / n)]
    files = [target / n for n in names]
    if man_page is not None and os.path.lexists(man_page):
        files.append(man_page)
    if not files:
        print(f"nothing to remove: no aaeventd units in {target}", file=out)
        return EXIT_OK
    disable = ["--user", "disable", "--now", *names]
    if dry_run:
        if names:
            print(f"Would run: systemctl {' '.join(disable)}", file=out)
        for path in files:
            print(f"Would remove {path}", file=out)
        if names:
            print("Would run: systemctl --user daemon-reload", file=out)
        return EXIT_OK
    if names:
        _systemctl(disable, out, err)
    status = EXIT_OK
    for path in files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"aaeventd: cannot remove {path}: {exc}", file=err)
            status = EXIT_FAILURE
        else:
            print(f"removed {path}", file=out)
    if names:
        _daemon_reload(out, err)
    print("The config, the token file and the journal are left where they are.", file=out)
    return status


def _systemctl(args: list[str], out: TextIO, err: TextIO) -> bool:
    """Run ``systemctl ARGS``; say what happened; True when it succeeded."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        print(
            f"aaeventd: systemctl not found; run `systemctl {' '.join(args)}` "
            "where the user manager runs",
            file=err,
        )
        return False
    try:
        done = subprocess.run(
            [systemctl, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    else:
        if done.returncode == 0:
            print(f"ran systemctl {' '.join(args)}", file=out)
            return True
        problem = done.stderr.strip() or f"exit code {done.returncode}"
    print(
        f"aaeventd: warning: systemctl {' '.join(args)} failed ({problem}); "
        "is a user manager running for this user? Run it yourself once it is.",
        file=err,
    )
    return False


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _daemon_reload(out: TextIO, err: TextIO) -> None:
    _systemctl(["--user", "daemon-reload"], out, err)


def _print_next_steps(out: TextIO, target: Path, units: dict[str, str], *, default: bool) -> None:
    print("Next:", file=out)
    if not default:
        # A directory the user manager does not search: link the files in.
        paths = " ".join(str(target / n) for n in units)
        print(f"  systemctl --user link {paths}", file=out)
    if EVENTS_SOCKET_UNIT in units:
        print(
            f"  systemctl --user disable --now {SERVICE_UNIT}   "
            "# only if it ran without socket activation before",
            file=out,
        )
        print(f"  systemctl --user enable --now {' '.join(SOCKET_UNITS)}", file=out)
    else:
        print(f"  systemctl --user enable --now {SERVICE_UNIT}", file=out)
    print(f"  systemctl --user status {SERVICE_UNIT}", file=out)
    print(f"  journalctl --user -u {SERVICE_UNIT} -f", file=out)
    print('  loginctl enable-linger "$USER"   # keep it running when you are logged out', file=out)


def cmd_install_service(args: argparse.Namespace, *, man_page: str | None = None) -> int:
    """``install-service``; ``man_page`` is aaeventd(1) as the CLI rendered it."""
    return install_service(
        socket_activated=args.socket_activated,
        dry_run=args.dry_run,
        man_page=man_page,
        out=sys.stdout,
        err=sys.stderr,
    )


def cmd_uninstall_service(args: argparse.Namespace) -> int:
    return uninstall_service(
        dry_run=args.dry_run, man_page=default_man_path(), out=sys.stdout, err=sys.stderr
    )
