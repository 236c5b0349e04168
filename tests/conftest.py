"""Fixtures shared by several test modules (helpers live in tests/support.py)."""

from __future__ import annotations

import logging
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
    for name in (
        "AAEVENTD_CONFIG",
        "AAEVENTD_SOCKET",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "NOTIFY_SOCKET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "cfg"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp / "state"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a reload's ``configure_logging`` does to the process-wide loggers.

    Tests that reload a daemon in-process would otherwise leave the ``aaeventd``
    logger writing to stderr and not propagating, hiding later tests' records.
    """
    loggers = [logging.getLogger("aaeventd"), logging.getLogger("aaeventd.websockets")]
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for logger, (level, propagate, handlers) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
