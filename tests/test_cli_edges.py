"""The CLI's rough edges (issue 13): ``emit -`` streams, Ctrl-C exits 130 quietly,
``run --log-level``, a cheap ``--version``, ``uninstall-service``, and the man page."""

from __future__ import annotations

import argparse
import io
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aaeventd import __version__
from aaeventd.cli import build_parser
from aaeventd.cli.manpage import render_manpage
from aaeventd.cli.service import (
    MAN_PAGE,
    SERVICE_UNIT,
    SOCKET_UNITS,
    install_service,
    uninstall_service,
)
from tests.support import (
    REPO,
    TIMEOUT,
    aaeventd_cmd,
    daemon_process,
    fake_systemctl,
    reap,
    require,
    run_python,
    short_tmpdir,
    subprocess_env,
    write_config,
)


def read_line_within(proc: subprocess.Popen[str], seconds: float) -> str:
    """The next stdout line of ``proc``, or "" if none came within ``seconds``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(seconds):
            return ""
    return proc.stdout.readline()


def test_emit_stdin_streams_acks_as_lines_come() -> None:
    """``producer | aaeventd emit -``: each line's ack is printed before the next line is
    written (stdin still open), not after the producer exits."""
    with daemon_process() as d, short_tmpdir() as tmp:
        emit = subprocess.Popen(
            aaeventd_cmd("emit", "-"),
            env=subprocess_env(tmp, AAEVENTD_SOCKET=d.sock),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        acks = []
        try:
            assert emit.stdin is not None
            for n in range(3):
                emit.stdin.write(f'{{"type":"persona_changed","persona":"p{n}"}}\n')
                emit.stdin.flush()
                acks.append(read_line_within(emit, TIMEOUT))
                assert acks[-1].startswith("accepted seq="), f"no ack for line {n + 1}: {acks}"
            emit.stdin.close()
            assert emit.wait(TIMEOUT) == 0
        finally:
            reap(emit)
            assert emit.stdout is not None
            emit.stdout.close()
    assert [a.split()[1] for a in acks] == [f"seq={d.seq + n}" for n in (1, 2, 3)], acks


def test_ctrl_c_in_watch_exits_130_without_a_traceback() -> None:
    """SIGINT to a real ``aaeventd watch`` connected to a real daemon: exit 130, no traceback."""
    with daemon_process() as d, short_tmpdir() as tmp:
        watch = subprocess.Popen(
            aaeventd_cmd("watch", "--url", d.url),
            env=subprocess_env(tmp),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while d.client_count() < 1:
                assert time.monotonic() < deadline, "watch never connected"
            watch.send_signal(signal.SIGINT)
            code = watch.wait(TIMEOUT)
            assert watch.stderr is not None
            err = watch.stderr.read()
        finally:
            reap(watch)
    assert code == 130, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err, err


def test_version_does_not_import_pydantic() -> None:
    """``aaeventd --version`` loads no pydantic (nor the config or the commands)."""
    heavy = ("pydantic", "pydantic_core", "yaml", "aaeventd.config", "aaeventd.cli.watch")
    code = (
        "import sys\n"
        "from aaeventd.cli import main\n"
        "rc = main(['--version'])\n"
        f"print(rc, sorted(m for m in sys.modules if m.startswith({heavy!r})))\n"
    )
    done = run_python(code)
    assert done.stdout == f"aaeventd {__version__}\n0 []\n", done.stdout + done.stderr


def test_run_log_level_overrides_the_config() -> None:
    """``run --log-level debug`` with ``logging.level: WARNING`` in the file logs DEBUG lines."""
    with short_tmpdir() as tmp:
        config = write_config(tmp, logging={"level": "WARNING"})
        args = ["--config", config, "--log-level", "debug"]
        with daemon_process(tmp, args=args, before_ready="DEBUG aaeventd") as d:
            assert any(" INFO aaeventd.app: " in ln for ln in d.lines), d.log()


def test_uninstall_service_disables_and_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disables the sockets and the service at once, removes their files, daemon-reloads."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0) as calls:
        unit_dir = tmp / "units"
        page = tmp / "man" / "man1" / MAN_PAGE
        out, err = io.StringIO(), io.StringIO()
        assert (
            install_service(
                socket_activated=True,
                dry_run=False,
                unit_dir=unit_dir,
                man_page=".TH X 1\n",
                man_path=page,
                out=out,
                err=err,
            )
            == 0
        )
        (unit_dir / "other.service").write_text("[Unit]\n", encoding="utf-8")
        (page.parent / "other.1").write_text(".TH Y 1\n", encoding="utf-8")
        calls.unlink()
        out, err = io.StringIO(), io.StringIO()
        rc = uninstall_service(dry_run=False, unit_dir=unit_dir, man_page=page, out=out, err=err)
        assert rc == 0, err.getvalue()
        assert sorted(p.name for p in unit_dir.iterdir()) == ["other.service"]
        assert sorted(p.name for p in page.parent.iterdir()) == ["other.1"]
        names = " ".join([*SOCKET_UNITS, SERVICE_UNIT])
        ran = calls.read_text(encoding="utf-8").splitlines()
        assert ran == [f"--user disable --now {names}", "--user daemon-reload"], ran
        for name in (*SOCKET_UNITS, SERVICE_UNIT):
            assert f"removed {unit_dir / name}\n" in out.getvalue()
        assert f"removed {page}\n" in out.getvalue()
        # Again: nothing left to do, still exit 0, no systemctl.
        calls.unlink()
        out = io.StringIO()
        rc = uninstall_service(dry_run=False, unit_dir=unit_dir, man_page=page, out=out, err=err)
        assert rc == 0
        assert out.getvalue() == f"nothing to remove: no aaeventd units in {unit_dir}\n"
        assert not calls.exists()


def test_uninstall_service_removes_a_man_page_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units already gone, the man page still there: it is removed, no systemctl runs."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0) as calls:
        page = tmp / "man" / "man1" / MAN_PAGE
        page.parent.mkdir(parents=True)
        page.write_text(".TH X 1\n", encoding="utf-8")
        out = io.StringIO()
        rc = uninstall_service(dry_run=True, unit_dir=tmp / "u", man_page=page, out=out)
        assert (rc, out.getvalue()) == (0, f"Would remove {page}\n")
        out = io.StringIO()
        rc = uninstall_service(dry_run=False, unit_dir=tmp / "u", man_page=page, out=out)
        assert rc == 0
        assert out.getvalue().startswith(f"removed {page}\n"), out.getvalue()
        assert not page.exists()
        assert not calls.exists()


def test_uninstall_service_without_a_user_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemctl fails (no user manager): the files are still removed, exit 0, and said."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=1):
        unit_dir = tmp / "units"
        out, err = io.StringIO(), io.StringIO()
        install_service(socket_activated=False, dry_run=False, unit_dir=unit_dir, out=out, err=err)
        err = io.StringIO()
        rc = uninstall_service(dry_run=False, unit_dir=unit_dir, out=out, err=err)
        assert rc == 0
        assert list(unit_dir.iterdir()) == []
        assert "disable --now aaeventd.service failed (Failed to connect" in err.getvalue()


def test_uninstall_service_dry_run_command_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``aaeventd uninstall-service --dry-run`` says what it would do, does nothing."""
    with short_tmpdir() as tmp, fake_systemctl(tmp, monkeypatch, rc=0) as calls:
        unit_dir = Path(tmp / "cfg" / "systemd" / "user")
        page = tmp / "data" / "man" / "man1" / MAN_PAGE  # $XDG_DATA_HOME of subprocess_env
        out, err = io.StringIO(), io.StringIO()
        install_service(
            socket_activated=False,
            dry_run=False,
            unit_dir=unit_dir,
            man_page=".TH X 1\n",
            man_path=page,
            out=out,
            err=err,
        )
        calls.unlink()
        env = subprocess_env(tmp, PATH=f"{tmp / 'bin'}")
        done = subprocess.run(
            aaeventd_cmd("uninstall-service", "--dry-run"),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"Would run: systemctl --user disable --now {SERVICE_UNIT}",
            f"Would remove {unit_dir / SERVICE_UNIT}",
            f"Would remove {page}",
            "Would run: systemctl --user daemon-reload",
        ], done.stdout
        assert (unit_dir / SERVICE_UNIT).exists()
        assert page.exists()
        assert not calls.exists()


