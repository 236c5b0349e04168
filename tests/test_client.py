"""The source-side library, aaeventd.client: EventSource and AsyncEventSource.

Everything is real: the daemon (in a thread, in this loop, or as a subprocess for the
restart test) on a private Unix socket, websockets clients answering confirmations.
Nothing sleeps: waits are on replies, frames, ``flush()`` or stderr lines, each with
a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from aaeventd.client import (
    Ack,
    Answer,
    AsyncEventSource,
    BufferFull,
    ConfirmationExpired,
    EventRejected,
    EventSource,
    SourceError,
)
from aaeventd.daemon.app import Daemon
from tests.support import (
    FACTOR,
    TIMEOUT,
    ThreadedDaemon,
    daemon_process,
    daemon_thread,
    make_config,
    recv_json,
    recv_until,
    run,
    running_daemon,
    short_tmpdir,
    ws_connect,
)

SHORT = 0.3 * FACTOR


# -- a daemon in a background thread (the sync library blocks) ------------------------


@pytest.fixture
def daemon(tmp: Path) -> Iterator[ThreadedDaemon]:
    with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
        yield d


@contextlib.contextmanager
def ws_client(port: int, query: str = "") -> Iterator[ClientConnection]:
    """A real WebSocket client whose ``connected`` frame has been read."""
    url = f"ws://127.0.0.1:{port}/" + (f"?{query}" if query else "")
    with connect(url, open_timeout=TIMEOUT) as ws:
        assert frame(ws)["type"] == "connected"
        yield ws


def frame(ws: ClientConnection) -> dict[str, Any]:
    obj = json.loads(ws.recv(timeout=TIMEOUT))
    assert isinstance(obj, dict)
    return obj


def frame_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` (others are skipped)."""
    while (msg := frame(ws))["type"] != kind:
        pass
    return msg


def answer(ws: ClientConnection, cid: str, response: str, remember: str = "none") -> None:
    ws.send(
        json.dumps(
            {"type": "confirmation_response", "id": cid, "response": response, "remember": remember}
        )
    )


@contextlib.contextmanager
def captured(name: str, level: int = logging.WARNING) -> Iterator[list[str]]:
    """Messages of logger ``name`` at ``level`` and above (whatever the propagation)."""
    messages: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Start ``fn`` in a worker; the future of its result."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


# -- EventSource: emit and acks ---------------------------------------------------------


def test_emit_returns_the_ack(daemon: Daemon) -> None:
    """emit() sends the event and returns its Ack (seq, delivered); clients get it."""
    with ws_client(daemon.ws_port) as ws, EventSource(daemon.socket_path, name="t") as src:
        ack = src.emit("skill_started", skill_name="start_work", total_steps=5)
        assert ack is not None
        assert (ack.seq, ack.delivered, ack.id) == (1, 1, None)
        got = frame(ws)
        assert (got["seq"], got["skill_name"], got["total_steps"]) == (1, "start_work", 5)
        assert src.connected is True
        assert src.welcome is not None
        assert src.welcome["type"] == "welcome"


def test_rejected_event_raises_and_the_connection_stays(daemon: Daemon) -> None:
    """A refused event raises EventRejected (code, line, details); the connection stays."""
    with EventSource(daemon.socket_path, name="t") as src:
        with pytest.raises(EventRejected) as rejected:
            src.emit("step_started", skill_id="s", step_name="x")
        assert rejected.value.code == "invalid_event"
        assert rejected.value.line == 2  # hello is line 1
        assert rejected.value.details == [{"loc": ["step_index"], "msg": "Field required"}]
        ack = src.emit("tick")
        assert ack is not None
        assert ack.seq == 1
        assert src.rejected == 0  # counted only for buffered events nobody waits for


def test_a_line_with_a_newline_is_refused_before_sending(daemon: Daemon) -> None:
    """send_line() refuses an embedded newline: two lines would shift every ack."""
    with EventSource(daemon.socket_path, name="t") as src:
        with pytest.raises(ValueError, match="newline"):
            src.send_line(b'{"type":"a"}\n{"type":"b"}')
        ack = src.emit("tick")
        assert ack is not None
        assert ack.seq == 1


