"""Fixtures shared by several test modules (helpers live in tests/support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import short_tmpdir


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A private directory with a short path (room for AF_UNIX socket names)."""
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def private_env(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config, socket or token can leak into a test: private XDG dirs."""
    for name in ("AAEVENTD_CONFIG", "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "cfg"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp / "state"))