def test_completion_and_man_page_cover_every_command() -> None:
    """shtab (bash, zsh) and ``python -m aaeventd.cli.manpage``, run on build_parser,
    name every command."""
    commands = ["run", "check-config", "emit", "watch", "confirm", "status", "clients", "ui"]
    commands += ["install-service", "uninstall-service"]
    generators = {
        "bash": ["-m", "shtab", "--shell=bash", "aaeventd.cli.build_parser"],
        "zsh": ["-m", "shtab", "--shell=zsh", "aaeventd.cli.build_parser"],
        "man": ["-m", "aaeventd.cli.manpage"],
    }
    missing, generated = {}, {}
    for name, args in generators.items():
        done = subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        require(
            "No module named" not in done.stderr,
            f"{name}: {done.stderr.strip()} (pip install -e '.[completion]')",
        )
        assert done.returncode == 0, (name, done.stderr)
        generated[name] = done.stdout
        text = done.stdout.replace("\\-", "-")  # roff escapes the hyphens
        missing[name] = [c for c in commands if c not in text]
    assert not any(missing.values()), f"commands missing: {missing}"
    page = run_python(
        "import sys; from aaeventd import __version__; from aaeventd.cli import build_parser; "
        "from aaeventd.cli.manpage import render_manpage; "
        "sys.stdout.write(render_manpage(build_parser(), version=__version__))"
    )
    assert page.returncode == 0, page.stderr
    assert generated["man"] == page.stdout, "python -m aaeventd.cli.manpage is not render_manpage"