def test_acks_match_their_events_across_threads(daemon: Daemon) -> None:
    """Eight threads emitting over one connection each get the acks of their own events."""
    with ws_client(daemon.ws_port) as ws, EventSource(daemon.socket_path, name="t") as src:

        def work(worker: int) -> list[tuple[int, int, int]]:
            out = []
            for n in range(25):
                ack = src.emit("tick", worker=worker, n=n)
                assert ack is not None
                out.append((ack.seq, worker, n))
            return out

        with ThreadPoolExecutor(max_workers=8) as pool:
            sent = [item for chunk in pool.map(work, range(8)) for item in chunk]
        broadcast = {f["seq"]: (f["worker"], f["n"]) for f in (frame(ws) for _ in range(200))}
    assert sorted(seq for seq, _, _ in sent) == list(range(1, 201))
    for seq, worker, n in sent:
        assert broadcast[seq] == (worker, n)


# -- EventSource: confirmations -----------------------------------------------------------


def test_request_confirmation_returns_the_answer(daemon: Daemon) -> None:
    """request_confirmation() returns a client's answer; ask() also gives remember."""
    with ws_client(daemon.ws_port) as ws, EventSource(daemon.socket_path, name="t") as src:
        result = in_thread(
            src.request_confirmation, "Deploy?", options=("deploy", "wait"), skill_id="s1"
        )
        request = frame(ws)
        assert request["type"] == "confirmation_required"
        assert (request["message"], request["options"], request["skill_id"]) == (
            "Deploy?",
            ["deploy", "wait"],
            "s1",
        )
        assert request["timeout_seconds"] == 60
        answer(ws, request["id"], "wait")
        assert result.result(TIMEOUT) == "wait"

        full = in_thread(src.ask, "Again?", id="fixed")
        assert frame_of(ws, "confirmation_required")["id"] == "fixed"
        answer(ws, "fixed", "yes", remember="this-skill")
        assert full.result(TIMEOUT) == Answer("fixed", "yes", "this-skill", None)


def test_request_confirmation_expired_returns_the_default(daemon: Daemon) -> None:
    """An expired confirmation with a default returns the default."""
    with EventSource(daemon.socket_path, name="t") as src:
        assert src.request_confirmation("Go?", timeout=SHORT, default="no") == "no"
        answer_ = src.ask("Go?", timeout=SHORT, default="yes")
        assert (answer_.response, answer_.reason) == ("yes", "timeout")


def test_request_confirmation_expired_without_default_raises(daemon: Daemon) -> None:
    """Without a default an expiry raises ConfirmationExpired with the reason."""
    with EventSource(daemon.socket_path, name="t") as src:
        with pytest.raises(ConfirmationExpired) as expired:
            src.request_confirmation("Go?", timeout=SHORT)
        assert expired.value.reason == "timeout"
        assert isinstance(expired.value.id, str)


def test_rejected_confirmation_request_raises(daemon: Daemon) -> None:
    """A request the daemon refuses (default not among options) raises EventRejected."""
    with EventSource(daemon.socket_path, name="t") as src:
        with pytest.raises(EventRejected) as rejected:
            src.request_confirmation("Go?", options=("a", "b"), default="c")
        assert rejected.value.code == "invalid_event"


def test_threads_wait_on_different_confirmations_over_one_connection(daemon: Daemon) -> None:
    """Threads waiting on different confirmations each get their own answer."""
    with (
        ws_client(daemon.ws_port, "types=confirmation_required") as ws,
        EventSource(daemon.socket_path, name="t") as src,
    ):
        options = ("zero", "one", "two", "three")
        waiting = [
            in_thread(src.request_confirmation, f"q{n}", options=options, id=f"c{n}")
            for n in range(4)
        ]
        emitted = in_thread(lambda: [src.emit("tick", n=n) for n in range(20)])
        assert sorted(frame(ws)["id"] for _ in range(4)) == ["c0", "c1", "c2", "c3"]
        for n in reversed(range(4)):
            answer(ws, f"c{n}", options[n])
        assert [w.result(TIMEOUT) for w in waiting] == list(options)
        acks = emitted.result(TIMEOUT)
        assert all(isinstance(a, Ack) for a in acks)
        assert len({a.seq for a in acks}) == 20


