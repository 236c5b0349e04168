"""The systemd side (PROTOCOL §5): unit files, ``install-service``, socket activation
and the directories systemd hands over.

``systemd-analyze verify`` (Debian package ``systemd``) is a hard requirement: the
unit files are checked by systemd's own parser, not by string matching alone.  Verify
also runs ``man aaeventd(1)`` for the unit's ``Documentation=``: the tests give it the
rendered page through ``MANPATH`` (``man`` is Debian's ``man-db``).
Socket activation is driven the way systemd does it: the test creates the listening
sockets, a tiny launcher puts them on fds 3 and 4, sets ``LISTEN_PID`` (its own pid,
kept across ``exec``), ``LISTEN_FDS`` and ``LISTEN_FDNAMES``, and execs the daemon.

A real ``systemd --user`` manager is not started here: see docs/systemd.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect_sync

from aaeventd import __version__
from aaeventd.cli import build_parser
from aaeventd.cli.manpage import render_manpage
from aaeventd.cli.service import (
    MAN_PAGE,
    SERVICE_UNIT,
    SOCKET_UNITS,
    default_man_path,
    default_unit_dir,
    exec_path,
    install_service,
    render_units,
)
from aaeventd.config import parse_config, resolve_journal_dir, resolve_socket_path
from tests.support import (
    REPO,
    TIMEOUT,
    Log,
    aaeventd_cmd,
    daemon_process,
    event_lines,
    fake_systemctl,
    line_source,
    reap,
    require,
    short_tmpdir,
    subprocess_env,
    write_config,
    ws_client,
)

SHIPPED = REPO / "systemd"

# Puts the fds named in TEST_PASS_FDS on 3, 4, ... and execs the daemon with the
# socket-activation variables; exec keeps the pid, so LISTEN_PID is the daemon's.
ACTIVATION_LAUNCHER = r"""
import fcntl, os, sys
src = [int(fd) for fd in os.environ.pop("TEST_PASS_FDS").split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in src]
for fd in src:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(high))
os.environ["LISTEN_FDNAMES"] = os.environ.pop("TEST_FDNAMES")
os.execv(sys.executable, [sys.executable, "-m", "aaeventd", *sys.argv[1:]])
"""


def directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order, from a unit file."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


def analyze_verify(
    tmp: Path, files: list[Path], *, user: bool, manpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze [--user] verify FILES``, with ``MANPATH`` set to ``manpath`` (the
    man directory verify's ``man aaeventd(1)`` searches); ``None``: one holding the page
    :func:`render_manpage` writes."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install the Debian package 'systemd'"
    require(shutil.which("man") is not None, "man is missing: install the Debian package 'man-db'")
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    if manpath is None:
        manpath = tmp / "man"
        (manpath / "man1").mkdir(parents=True, exist_ok=True)
        page = render_manpage(build_parser(), version=__version__)
        (manpath / "man1" / MAN_PAGE).write_text(page, encoding="utf-8")
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "SYSTEMD_LOG_COLOR": "0",
        "MANPATH": str(manpath),
    }
    args = [analyze, *(["--user"] if user else []), "verify", *map(str, files)]
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def write_units(directory: Path, units: dict[str, str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in units.items():
        (directory / name).write_text(text, encoding="utf-8")
        paths.append(directory / name)
    return paths


# -- the unit files --------------------------------------------------------------------


def test_shipped_units_are_the_rendered_templates() -> None:
    """systemd/*.service|socket are exactly what install-service renders for /usr/bin/python3."""
    rendered = render_units(python="/usr/bin/python3", socket_activated=True)
    shipped = {p.name: p.read_text(encoding="utf-8") for p in SHIPPED.iterdir()}
    assert shipped == rendered


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
@pytest.mark.parametrize("socket_activated", [False, True], ids=["plain", "socket"])
def test_rendered_units_pass_systemd_analyze_verify(user: bool, socket_activated: bool) -> None:
    """systemd-analyze verify accepts the rendered units: exit 0 and not one warning."""
    with short_tmpdir() as tmp:
        units = render_units(python=sys.executable, socket_activated=socket_activated)
        files = write_units(tmp / "units", units)
        done = analyze_verify(tmp, files, user=user)
        assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_shipped_units_pass_systemd_analyze_verify(user: bool) -> None:
    """The shipped units verify too (their ExecStart is /usr/bin/python3)."""
    assert os.access("/usr/bin/python3", os.X_OK)
    with short_tmpdir() as tmp:
        done = analyze_verify(tmp, sorted(SHIPPED.iterdir()), user=user)
        assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_analyze_verify_would_catch_a_bad_unit() -> None:
    """The verify check has teeth: an unknown key or a 253-only type gives warnings."""
    with short_tmpdir() as tmp:
        text = render_units(python=sys.executable, socket_activated=False)[SERVICE_UNIT]
        bad = text.replace("Type=notify\n", "Type=notify-reload\nNoSuchKey=1\n")
        done = analyze_verify(tmp, write_units(tmp / "units", {SERVICE_UNIT: bad}), user=True)
        assert "notify-reload" in done.stderr
        assert "NoSuchKey" in done.stderr


def test_analyze_verify_checks_the_documentation_man_page() -> None:
    """Documentation=man:aaeventd(1) is checked: with no page on MANPATH, verify fails."""
    with short_tmpdir() as tmp:
        units = render_units(python=sys.executable, socket_activated=False)
        assert directives(units[SERVICE_UNIT])["Unit.Documentation"] == ["man:aaeventd(1)"]
        empty = tmp / "no-man"
        (empty / "man1").mkdir(parents=True)
        done = analyze_verify(tmp, write_units(tmp / "units", units), user=True, manpath=empty)
        assert done.returncode != 0, done.stderr
        assert "Command 'man aaeventd(1)' failed with code 16" in done.stderr


def test_service_unit_directives() -> None:
    """Type=notify, watchdog, restart, reload by SIGHUP, and sandboxing under PrivateUsers."""
    unit = directives(
        render_units(python="/opt/py/bin/python", socket_activated=False)[SERVICE_UNIT]
    )
    service = {k.removeprefix("Service."): v for k, v in unit.items() if k.startswith("Service.")}
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == ["/opt/py/bin/python -m aaeventd run"]
    assert service["ExecReload"] == ["kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert int(service["WatchdogSec"][0]) >= 5
    assert int(service["TimeoutStopSec"][0]) >= 5
    assert service["RuntimeDirectory"] == service["StateDirectory"] == ["aaeventd"]
    assert service["RuntimeDirectoryMode"] == service["StateDirectoryMode"] == ["0700"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    # In a user manager these fail the start (218/CAPABILITIES) or do nothing
    # without PrivateUsers=yes.
    assert service["PrivateUsers"] == ["yes"]
    for key in (
        "CapabilityBoundingSet",
        "PrivateDevices",
        "ProtectClock",
        "ProtectKernelLogs",
        "ProtectKernelModules",
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "NoNewPrivileges",
        "SystemCallFilter",
        "SystemCallErrorNumber",
    ):
        assert key in service, key
    assert service["SystemCallErrorNumber"] == ["EPERM"]  # not SIGSYS
    assert unit["Install.WantedBy"] == ["default.target"]


def analyze_security(tmp: Path, unit: Path, *, user: bool) -> float:
    """The overall exposure ``systemd-analyze security --offline=true`` gives ``unit``."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install the Debian package 'systemd'"
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    args = [analyze, *(["--user"] if user else []), "security", "--offline=true", str(unit)]
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) ", done.stdout)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert match, done.stdout[-500:]
    return float(match.group(1))


def test_security_exposure_is_the_one_docs_security_md_records() -> None:
    """systemd-analyze security of the shipped unit gives docs/security.md's figures, for
    the unit file whose md5 that page names."""
    unit = SHIPPED / SERVICE_UNIT
    page = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    recorded = re.search(r"unit file md5 `([0-9a-f]{32})`", page)
    figures = re.findall(
        r"security --offline=true systemd/aaeventd.service` \| \*\*(\d+\.\d+) ", page
    )
    assert recorded, "docs/security.md lost the md5 of the unit it measured"
    assert len(figures) == 2, f"docs/security.md: {len(figures)} exposure figures, not 2"
    md5 = hashlib.md5(unit.read_bytes()).hexdigest()
    assert recorded.group(1) == md5, f"docs/security.md measured {recorded.group(1)}, unit is {md5}"
    with short_tmpdir() as tmp:
        measured = [analyze_security(tmp, unit, user=user) for user in (False, True)]
    assert measured == [float(f) for f in figures], f"system, --user: {measured} vs {figures}"
    assert max(measured) < 3.0, f"exposure {measured} is no longer OK (below 3.0)"


def test_tasks_max_covers_the_daemons_threads() -> None:
    """TasksMax= is above the thread bound on any machine (loop + default executor of at
    most 32 + fsync) and above the peak of a daemon replaying its journal to 8 clients."""
    unit = directives(render_units(python=sys.executable, socket_activated=False)[SERVICE_UNIT])
    tasks_max = int(unit["Service.TasksMax"][0])
    bound = 1 + min(32, (os.cpu_count() or 1) + 4) + 1
    assert tasks_max > 1 + 32 + 1, f"TasksMax={tasks_max} leaves no headroom above 34 threads"
    peak = 0
    done = threading.Event()
    with daemon_process(events={"replay_buffer": 10}) as d:
        task_dir = f"/proc/{d.proc.pid}/task"

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.002):
                peak = max(peak, len(os.listdir(task_dir)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            with line_source(d.socket_path) as source:
                source.sock.sendall(event_lines(0, 3000, 100))
                acks = [source.recv() for _ in range(3000)]
            assert acks[-1]["type"] == "ack", acks[-1]
            with contextlib.ExitStack() as stack:
                clients = [
                    stack.enter_context(ws_connect_sync(f"{d.url}?since=0", open_timeout=TIMEOUT))
                    for _ in range(8)
                ]
                for ws in clients:
                    last: dict[str, object] = {}
                    while (last.get("type"), last.get("seq")) != ("bulk", acks[-1]["seq"]):
                        last = json.loads(ws.recv(timeout=TIMEOUT))
        finally:
            done.set()
            sampler.join(TIMEOUT)
    assert peak > 1, f"{peak} thread at the peak: the sampling saw no worker"
    assert peak <= bound, f"{peak} threads at the peak; the bound here is {bound}"
    assert peak < tasks_max, f"{peak} threads at the peak, TasksMax={tasks_max}"


def test_socket_units_name_their_fds_and_use_the_daemons_default_path() -> None:
    """events/websocket fd names, both for aaeventd.service, at the paths clients expect."""
    units = render_units(python="/usr/bin/python3", socket_activated=True)
    events = directives(units["aaeventd.socket"])
    ws = directives(units["aaeventd-ws.socket"])
    assert events["Socket.FileDescriptorName"] == ["events"]
    assert ws["Socket.FileDescriptorName"] == ["websocket"]
    assert events["Socket.Service"] == ws["Socket.Service"] == [SERVICE_UNIT]
    assert events["Socket.SocketMode"] == ["0600"]
    assert events["Socket.DirectoryMode"] == ["0700"]
    assert events["Install.WantedBy"] == ws["Install.WantedBy"] == ["sockets.target"]
    # %t is $XDG_RUNTIME_DIR in a user manager: the same file `aaeventd emit` uses,
    # and $RUNTIME_DIRECTORY/events.sock for the service.
    assert events["Socket.ListenStream"] == ["%t/aaeventd/events.sock"]
    defaults = parse_config({})
    assert resolve_socket_path(defaults, {"XDG_RUNTIME_DIR": "/R"}) == Path(
        "/R/aaeventd/events.sock"
    )
    assert resolve_socket_path(defaults, {"RUNTIME_DIRECTORY": "/R/aaeventd"}) == Path(
        "/R/aaeventd/events.sock"
    )
    # websocket.host: localhost means both loopback addresses, one port (PROTOCOL §2).
    port = defaults.websocket.port
    assert defaults.websocket.host == "localhost"
    assert ws["Socket.ListenStream"] == [f"127.0.0.1:{port}", f"[::1]:{port}"]
    assert ws["Socket.BindIPv6Only"] == ["ipv6-only"]


def test_exec_path_quotes_what_systemd_parses_back() -> None:
    """A space, % and $ in the interpreter path survive systemd's parser (verify finds it)."""
    with short_tmpdir() as tmp:
        odd = tmp / "my py%$dir"
        odd.mkdir()
        (odd / "python").symlink_to(sys.executable)
        python = str(odd / "python")
        units = render_units(python=python, socket_activated=False)
        assert exec_path(python) == f'"{tmp}/my py%%$dir/python"'
        done = analyze_verify(tmp, write_units(tmp / "units", units), user=True)
        assert (done.returncode, done.stderr) == (0, "")
        assert exec_path("/usr/bin/python3") == "/usr/bin/python3"
        for bad in ('/a"b/python', "/a\\b/python", "/a'b/python", "/a\nb/python"):
            with pytest.raises(ValueError, match="quotes, backslashes"):
                exec_path(bad)


# -- install-service ------------------------------------------------------------------


def other_warnings(err: io.StringIO) -> list[str]:
    """Lines on ``err`` except the PrivateTmp one a checkout under /tmp always gets."""
    return [ln for ln in err.getvalue().splitlines() if "under a temporary directory" not in ln]


def test_install_service_writes_units_and_reloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes aaeventd.service for this python, runs daemon-reload, prints the next steps."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0) as calls:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "cfg"))
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp / "data"))
        out, err = io.StringIO(), io.StringIO()
        rc = install_service(
            socket_activated=False, dry_run=False, man_page=".TH X 1\n", out=out, err=err
        )
        unit_dir = tmp / "cfg" / "systemd" / "user"
        page = tmp / "data" / "man" / "man1" / "aaeventd.1"
        assert rc == 0
        assert default_unit_dir() == unit_dir
        assert default_man_path() == page
        assert page.read_text(encoding="utf-8") == ".TH X 1\n"
        assert stat.S_IMODE(page.stat().st_mode) == 0o644
        assert sorted(p.name for p in unit_dir.iterdir()) == [SERVICE_UNIT]
        text = (unit_dir / SERVICE_UNIT).read_text(encoding="utf-8")
        assert text == render_units(python=sys.executable, socket_activated=False)[SERVICE_UNIT]
        assert f"ExecStart={sys.executable} -m aaeventd run\n" in text
        assert stat.S_IMODE((unit_dir / SERVICE_UNIT).stat().st_mode) == 0o644
        assert calls.read_text(encoding="utf-8") == "--user daemon-reload\n"
        printed = out.getvalue()
        assert f"wrote {unit_dir / SERVICE_UNIT}\nwrote {page}\n" in printed
        assert "ran systemctl --user daemon-reload\n" in printed
        assert "  systemctl --user enable --now aaeventd.service\n" in printed
        assert "systemctl --user link" not in printed
        assert other_warnings(err) == []


def test_install_service_socket_activated(monkeypatch: pytest.MonkeyPatch) -> None:
    """--socket-activated adds both socket units and says to enable those."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0):
        out, err = io.StringIO(), io.StringIO()
        unit_dir = tmp / "units"
        rc = install_service(
            socket_activated=True, dry_run=False, unit_dir=unit_dir, out=out, err=err
        )
        assert rc == 0
        assert sorted(p.name for p in unit_dir.iterdir()) == sorted([SERVICE_UNIT, *SOCKET_UNITS])
        printed = out.getvalue()
        assert "  systemctl --user enable --now aaeventd.socket aaeventd-ws.socket\n" in printed
        # Not the manager's own directory: link the files in first.
        assert f"  systemctl --user link {unit_dir / SERVICE_UNIT} " in printed
        assert other_warnings(err) == []
        # A later plain install warns about the socket units left behind.
        out, err = io.StringIO(), io.StringIO()
        rc = install_service(
            socket_activated=False, dry_run=False, unit_dir=unit_dir, out=out, err=err
        )
        assert rc == 0
        assert "systemctl --user disable --now aaeventd.socket aaeventd-ws.socket" in err.getvalue()


def test_install_service_dry_run_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """--dry-run prints the units, the man page's path and the commands; writes no file,
    runs no systemctl."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0) as calls:
        out, err = io.StringIO(), io.StringIO()
        unit_dir = tmp / "units"
        page = tmp / "man" / "man1" / MAN_PAGE
        rc = install_service(
            socket_activated=True,
            dry_run=True,
            unit_dir=unit_dir,
            man_page=".TH X 1\n",
            man_path=page,
            out=out,
            err=err,
        )
        assert rc == 0
        assert not unit_dir.exists()
        assert not (tmp / "man").exists()
        assert not calls.exists()
        printed = out.getvalue()
        for name, text in render_units(python=sys.executable, socket_activated=True).items():
            assert f"# {unit_dir / name} (dry run: not written)\n{text}" in printed
        assert f"\nWould write {page}\nWould run: systemctl --user daemon-reload\n" in printed
        assert other_warnings(err) == []


def test_install_service_reports_a_failed_daemon_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user manager: the units are still written, exit 0, and the failure is explained."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=1):
        out, err = io.StringIO(), io.StringIO()
        rc = install_service(
            socket_activated=False, dry_run=False, unit_dir=tmp / "u", out=out, err=err
        )
        assert rc == 0
        assert (tmp / "u" / SERVICE_UNIT).exists()
        assert "daemon-reload failed (Failed to connect to bus: No medium found)" in err.getvalue()
        assert "  systemctl --user enable --now aaeventd.service\n" in out.getvalue()


def test_install_service_without_systemctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """No systemctl on PATH: units written, and the reload is left to the user."""
    with short_tmpdir() as tmp:
        monkeypatch.setenv("PATH", str(tmp))
        out, err = io.StringIO(), io.StringIO()
        rc = install_service(
            socket_activated=False, dry_run=False, unit_dir=tmp / "u", out=out, err=err
        )
        assert rc == 0
        assert (tmp / "u" / SERVICE_UNIT).exists()
        assert "systemctl not found" in err.getvalue()


def test_install_service_warns_about_an_interpreter_under_tmp() -> None:
    """PrivateTmp=yes hides /tmp from the service: an interpreter there gets a warning."""
    with short_tmpdir() as tmp:
        (tmp / "python").symlink_to(sys.executable)
        err = io.StringIO()
        rc = install_service(
            socket_activated=False,
            dry_run=True,
            unit_dir=tmp / "u",
            python=str(tmp / "python"),
            out=io.StringIO(),
            err=err,
        )
        assert rc == 0
        assert f"warning: {tmp / 'python'} is under a temporary directory" in err.getvalue()


def test_install_service_refuses_bad_interpreter_and_unwritable_dir() -> None:
    """A relative or missing interpreter is a usage error (2); an unwritable dir fails (1)."""
    with short_tmpdir() as tmp:
        for python in ("python3", str(tmp / "absent"), ""):
            err = io.StringIO()
            rc = install_service(
                socket_activated=False,
                dry_run=True,
                unit_dir=tmp / "u",
                python=python,
                out=io.StringIO(),
                err=err,
            )
            assert rc == 2
            assert "is not an absolute path to an executable" in err.getvalue()
        (tmp / "file").write_text("", encoding="utf-8")
        err = io.StringIO()
        rc = install_service(
            socket_activated=False,
            dry_run=False,
            unit_dir=tmp / "file" / "u",
            out=io.StringIO(),
            err=err,
        )
        assert rc == 1
        assert "cannot write the unit files" in err.getvalue()


def test_install_service_man_page_failure_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A man page that cannot be written is said, not fatal: the units are what runs."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0):
        (tmp / "file").write_text("", encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        rc = install_service(
            socket_activated=False,
            dry_run=False,
            unit_dir=tmp / "u",
            man_page=".TH X 1\n",
            man_path=tmp / "file" / "man1" / MAN_PAGE,
            out=out,
            err=err,
        )
        assert rc == 0
        assert (tmp / "u" / SERVICE_UNIT).exists()
        assert "warning: cannot write the man page: " in err.getvalue()
        assert "ran systemctl --user daemon-reload\n" in out.getvalue()


@pytest.mark.parametrize("data_home", ["xdg", "default"])
def test_install_service_command_installs_the_man_page_the_unit_names(
    data_home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``aaeventd install-service`` writes aaeventd(1) under $XDG_DATA_HOME (by
    default ~/.local/share, which man finds when ~/.local/bin is on PATH); verify of the
    unit it wrote finds that page; ``uninstall-service`` removes it."""
    require(shutil.which("man") is not None, "man is missing: install the Debian package 'man-db'")
    real_path = os.environ["PATH"]
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0) as calls:
        home = tmp / "home"
        (home / ".local" / "bin").mkdir(parents=True)
        env = subprocess_env(
            tmp, HOME=str(home), PATH=f"{tmp / 'bin'}:{home / '.local' / 'bin'}:{real_path}"
        )
        env.pop("MANPATH", None)
        if data_home == "xdg":
            page = tmp / "data" / "man" / "man1" / MAN_PAGE
        else:
            env.pop("XDG_DATA_HOME")
            page = home / ".local" / "share" / "man" / "man1" / MAN_PAGE

        def aaeventd(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                aaeventd_cmd(*args),
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )

        dry = aaeventd("install-service", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"\nWould write {page}\n" in dry.stdout
        assert not page.exists()
        done = aaeventd("install-service")
        assert done.returncode == 0, done.stderr
        assert f"wrote {page}\n" in done.stdout
        assert page.read_text(encoding="utf-8") == render_manpage(
            build_parser(), version=__version__
        )
        unit = tmp / "cfg" / "systemd" / "user" / SERVICE_UNIT
        if data_home == "default":
            found = subprocess.run(
                ["man", "-w", "aaeventd"],
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert (found.returncode, found.stdout) == (0, f"{page}\n"), found.stderr
        # systemd-analyze and man from here on: the real PATH.
        monkeypatch.setenv("PATH", real_path)
        verified = analyze_verify(tmp, [unit], user=True, manpath=page.parent.parent)
        assert (verified.returncode, verified.stderr) == (0, "")
        calls.unlink()
        dry = aaeventd("uninstall-service", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"Would remove {unit}\nWould remove {page}\n" in dry.stdout
        assert page.exists()
        assert not calls.exists()
        done = aaeventd("uninstall-service")
        assert done.returncode == 0, done.stderr
        assert f"removed {page}\n" in done.stdout
        assert not page.exists()
        assert not unit.exists()


# -- socket activation and systemd's directories (the daemon as a subprocess) -------------


@contextlib.contextmanager
def activated_daemon(
    tmp: Path, socks: list[socket.socket], names: str
) -> Iterator[subprocess.Popen[bytes]]:
    cfg = write_config(tmp)
    proc = subprocess.Popen(
        [sys.executable, "-c", ACTIVATION_LAUNCHER, "run", "--config", str(cfg)],
        env=subprocess_env(
            tmp, TEST_PASS_FDS=",".join(str(s.fileno()) for s in socks), TEST_FDNAMES=names
        ),
        pass_fds=[s.fileno() for s in socks],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        reap(proc)


def healthz(port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200
        body = json.loads(response.read())
        assert isinstance(body, dict)
        return body
    finally:
        conn.close()


def fd_cloexec(pid: int, fd: int) -> bool:
    text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text(encoding="ascii")
    match = re.search(r"^flags:\s*([0-7]+)$", text, re.M)
    assert match, text
    return bool(int(match.group(1), 8) & 0o2000000)  # O_CLOEXEC


@pytest.mark.parametrize("inherited", ["both", "events", "websocket", "websocket-v4-v6"])
def test_socket_activation_adopts_inherited_sockets(inherited: str) -> None:
    """Inherited fds named events/websocket are served instead of binding; any subset
    works, and two websocket fds (127.0.0.1 and ::1, as aaeventd-ws.socket passes) are
    both served."""
    with short_tmpdir() as tmp, contextlib.ExitStack() as stack:
        socks: list[socket.socket] = []
        names: list[str] = []
        unix_path = tmp / "activated.sock"
        tcp_port = None
        if inherited in ("both", "events"):
            unix = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            unix.bind(str(unix_path))
            unix.listen(16)
            socks.append(unix)
            names.append("events")
        expect_addresses: list[str] = []
        if inherited.startswith(("both", "websocket")):
            tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind(("127.0.0.1", 0))
            tcp.listen(16)
            tcp_port = tcp.getsockname()[1]
            socks.append(tcp)
            names.append("websocket")
            expect_addresses.append(f"127.0.0.1:{tcp_port}")
        if inherited == "websocket-v4-v6":
            tcp6 = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
            tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tcp6.bind(("::1", tcp_port))
            tcp6.listen(16)
            socks.append(tcp6)
            names.append("websocket")
            expect_addresses.append(f"[::1]:{tcp_port}")
        proc = stack.enter_context(activated_daemon(tmp, socks, ":".join(names)))
        log = Log(proc)
        line = log.until(" ready: ")[-1]
        match = re.search(r"sources on (\S+), clients on ws://\S+?:(\d+)/", line)
        assert match, line
        served_path, port = Path(match.group(1)), int(match.group(2))
        expect_path = unix_path if "events" in names else tmp / "ev.sock"
        with line_source(served_path), ws_client(port):
            health = healthz(port)
            if inherited == "websocket-v4-v6":
                with ws_connect_sync(f"ws://[::1]:{port}/", open_timeout=TIMEOUT) as ws6:
                    first6 = json.loads(ws6.recv(timeout=TIMEOUT))
                assert first6["type"] == "connected", first6
        cloexec = [fd_cloexec(proc.pid, 3 + i) for i in range(len(socks))]
        bound_own = (tmp / "ev.sock").exists()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(TIMEOUT)
        assert served_path == expect_path
        assert (health["port"], health["socket_path"]) == (port, str(expect_path))
        if tcp_port is not None:
            assert port == tcp_port
            assert health["addresses"] == expect_addresses, health["addresses"]
        assert bound_own is ("events" not in names)  # bound itself only when not inherited
        assert cloexec == [True] * len(socks)
        assert code == 0
        # The daemon never removes a socket file it did not create (the .socket unit's).
        if "events" in names:
            assert stat.S_ISSOCK(unix_path.stat().st_mode)


def test_daemon_uses_state_and_runtime_directory_from_systemd() -> None:
    """With STATE_DIRECTORY/RUNTIME_DIRECTORY set, the journal and socket live there."""
    with short_tmpdir() as tmp:
        state, runtime = tmp / "sd-state", tmp / "sd-runtime"
        state.mkdir(mode=0o700)
        runtime.mkdir(mode=0o700)
        cfg = tmp / "config.yaml"
        cfg.write_text("websocket:\n  port: 0\n", encoding="utf-8")
        env = subprocess_env(tmp, STATE_DIRECTORY=str(state), RUNTIME_DIRECTORY=str(runtime))
        with daemon_process(tmp, args=["--config", str(cfg)], env=env) as d:
            with line_source(runtime / "events.sock") as source:
                ack = source.send({"type": "persona_changed", "persona": "x"})
            code = d.stop()
        defaults = parse_config({"websocket": {"port": 0}})
        assert resolve_journal_dir(defaults, env) == state / "journal"
        assert any(f"journal {state / 'journal'}: " in line for line in d.lines), d.log()
        assert d.socket_path == runtime / "events.sock"
        assert ack["seq"] == 1
        assert [p.name for p in (state / "journal").glob("*.jsonl")] == [
            "events-000000000001.jsonl"
        ]
        assert not (tmp / "state" / "aaeventd").exists()
        assert not (tmp / "run" / "aaeventd").exists()
        assert code == 0