def man_format(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``man --warnings=w -l`` of ``text``: the page as a terminal shows it, and groff's
    warnings on stderr (``w`` is every warning; groff's ``all`` leaves out ``mac``)."""
    require(shutil.which("man") is not None, "man is missing: install the Debian package 'man-db'")
    path = tmp / "page.1"
    path.write_text(text, encoding="utf-8")
    env = {**os.environ, "MANWIDTH": "200", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        ["man", "--warnings=w", "-l", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_man_page_is_valid_roff_with_every_section() -> None:
    """aaeventd(1) formats with no groff warning, has the sections a man page has, and
    lists every command with its options and examples."""
    page = render_manpage(build_parser(), version=__version__)
    with short_tmpdir() as tmp:
        shown = man_format(tmp, page)
        bad = man_format(tmp, page + ".NOSUCHMACRO\n")
    assert (shown.returncode, shown.stderr) == (0, "")
    assert "NOSUCHMACRO" in bad.stderr, "man --warnings=w would not catch a bad page"
    assert page.startswith(f'.TH AAEVENTD 1 "" "aaeventd {__version__}" "User Commands"\n')
    sections = re.findall(r"^\.SH (.+)$", page, re.M)
    assert sections == [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ]
    text = shown.stdout
    assert "aaeventd - the per-user event hub" in text
    for command in ("check-config", "install-service", "uninstall-service"):
        assert f"   aaeventd {command}\n" in text, command  # its subsection
    assert "--socket-activated" in text
    assert "--log-level {DEBUG,INFO,WARNING,ERROR}" in text
    assert 'aaeventd emit --json \'{"type":"persona_changed","persona":"devops"}\'' in text
    for code in ("0", "1", "2", "130"):
        assert re.search(rf"^ +{code} +\S", text, re.M), code
    for name in ("AAEVENTD_CONFIG", "AAEVENTD_SOCKET", "XDG_DATA_HOME", "config.yaml"):
        assert name in text, name
    assert "systemctl(1), journalctl(1)" in text
    # Copied from the page, options keep their ASCII hyphen (\- in roff).
    assert "\u2010" not in text
    assert "\u2212" not in text


def test_man_page_escapes_roff_in_help_texts() -> None:
    """A help text with a backslash, a leading dot or quote, comes out as written."""
    parser = argparse.ArgumentParser(prog="aaeventd", description="aaeventd: a test.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    odd = sub.add_parser(
        "odd",
        help="an odd one",
        description="first line\n.SH NOT A SECTION\n'br not a request\nback\\slash and \\fBbold",
        epilog="examples:\n  .dotted --x\n  'quoted",
    )
    odd.add_argument("--x", help=".starts with a dot (default: %(default)s)", default="D")
    page = render_manpage(parser, version="9")
    with short_tmpdir() as tmp:
        shown = man_format(tmp, page)
    assert (shown.returncode, shown.stderr) == (0, "")
    text = " ".join(shown.stdout.split())
    assert "NOT A SECTION" not in re.findall(r"^\.SH (.+)$", page, re.M)
    for literal in (
        ".SH NOT A SECTION",
        "'br not a request",
        "back\\slash and \\fBbold",
        ".dotted --x",
        "'quoted",
        ".starts with a dot (default: D)",
    ):
        assert literal in text, (literal, text)


def test_check_config_example_is_the_shipped_config_and_valid() -> None:
    """``check-config --example`` prints config/aaeventd.yaml (packaged as package data),
    and ``check-config`` accepts what it printed."""
    shipped = (REPO / "config" / "aaeventd.yaml").read_text(encoding="utf-8")
    packaged = REPO / "aaeventd" / "example-config.yaml"
    assert packaged.read_text(encoding="utf-8") == shipped, "aaeventd/example-config.yaml differs"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"example-config.yaml"' in pyproject, "not declared as package data"
    with short_tmpdir() as tmp:
        env = subprocess_env(tmp)
        done = subprocess.run(
            aaeventd_cmd("check-config", "--example"),
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == shipped, done.stdout[:300]
        (tmp / "example.yaml").write_text(done.stdout, encoding="utf-8")
        check = subprocess.run(
            aaeventd_cmd("check-config", str(tmp / "example.yaml")),
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert check.returncode == 0, check.stderr