def test_messages_yields_answers_nobody_waits_for(daemon: Daemon) -> None:
    """An answer to a confirmation sent with emit() arrives through messages()."""
    with ws_client(daemon.ws_port) as ws, EventSource(daemon.socket_path, name="t") as src:
        ack = src.emit("confirmation_required", message="ok?")
        assert ack is not None
        assert ack.id is not None
        answer(ws, ack.id, "yes")
        assert next(src.messages(timeout=TIMEOUT)) == {
            "type": "confirmation_response",
            "id": ack.id,
            "response": "yes",
            "remember": "none",
        }


def test_shutdown_expiry_reaches_a_waiting_thread(tmp: Path) -> None:
    """A shutdown expiry returns the default to a waiting call, or raises without one."""
    with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d, ws_client(d.ws_port) as ws:
        src = EventSource(d.socket_path, name="t", reconnect=False)
        with src:
            with_default = in_thread(src.request_confirmation, "a?", default="no", id="a")
            without = in_thread(src.request_confirmation, "b?", id="b")
            frame_of(ws, "confirmation_required")
            frame_of(ws, "confirmation_required")
            d.stop_soon()
            assert with_default.result(TIMEOUT) == "no"
            with pytest.raises(ConfirmationExpired) as expired:
                without.result(TIMEOUT)
            assert expired.value.reason == "shutdown"


# -- EventSource: outages -----------------------------------------------------------------


def test_reconnect_off_raises_when_the_daemon_is_gone(tmp: Path) -> None:
    """With reconnect=False an absent daemon is a SourceError, at start and later."""
    path = tmp / "ev.sock"
    with pytest.raises(SourceError, match="is aaeventd running"):
        EventSource(path, reconnect=False).start()
    with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
        src = EventSource(d.socket_path, name="t", reconnect=False)
        src.start()
    try:
        with pytest.raises(SourceError):
            src.emit("tick")
    finally:
        src.close()


def test_events_buffered_before_the_daemon_starts_are_delivered_in_order(tmp: Path) -> None:
    """Events emitted before the daemon starts are buffered, then delivered in order."""
    with captured("aaeventd.client") as warnings:
        src = EventSource(tmp / "ev.sock", name="t", retry_max=0.2)
        src.start()  # not an error with reconnect
        try:
            assert [src.emit("tick", n=n) for n in range(3)] == [None, None, None]
            assert src.buffered == 3
            assert src.connected is False
            with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
                assert src.flush(TIMEOUT) is True
                ack = src.emit("tick", n=3)
                assert ack is not None
                assert ack.seq == 4
                with ws_client(d.ws_port, "since=0") as ws:
                    assert [frame(ws)["n"] for _ in range(4)] == [0, 1, 2, 3]
        finally:
            src.close(flush_timeout=0)
    assert src.dropped == 0
    assert any("is aaeventd running?" in w for w in warnings)


def test_buffer_overflow_drops_the_oldest_and_reports_it(tmp: Path) -> None:
    """A full buffer drops its oldest event, counts it in dropped and logs it."""
    with captured("aaeventd.client") as warnings:
        src = EventSource(tmp / "ev.sock", name="t", buffer_size=3, retry_max=0.2)
        src.start()
        try:
            for n in range(5):
                assert src.emit("tick", n=n) is None
            assert (src.dropped, src.buffered) == (2, 3)
            with daemon_thread(ThreadedDaemon(make_config(tmp), env={})) as d:
                assert src.flush(TIMEOUT) is True
                with ws_client(d.ws_port, "since=0") as ws:
                    assert [frame(ws)["n"] for _ in range(3)] == [2, 3, 4]
        finally:
            src.close(flush_timeout=0)
    assert any("dropping the oldest" in w for w in warnings)
    assert any("2 events were dropped" in w for w in warnings)


