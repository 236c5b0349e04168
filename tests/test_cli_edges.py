"""The CLI's rough edges (issue 13): ``emit -`` streams, Ctrl-C exits 130 quietly,
``run --log-level``, a cheap ``--version``, and ``uninstall-service``."""

from __future__ import annotations

import io
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aaeventd import __version__
from aaeventd.cli.service import (
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
        out, err = io.StringIO(), io.StringIO()
        assert (
            install_service(
                socket_activated=True, dry_run=False, unit_dir=unit_dir, out=out, err=err
            )
            == 0
        )
        (unit_dir / "other.service").write_text("[Unit]\n", encoding="utf-8")
        calls.unlink()
        out, err = io.StringIO(), io.StringIO()
        rc = uninstall_service(dry_run=False, unit_dir=unit_dir, out=out, err=err)
        assert rc == 0, err.getvalue()
        assert sorted(p.name for p in unit_dir.iterdir()) == ["other.service"]
        names = " ".join([*SOCKET_UNITS, SERVICE_UNIT])
        ran = calls.read_text(encoding="utf-8").splitlines()
        assert ran == [f"--user disable --now {names}", "--user daemon-reload"], ran
        for name in (*SOCKET_UNITS, SERVICE_UNIT):
            assert f"removed {unit_dir / name}\n" in out.getvalue()
        # Again: nothing left to do, still exit 0, no systemctl.
        calls.unlink()
        out = io.StringIO()
        assert uninstall_service(dry_run=False, unit_dir=unit_dir, out=out, err=err) == 0
        assert out.getvalue() == f"nothing to remove: no aaeventd units in {unit_dir}\n"
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
        out, err = io.StringIO(), io.StringIO()
        install_service(socket_activated=False, dry_run=False, unit_dir=unit_dir, out=out, err=err)
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
            "Would run: systemctl --user daemon-reload",
        ], done.stdout
        assert (unit_dir / SERVICE_UNIT).exists()
        assert not calls.exists()


def test_completion_and_man_page_cover_every_command() -> None:
    """shtab (bash, zsh) and argparse-manpage, run on build_parser, name every command."""
    commands = ["run", "check-config", "emit", "watch", "confirm", "status", "clients", "ui"]
    commands += ["install-service", "uninstall-service"]
    generators = {
        "bash": ["-m", "shtab", "--shell=bash", "aaeventd.cli.build_parser"],
        "zsh": ["-m", "shtab", "--shell=zsh", "aaeventd.cli.build_parser"],
        "man": [
            "-c",
            "import sys; from argparse_manpage.manpage import Manpage; "
            "from aaeventd.cli import build_parser; sys.stdout.write(str(Manpage(build_parser())))",
        ],
    }
    missing = {}
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
        text = done.stdout.replace("\\-", "-")  # roff escapes the hyphens
        missing[name] = [c for c in commands if c not in text]
    assert not any(missing.values()), f"commands missing: {missing}"


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
