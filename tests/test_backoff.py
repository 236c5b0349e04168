"""aaeventd.backoff: one reconnect back-off, and every reconnecting loop on it.

The generator is checked with a fixed ``random``; the source library's vendorable
copy is held to it value by value; the Subscriber's pauses are recorded against a
real daemon that went away (its ``sleep`` records instead of sleeping).
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aaeventd import client
from aaeventd.backoff import WATCH_JITTER, WATCH_MAX_DELAY, WATCH_MIN_DELAY, backoff
from aaeventd.subscriber import Subscriber
from tests.support import REPO, TIMEOUT, ThreadedDaemon, daemon_thread, make_config


def fixed(*values: float) -> Callable[[], float]:
    """A ``random`` that returns ``values`` in turn, for ever."""
    cycle = itertools.cycle(values)
    return lambda: next(cycle)


def first(delays: Iterator[float], n: int) -> list[float]:
    return list(itertools.islice(delays, n))


def test_backoff_starts_random_then_grows_to_the_cap() -> None:
    """First pause random below initial_delay, then min_delay times factor up to max_delay."""
    got = first(backoff(1.0, 0.5, 3.0, 2.0, 0.0, random=fixed(0.25)), 6)
    assert got == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0], got


@pytest.mark.parametrize(("r", "scale"), [(0.0, 1 - WATCH_JITTER), (0.5, 1.0), (0.75, 1.1)])
def test_backoff_jitter_scales_each_later_pause(r: float, scale: float) -> None:
    """With jitter j each pause after the first is scaled by 1 + j * (2r - 1)."""
    got = first(backoff(random=fixed(r)), 8)
    plain = [WATCH_MIN_DELAY * 2**i for i in range(7)]
    expected = [min(p, WATCH_MAX_DELAY) * scale for p in plain]
    assert got[1:] == pytest.approx(expected), got


@pytest.mark.parametrize(
    "numbers",
    [(-1, 0.1, 1, 2, 0), (0, 0, 1, 2, 0), (0, 2, 1, 2, 0), (0, 0.1, 1, 1, 0), (0, 0.1, 1, 2, 1)],
)
def test_backoff_refuses_numbers_that_cannot_grow_or_end(
    numbers: tuple[float, float, float, float, float],
) -> None:
    """Bad numbers raise ValueError at the call, in the shared function and client's copy."""
    with pytest.raises(ValueError, match="backoff"):
        backoff(*numbers)
    with pytest.raises(ValueError, match="backoff"):
        client._backoff(*numbers)


@pytest.mark.parametrize(
    "numbers",
    [
        (0.0, client.RETRY_INITIAL_SECONDS, client.RETRY_MAX_SECONDS, 2.0, 0.0),
        (0.25, 0.25, 5.0, 2.0, 0.2),
        (5.0, 3.1, 90.0, 1.618, 0.0),
        (1.0, 0.01, 0.01, 3.0, 0.5),
    ],
)
def test_client_copy_is_the_shared_backoff(
    numbers: tuple[float, float, float, float, float],
) -> None:
    """aaeventd.client's vendorable copy gives the same pauses as aaeventd.backoff."""
    randoms = (0.9, 0.0, 0.3, 0.5, 0.999, 0.1)
    shared = first(backoff(*numbers, random=fixed(*randoms)), 40)
    copy = first(client._backoff(*numbers, random=fixed(*randoms)), 40)
    assert copy == shared, f"client {copy[:8]} vs shared {shared[:8]}"


def test_source_library_backs_off_at_once_then_doubling() -> None:
    """EventSource reconnects at once, then from retry_initial doubling to retry_max."""
    src = client.EventSource("/nonexistent/aaeventd.sock", retry_initial=0.1, retry_max=0.5)
    got = first(src._delays(), 6)
    assert got == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5], got


class _Enough(Exception):
    """Ends the Subscriber's reconnect loop once enough pauses are recorded."""


def test_subscriber_pauses_follow_the_watch_policy(tmp: Path) -> None:
    """After its daemon goes away, a Subscriber pauses as aaeventd.backoff's WATCH policy says."""
    pauses: list[float] = []

    def record(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 6:
            raise _Enough

    with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
        sub = Subscriber(f"http://127.0.0.1:{d.ws_port}/", sleep=record, open_timeout=TIMEOUT)
        frame = sub.recv(timeout=TIMEOUT)
        assert frame is not None
        assert frame["type"] == "connected"
    with sub, pytest.raises(_Enough):
        sub.recv(timeout=TIMEOUT)
    low, high = 1 - WATCH_JITTER, 1 + WATCH_JITTER
    bounds = [(0.0, WATCH_MIN_DELAY)] + [
        (WATCH_MIN_DELAY * 2**i * low, WATCH_MIN_DELAY * 2**i * high) for i in range(5)
    ]
    outside = [(p, b) for p, b in zip(pauses, bounds, strict=True) if not b[0] <= p < b[1]]
    assert outside == [], f"pauses {pauses} outside the policy's bounds: {outside}"


@pytest.mark.parametrize("module", ["backoff.py", "endpoints.py", "client.py"])
def test_shared_rules_and_the_source_library_import_only_the_stdlib(module: str) -> None:
    """backoff/endpoints stay importable by anything; client.py stays one vendorable file."""
    tree = ast.parse((REPO / "aaeventd" / module).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    assert names - sys.stdlib_module_names - {"__future__"} == set()