def test_buffer_overflow_can_raise_instead(tmp: Path) -> None:
    """overflow='raise': a full buffer raises BufferFull; close counts the undelivered."""
    with captured("aaeventd.client") as warnings:
        src = EventSource(tmp / "ev.sock", name="t", buffer_size=2, overflow="raise")
        src.start()
        assert src.emit("a") is None
        assert src.emit("b") is None
        with pytest.raises(BufferFull):
            src.emit("c")
        assert (src.dropped, src.buffered) == (0, 2)
        src.close(flush_timeout=0)
    assert src.dropped == 2
    assert any("closing with 2 events not acknowledged" in w for w in warnings)


def test_threads_emitting_through_a_restart_lose_nothing(tmp: Path) -> None:
    """Threads emitting through a daemon restart: each event once, in order per thread."""
    config = make_config(tmp)
    src = EventSource(config.sources.socket_path, name="t", retry_max=0.1)
    progress = threading.Semaphore(0)
    stopped = threading.Event()

    def work(worker: int) -> int:
        queued = 0
        for n in range(40):
            if n == 20:  # the second half once the daemon is gone
                assert stopped.wait(TIMEOUT)
            if src.emit("tick", worker=worker, n=n) is None:
                queued += 1
            progress.release()
        return queued

    pool = ThreadPoolExecutor(max_workers=4)
    try:
        with daemon_thread(ThreadedDaemon(config, env={})):
            src.start()
            results = [pool.submit(work, w) for w in range(4)]
            for _ in range(4 * 20):
                assert progress.acquire(timeout=TIMEOUT)
        stopped.set()
        for _ in range(4 * 10):  # at least these are emitted while it is down
            assert progress.acquire(timeout=TIMEOUT)
        with daemon_thread(ThreadedDaemon(config, env={})) as d:
            queued = [r.result(TIMEOUT) for r in results]
            assert src.flush(TIMEOUT) is True
            with ws_client(d.ws_port, "since=0") as ws:
                got = [frame(ws) for _ in range(160)]
                assert frame_of_barrier(ws) == []
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stopped.set()
        src.close(flush_timeout=0)
    assert sum(queued) >= 40
    assert [e["seq"] for e in got] == list(range(1, 161))
    for worker in range(4):
        assert [e["n"] for e in got if e["worker"] == worker] == list(range(40))
    assert src.dropped == 0


def frame_of_barrier(ws: ClientConnection) -> list[dict[str, Any]]:
    """Frames that arrive before the ``heartbeat_ack`` of a heartbeat sent now."""
    ws.send(json.dumps({"type": "heartbeat"}))
    frames = []
    while (msg := frame(ws))["type"] != "heartbeat_ack":
        frames.append(msg)
    return frames


def test_reconnect_delivers_events_emitted_across_a_daemon_restart(tmp: Path) -> None:
    """Events emitted while a daemon subprocess restarts are delivered after, in order."""
    config = tmp / "aaeventd.yaml"
    config.write_text(
        json.dumps(
            {
                "sources": {"socket_path": str(tmp / "ev.sock")},
                "websocket": {"port": 0},
                # The restart starts a new file; the replay reads the first one too.
                "journal": {"directory": str(tmp / "journal"), "keep_free_bytes": 0},
            }
        )
    )
    src = EventSource(tmp / "ev.sock", name="restart", retry_max=0.2)
    try:
        with daemon_process(tmp, args=["--config", str(config)]) as first:
            src.start()
            acks = [src.emit("tick", n=n) for n in range(2)]
            assert [a.seq for a in acks if a is not None] == [1, 2]
            assert first.stop() == 0
        # The daemon is gone (it exited): these wait in the buffer.
        assert [src.emit("tick", n=n) for n in range(2, 5)] == [None, None, None]
        assert src.connected is False
        with daemon_process(tmp, args=["--config", str(config)]) as second:
            assert src.flush(TIMEOUT) is True
            ack = src.emit("tick", n=5)
            assert ack is not None
            assert ack.seq == 6
            with ws_client(second.port, "since=0") as ws:
                got = [frame(ws) for _ in range(6)]
            assert second.stop() == 0
    finally:
        src.close(flush_timeout=0)
    assert [(e["seq"], e["n"]) for e in got] == [(n + 1, n) for n in range(6)]
    assert src.dropped == 0


