"""The package as a user installs it (issue 13, part 3): ``pipx install .`` and
``uv tool install .`` of a copy of this checkout, then the installed ``aaeventd``
command, not the checkout's.

pipx and uv are pip-installed into a throwaway venv; ``PIPX_HOME``/``PIPX_BIN_DIR``/
``PIPX_MAN_DIR`` and ``UV_TOOL_DIR``/``UV_TOOL_BIN_DIR`` point into the test's temp
dir, so nothing of the user's tools is touched.  Both build the wheel with PEP 517
(non-editable) and install it into a fresh venv, reusing their caches (~/.cache): the
module takes about 35 s here.  It needs the package index (pipx, uv, setuptools and
the dependencies come from it); without one it fails, it does not skip.

The source tree is copied first so that the in-tree build (``build/``, ``*.egg-info``)
never writes into the checkout.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO, short_tmpdir

# Builds and downloads; far above the ~10 s each takes here with warm caches.
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 60.0
# What a fresh copy of the source needs; everything else (venvs, caches, the in-tree
# build, node_modules of the tests) stays behind.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "node_modules",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
)


@dataclass(frozen=True)
class Installed:
    """The result of ``pipx install`` or ``uv tool install``: the command and its venv."""

    tmp: Path
    command: Path
    venv: Path
    env: dict[str, str]


def run(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def tools() -> Iterator[Path]:
    """A throwaway venv with pipx and uv pip-installed; its bin directory."""
    with short_tmpdir() as tmp:
        made = run(
            [sys.executable, "-m", "venv", str(tmp / "tools")],
            env=dict(os.environ),
            cwd=tmp,
            timeout=RUN_TIMEOUT,
        )
        assert made.returncode == 0, made.stderr
        bin_dir = tmp / "tools" / "bin"
        got = run(
            [str(bin_dir / "pip"), "install", "--quiet", "pipx", "uv"],
            env=dict(os.environ),
            cwd=tmp,
            timeout=INSTALL_TIMEOUT,
        )
        assert got.returncode == 0, f"pip install pipx uv: exit {got.returncode}\n{got.stderr}"
        yield bin_dir


@pytest.fixture(scope="module", params=["pipx", "uv"])
def installed(request: pytest.FixtureRequest, tools: Path) -> Iterator[Installed]:
    """``pipx install SRC`` / ``uv tool install SRC`` of a copy of the checkout."""
    installer: str = request.param
    with short_tmpdir() as tmp:
        src = tmp / "src"
        shutil.copytree(REPO, src, ignore=COPY_IGNORE)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("XDG_", "AAEVENTD_", "PIPX_", "UV_", "VIRTUAL_ENV", "PYTHON"))
        }
        for name in ("run", "state", "cfg"):
            (tmp / name).mkdir(mode=0o700)
        env.update(
            XDG_RUNTIME_DIR=str(tmp / "run"),
            XDG_STATE_HOME=str(tmp / "state"),
            XDG_CONFIG_HOME=str(tmp / "cfg"),
            # Both keep their caches where they are by default (~/.cache): reused.
            PIPX_HOME=str(tmp / "pipx"),
            PIPX_BIN_DIR=str(tmp / "bin"),
            PIPX_MAN_DIR=str(tmp / "man"),
            UV_TOOL_DIR=str(tmp / "uv"),
            UV_TOOL_BIN_DIR=str(tmp / "bin"),
            UV_PYTHON_DOWNLOADS="never",
        )
        if installer == "pipx":
            args = [str(tools / "pipx"), "install", "--python", sys.executable, str(src)]
            venv = tmp / "pipx" / "venvs" / "aaeventd"
        else:
            args = [str(tools / "uv"), "tool", "install", "--python", sys.executable, str(src)]
            venv = tmp / "uv" / "aaeventd"
        done = run(args, env=env, cwd=tmp, timeout=INSTALL_TIMEOUT)
        assert done.returncode == 0, f"{installer} install: exit {done.returncode}\n{done.stderr}"
        yield Installed(tmp=tmp, command=tmp / "bin" / "aaeventd", venv=venv, env=env)


def aaeventd(inst: Installed, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(inst.command), *args], env=inst.env, cwd=inst.tmp, timeout=RUN_TIMEOUT)


def test_installed_command_runs_from_its_own_venv(installed: Installed) -> None:
    """The installed `aaeventd` imports the package from the tool's own venv, not the checkout."""
    probe = run(
        [str(installed.venv / "bin" / "python"), "-c", "import aaeventd; print(aaeventd.__file__)"],
        env=installed.env,
        cwd=installed.tmp,
        timeout=RUN_TIMEOUT,
    )
    where = Path(probe.stdout.strip())
    assert where.is_relative_to(installed.venv), (
        f"aaeventd imported from {where}, not from {installed.venv} (an editable install?)"
    )


def test_installed_version_is_pyprojects(installed: Installed) -> None:
    """`aaeventd --version` of the installed command prints pyproject.toml's version."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    done = aaeventd(installed, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"aaeventd {version}"), done.stderr


def test_installed_example_config_prints_and_checks(installed: Installed) -> None:
    """`check-config --example` prints the shipped file; `check-config` on it exits 0."""
    shown = aaeventd(installed, "check-config", "--example")
    shipped = (REPO / "aaeventd" / "example-config.yaml").read_text(encoding="utf-8")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == shipped, (
        f"printed {len(shown.stdout)} characters, the shipped file has {len(shipped)}"
    )
    path = installed.tmp / "example.yaml"
    path.write_text(shown.stdout, encoding="utf-8")
    checked = aaeventd(installed, "check-config", str(path))
    assert checked.returncode == 0, f"exit {checked.returncode}: {checked.stderr}"


def test_wheel_carries_the_web_ui_and_the_example_config(installed: Installed) -> None:
    """The wheel's RECORD lists every file of daemon/static/, example-config.yaml, py.typed."""
    (dist_info,) = installed.venv.glob("lib/python*/site-packages/aaeventd-*.dist-info")
    with (dist_info / "RECORD").open(encoding="utf-8", newline="") as fh:
        record = {row[0] for row in csv.reader(fh) if row}
    static = REPO / "aaeventd" / "daemon" / "static"
    wanted = {
        p.relative_to(REPO).as_posix()
        for p in static.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    wanted |= {"aaeventd/example-config.yaml", "aaeventd/py.typed"}
    missing = sorted(wanted - record)
    assert len(wanted) > 2, f"only {len(wanted)} files expected: is {static} empty?"
    assert not missing, f"{len(missing)} of {len(wanted)} package files not in the wheel: {missing}"
