"""The client-side library: resume after a disconnect, drop duplicates, report refusals."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from aaeventd.client import EventSource
from aaeventd.config import Config
from aaeventd.subscriber import Subscriber, SubscriberError
from tests.support import TIMEOUT, ThreadedDaemon, daemon_thread, make_config


def events(sub: Subscriber, n: int) -> list[dict[str, Any]]:
    """The next ``n`` stream events (connected frames skipped)."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        frame = sub.recv(timeout=TIMEOUT)
        assert frame is not None, f"only {len(out)} of {n} events arrived"
        if frame["type"] != "connected":
            out.append(frame)
    return out


def connected(sub: Subscriber) -> bool:
    """Wait for the first frame of the first connection, which must be ``connected``."""
    frame = sub.recv(timeout=TIMEOUT)
    return frame is not None and frame["type"] == "connected"


def emit(d: ThreadedDaemon, *kinds: str) -> list[int]:
    with EventSource(d.socket_path, name="test", timeout=TIMEOUT, reconnect=False) as src:
        return [ack.seq for ack in (src.emit(k) for k in kinds) if ack is not None]


def fixed_port(tmp: Path, **sections: dict[str, Any]) -> Config:
    """A config on a port that is free now (held by nobody between the two daemons)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return make_config(tmp, websocket={"port": port}, **sections)


def test_resumes_after_a_daemon_restart_without_loss_or_duplicate(tmp: Path) -> None:
    """Events sent while the subscriber was cut off are replayed once, in order."""
    config = fixed_port(tmp)
    drops: list[BaseException] = []
    with daemon_thread(ThreadedDaemon(config, env={})) as first:
        sub = Subscriber(f"ws://127.0.0.1:{first.ws_port}/", on_disconnect=drops.append)
        assert connected(sub)
        assert emit(first, "a", "b") == [1, 2]
        assert [e["seq"] for e in events(sub, 2)] == [1, 2]
        assert emit(first, "c") == [3]
    with daemon_thread(ThreadedDaemon(config, env={})) as second, sub:
        assert emit(second, "d", "e") == [4, 5]
        got = events(sub, 3)
    assert [(e["seq"], e["type"]) for e in got] == [(3, "c"), (4, "d"), (5, "e")]
    assert len(drops) == 1
    assert sub.reconnects == 1
    assert sub.last_seq == 5


def test_filter_survives_the_reconnect(tmp: Path) -> None:
    """types= is sent again on every connection."""
    config = fixed_port(tmp)
    with daemon_thread(ThreadedDaemon(config, env={})) as first:
        sub = Subscriber(f"ws://127.0.0.1:{first.ws_port}/", types="keep_*")
        assert connected(sub)
        assert emit(first, "keep_a", "drop_b") == [1, 2]
        assert [e["type"] for e in events(sub, 1)] == ["keep_a"]
    with daemon_thread(ThreadedDaemon(config, env={})) as second, sub:
        assert emit(second, "drop_c", "keep_d") == [3, 4]
        assert [(e["seq"], e["type"]) for e in events(sub, 1)] == [(4, "keep_d")]


def test_new_epoch_restarts_the_count(tmp: Path) -> None:
    """A daemon with a new journal (new epoch): seqs start again and are not dropped."""
    config = fixed_port(tmp)
    with daemon_thread(ThreadedDaemon(config, env={})) as first:
        sub = Subscriber(f"ws://127.0.0.1:{first.ws_port}/")
        assert connected(sub)
        assert emit(first, "a", "b", "c") == [1, 2, 3]
        assert [e["seq"] for e in events(sub, 3)] == [1, 2, 3]
        old_epoch = sub.epoch
    fresh = config.model_copy(
        update={"journal": config.journal.model_copy(update={"directory": str(tmp / "j2")})}
    )
    with daemon_thread(ThreadedDaemon(fresh, env={})) as second, sub:
        # The reconnect shows the new journal: connected, then the epoch gap.
        assert connected(sub)
        gap = sub.recv(timeout=TIMEOUT)
        assert emit(second, "x") == [1]
        [event] = events(sub, 1)
    assert gap == {"type": "replay_gap", "reason": "epoch_changed", "from": None, "to": None}
    assert (event["seq"], event["type"]) == (1, "x")
    assert sub.epoch != old_epoch


def test_duplicates_are_dropped() -> None:
    """An event at or below the last seq handed out is not handed out again."""
    sub = Subscriber("ws://127.0.0.1:1/", since=10)
    assert sub._accept({"type": "x", "seq": 10}) is False
    assert sub._accept({"type": "x", "seq": 11}) is True
    assert sub._accept({"type": "x", "seq": 11}) is False
    assert sub._accept({"type": "heartbeat_ack"}) is True
    assert "since=11" in sub.url()


def test_first_connection_failure_is_an_error() -> None:
    """Nothing listening on the first try: SubscriberError, not an endless retry."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = held.getsockname()[1]
        with pytest.raises(SubscriberError, match="is aaeventd running"):
            Subscriber(f"ws://127.0.0.1:{port}/").recv(timeout=TIMEOUT)


def test_refused_handshake_reports_the_status(tmp: Path) -> None:
    """A token-protected daemon refuses a subscriber without one: HTTP 401."""
    token_file = tmp / "token"
    token_file.write_text("sesame\n")
    token_file.chmod(0o600)
    config = make_config(tmp, auth={"token_file": str(token_file)})
    with daemon_thread(ThreadedDaemon(config, env={})) as d:
        url = f"ws://127.0.0.1:{d.ws_port}/"
        with pytest.raises(SubscriberError) as info:
            Subscriber(url).recv(timeout=TIMEOUT)
        assert info.value.status == 401
        assert "sesame" not in str(info.value)
        with Subscriber(url, token="sesame") as sub:
            frame = sub.recv(timeout=TIMEOUT)
            assert frame is not None
            assert frame["type"] == "connected"