# -- AsyncEventSource ---------------------------------------------------------------------


def test_async_emit_ack_and_rejection() -> None:
    """await emit() returns the Ack; a refused event raises EventRejected."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            async with (
                running_daemon(make_config(tmp)) as d,
                await ws_connect(d) as ws,
                AsyncEventSource(d.socket_path, name="async") as src,
            ):
                await recv_json(ws)  # connected
                ack = await src.emit("skill_started", skill_name="s")
                assert ack is not None
                assert (ack.seq, ack.delivered) == (1, 1)
                with pytest.raises(EventRejected) as rejected:
                    await src.emit("skill_started")
                assert (rejected.value.code, rejected.value.line) == ("invalid_event", 3)
                assert (await recv_json(ws))["seq"] == 1

    run(body())


def test_async_request_confirmation_answered_and_expired() -> None:
    """Concurrent ask() tasks get their own answers; an expiry gives the default."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            async with (
                running_daemon(make_config(tmp)) as d,
                await ws_connect(d) as ws,
                AsyncEventSource(d.socket_path, name="async") as src,
            ):
                await recv_json(ws)
                first = asyncio.create_task(src.request_confirmation("1?", id="one"))
                second = asyncio.create_task(src.ask("2?", id="two"))
                expiring = asyncio.create_task(
                    src.request_confirmation("3?", timeout=SHORT, default="no")
                )
                for _ in range(2):
                    await recv_until(ws, lambda m: m.get("type") == "confirmation_required")
                for cid, response in (("two", "no"), ("one", "yes")):
                    msg = {"type": "confirmation_response", "id": cid, "response": response}
                    await ws.send(json.dumps(msg))
                assert await asyncio.wait_for(first, TIMEOUT) == "yes"
                assert await asyncio.wait_for(second, TIMEOUT) == Answer("two", "no", "none")
                assert await asyncio.wait_for(expiring, TIMEOUT) == "no"

    run(body())


def test_async_reconnects_and_delivers_in_order() -> None:
    """AsyncEventSource buffers across a daemon restart and delivers in order."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            config = make_config(tmp)
            src = AsyncEventSource(config.sources.socket_path, name="async", retry_max=0.2)
            try:
                async with running_daemon(config):
                    await src.start()
                    ack = await src.emit("tick", n=0)
                    assert ack is not None
                    assert ack.seq == 1
                assert [await src.emit("tick", n=n) for n in (1, 2)] == [None, None]
                assert src.connected is False
                async with running_daemon(config) as d:
                    assert await src.flush(TIMEOUT) is True
                    ack = await src.emit("tick", n=3)
                    assert ack is not None
                    assert ack.seq == 4
                    async with await ws_connect(d, "since=0") as ws:
                        await recv_json(ws)
                        got = [await recv_json(ws) for _ in range(4)]
            finally:
                await src.close(flush_timeout=0)
            assert [(e["seq"], e["n"]) for e in got] == [(1, 0), (2, 1), (3, 2), (4, 3)]
            assert src.dropped == 0

    run(body())


def test_async_buffer_overflow_is_counted() -> None:
    """The async buffer drops its oldest event past buffer_size and counts it."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            src = AsyncEventSource(tmp / "ev.sock", buffer_size=2)
            await src.start()
            try:
                assert [await src.emit("tick", n=n) for n in range(3)] == [None] * 3
                assert (src.dropped, src.buffered) == (1, 2)
            finally:
                await src.close(flush_timeout=0)
            assert src.dropped == 3

    run(body())
