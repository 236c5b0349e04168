"""The journal's group commit (``fsync: always``, PROTOCOL §4): the fsync runs off the
event loop, a batch reaches clients and sources only once it is on disk, and batches
written meanwhile share the next fsync.

A real in-process daemon with real sockets; ``os.fsync`` is made slow for the journal's
event files only: each call waits on a gate (at most :data:`HOLD` seconds) that the test
opens, so "an fsync is in flight" is a state the test controls, not a race.  The loop's
stall is measured from outside it: a client in its own thread sends a heartbeat the
moment an fsync starts (:class:`HeartbeatProbe`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from tests.support import TIMEOUT, Source, private_daemon, recv_json, run, ws_connect, ws_url

# A probe's heartbeat round trip, fsyncs returned by then, seqs it got before the ack.
Probed = tuple[float, int, list[int]]
# How long a gated fsync waits at most: on a daemon that fsyncs on its event loop this
# is how long the loop (and every client) stalls per batch.
HOLD = 0.5


@dataclass
class SlowFsync:
    """``os.fsync`` for the journal's event files: waits on ``gate`` (at most HOLD s)."""

    real: Callable[[int], None]
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    fail: OSError | None = None
    entered: int = 0
    returned: list[float] = field(default_factory=list)
    on_enter: Callable[[], None] = lambda: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if "/events-" not in target:
            self.real(fd)
            return
        with self.lock:
            self.entered += 1
        self.started.set()
        self.on_enter()
        self.gate.wait(HOLD)
        try:
            if self.fail is not None:
                raise self.fail
            self.real(fd)
        finally:
            with self.lock:
                self.returned.append(time.monotonic())


@pytest.fixture
def slow_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowFsync]:
    slow = SlowFsync(os.fsync)
    monkeypatch.setattr(os, "fsync", slow)
    yield slow
    slow.gate.set()


class HeartbeatProbe(threading.Thread):
    """A client in its own thread: once an fsync has started it sends one heartbeat and
    times the ``heartbeat_ack``: how long the daemon's event loop took, seen from outside
    it (a test coroutine shares the loop and could not see a stall).  The events it got
    before that ack are what a client could see while the fsync was in flight."""

    def __init__(self, url: str, slow: SlowFsync) -> None:
        super().__init__(name="heartbeat-probe", daemon=True)
        self.url = url
        self.slow = slow
        self.connected = threading.Event()
        self.rtt: float | None = None
        self.fsyncs_returned_at_ack: int | None = None
        self.seen: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with sync_connect(self.url, open_timeout=TIMEOUT) as ws:
                assert json.loads(ws.recv(TIMEOUT))["type"] == "connected"
                self.connected.set()
                if not self.slow.started.wait(TIMEOUT):
                    raise TimeoutError("no fsync started")
                sent = time.monotonic()
                ws.send(json.dumps({"type": "heartbeat"}))
                while (msg := json.loads(ws.recv(TIMEOUT)))["type"] != "heartbeat_ack":
                    self.seen.append(msg["seq"])
                self.rtt = time.monotonic() - sent
                self.fsyncs_returned_at_ack = len(self.slow.returned)
        except BaseException as exc:  # reported by result()
            self.error = exc
        finally:
            self.connected.set()

    async def start_connected(self) -> None:
        self.start()
        assert await asyncio.to_thread(self.connected.wait, TIMEOUT), "probe not connected"

    async def result(self) -> Probed:
        """The heartbeat's round trip, how many fsyncs had returned when its ack came, and
        the seqs this client got before that ack."""
        await asyncio.to_thread(self.join, TIMEOUT)
        if self.error is not None:
            raise self.error
        assert self.rtt is not None
        assert self.fsyncs_returned_at_ack is not None
        return self.rtt, self.fsyncs_returned_at_ack, self.seen


def assert_loop_free(probed: Probed, what: str) -> None:
    """The heartbeat came back while the fsync was still in flight, well within HOLD, and
    nothing written since that fsync started had reached the client."""
    rtt, returned, seen = probed
    message = (
        f"heartbeat answered after {rtt:.3f} s while {what} was in flight (the fsync was "
        f"held up to {HOLD} s; {returned} fsyncs had returned by then)"
    )
    assert rtt < HOLD / 2, message
    assert returned == 0, message
    assert not seen, f"a client got seqs {seen} while {what} was in flight"


async def _entered(slow: SlowFsync, count: int) -> None:
    """Wait until ``count`` gated fsyncs have started (signalled from their thread)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    slow.on_enter = lambda: loop.call_soon_threadsafe(changed.set)
    async with asyncio.timeout(TIMEOUT):
        while slow.entered < count:
            changed.clear()
            await changed.wait()


def _ticks(first: int, count: int) -> bytes:
    return b"".join(b'{"type":"tick","n":%d}\n' % n for n in range(first, first + count))


async def _events(ws: ClientConnection, count: int) -> list[tuple[int, str, float]]:
    """The next ``count`` event frames as (seq, type, arrival), control frames skipped."""
    got: list[tuple[int, str, float]] = []
    while len(got) < count:
        msg = await recv_json(ws)
        if "seq" in msg and msg["type"] not in ("connected", "heartbeat_ack"):
            got.append((msg["seq"], msg["type"], time.monotonic()))
    return got


def test_fsync_off_the_loop_holds_fan_out_and_acks_until_it_returns(
    slow_fsync: SlowFsync,
) -> None:
    """With fsync: always the loop answers a heartbeat while an fsync is in flight; the
    batch's frames and acks come only after it returned; batches written meanwhile share
    the next fsync; a client that connected during the hold gets the held events live,
    in order, exactly once; replies to a source stay in line order behind held acks."""

    async def body() -> dict[str, Any]:
        async with private_daemon(journal={"fsync": "always"}) as d:
            probe = HeartbeatProbe(ws_url(d), slow_fsync)
            await probe.start_connected()
            async with (
                await ws_connect(d) as early,
                await Source.connect(d.socket_path, hello={"type": "hello", "acks": True}) as src,
            ):
                assert (await recv_json(early))["type"] == "connected"
                await src.send({"type": "tick", "n": 1})
                await _entered(slow_fsync, 1)  # seq 1 written, its fsync gated
                probed = await probe.result()
                # Meanwhile: more events, a bad line between them, a client resuming.
                await src.send_raw(b'{"type":"tick","n":2}\nnot json\n{"type":"tick","n":3}\n')
                async with await ws_connect(d, "since=0") as late:
                    connected = await recv_json(late)
                    slow_fsync.gate.set()
                    replies = [await src.recv() for _ in range(4)]
                    early_events = await _events(early, 3)
                    late_events = await _events(late, 3)
                    # Nothing more: a heartbeat comes back next, no duplicate before it.
                    await late.send(json.dumps({"type": "heartbeat"}))
                    after = await recv_json(late)
            return {
                "probed": probed,
                "connected": connected,
                "replies": replies,
                "early": early_events,
                "late": late_events,
                "after": after,
                "fsyncs": list(slow_fsync.returned),
            }

    r = run(body())
    assert_loop_free(r["probed"], "the first batch's fsync")
    replies = r["replies"]
    assert [(m["type"], m.get("seq"), m.get("line")) for m in replies] == [
        ("ack", 1, None),
        ("ack", 2, None),
        ("error", None, 4),  # hello is line 1
        ("ack", 3, None),
    ], replies
    assert not any("journaled" in m for m in replies), replies
    # The client resuming during the hold sees nothing beyond the disk...
    assert r["connected"]["seq"] == 0, f"connected.seq {r['connected']['seq']} during the hold"
    # ...and both clients get every event once, in order, after its fsync returned.
    for name in ("early", "late"):
        seqs = [seq for seq, _, _ in r[name]]
        assert seqs == [1, 2, 3], f"{name} client got seqs {seqs}"
    assert r["after"]["type"] == "heartbeat_ack", f"extra frame {r['after']} after seq 3"
    # Group commit: seqs 2 and 3 were written during the first fsync and share one more.
    assert len(r["fsyncs"]) == 2, f"{len(r['fsyncs'])} fsyncs for 2 batch groups"


def test_confirmation_answer_and_expiry_wait_for_their_fsync(slow_fsync: SlowFsync) -> None:
    """Daemon-made events (a confirmation answered by a client, one that expired because
    its source left) go through the group commit too: the loop stays free while they
    wait for their fsync; clients get them in seq order once it returned; the answering
    client's heartbeat sent right after its answer still comes back after the
    ``confirmation_answered`` (a barrier, as ``aaeventd confirm`` uses it), and the
    source's ``confirmation_response`` after the broadcast went out."""
    hello = {"type": "hello", "acks": True}

    async def body() -> dict[str, Any]:
        async with private_daemon(journal={"fsync": "always"}) as d:
            probe = HeartbeatProbe(ws_url(d), slow_fsync)
            async with (
                await ws_connect(d) as ws,
                await Source.connect(d.socket_path, hello=hello) as src,
                await Source.connect(d.socket_path, hello=hello) as leaving,
            ):
                assert (await recv_json(ws))["type"] == "connected"
                slow_fsync.gate.set()
                for cid, sender in (("ask", src), ("orphan", leaving)):
                    await sender.send({"type": "confirmation_required", "id": cid, "prompt": "?"})
                    await sender.recv_type("ack")
                opened = await _events(ws, 2)
                slow_fsync.gate.clear()
                slow_fsync.started.clear()
                slow_fsync.returned.clear()
                await probe.start_connected()
                entered = slow_fsync.entered
                answer = {"type": "confirmation_response", "id": "ask", "response": "yes"}
                await ws.send(json.dumps(answer))
                await ws.send(json.dumps({"type": "heartbeat"}))
                await leaving.close()
                await _entered(slow_fsync, entered + 1)
                probed = await probe.result()
                slow_fsync.gate.set()
                response = await src.recv_type("confirmation_response")
                frames: list[tuple[str, int | None, float]] = []
                while len(frames) < 3:
                    msg = await recv_json(ws)
                    frames.append((msg["type"], msg.get("seq"), time.monotonic()))
            return {
                "opened": [seq for seq, _, _ in opened],
                "probed": probed,
                "frames": frames,
                "response": response,
            }

    r = run(body())
    assert_loop_free(r["probed"], "the answer's fsync")
    assert r["opened"] == [1, 2], r["opened"]
    kinds = [kind for kind, _, _ in r["frames"]]
    assert sorted(kinds) == ["confirmation_answered", "confirmation_expired", "heartbeat_ack"]
    assert kinds.index("confirmation_answered") < kinds.index("heartbeat_ack"), (
        f"the answering client got {kinds}: its heartbeat_ack overtook its held answer"
    )
    seqs = [seq for kind, seq, _ in r["frames"] if kind != "heartbeat_ack"]
    assert seqs == [3, 4], f"seqs {seqs}"
    assert r["response"]["response"] == "yes", r["response"]


def test_failing_fsync_releases_the_batch_and_degrades_the_journal_once(
    slow_fsync: SlowFsync, caplog: pytest.LogCaptureFixture
) -> None:
    """An fsync that fails: the batch still reaches clients and sources (availability
    first, acks without journaled:false: the lines are in the file), the journal is
    degraded with one ERROR for the episode however many batches fail, and one WARNING
    when an fsync works again."""
    batches = 20

    async def body() -> tuple[list[dict[str, Any]], list[int], bool, str | None, bool, Probed]:
        async with private_daemon(journal={"fsync": "always"}) as d:
            assert d.journal is not None
            async with (
                await ws_connect(d) as ws,
                await Source.connect(d.socket_path, hello={"type": "hello", "acks": True}) as src,
            ):
                assert (await recv_json(ws))["type"] == "connected"
                probe = HeartbeatProbe(ws_url(d), slow_fsync)
                await probe.start_connected()
                slow_fsync.fail = OSError(5, "Input/output error")
                acks = []
                await src.send({"type": "tick", "n": 0})
                await _entered(slow_fsync, 1)
                probed = await probe.result()
                slow_fsync.gate.set()
                acks.append(await src.recv_type("ack"))
                for n in range(1, batches):  # one batch each: each waits for its ack
                    await src.send({"type": "tick", "n": n})
                    acks.append(await src.recv_type("ack"))
                seqs = [seq for seq, _, _ in await _events(ws, batches)]
                degraded, error = d.journal.health.ok, d.journal.health.error
                slow_fsync.fail = None
                await src.send({"type": "tick", "n": batches})
                await src.recv_type("ack")
                return acks, seqs, degraded, error, d.journal.health.ok, probed

    with caplog.at_level(logging.WARNING, logger="aaeventd.journal"):
        acks, seqs, ok_while_failing, error, ok_after, probed = run(body())
    assert_loop_free(probed, "a failing fsync")
    assert seqs == list(range(1, batches + 1)), seqs
    assert not any("journaled" in a for a in acks), acks[:3]
    assert not ok_while_failing, "the journal was not degraded by failing fsyncs"
    assert error == "fsync: Input/output error", error
    assert ok_after, "the journal stayed degraded after an fsync worked again"
    records = [r for r in caplog.records if r.name == "aaeventd.journal"]
    errors = [r.getMessage() for r in records if r.levelno == logging.ERROR]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(errors) == 1, f"{len(errors)} ERROR lines for {batches} failed fsyncs: {errors[:3]}"
    assert len(warnings) == 1, f"{len(warnings)} WARNING lines: {warnings[:3]}"


def test_stop_syncs_and_releases_held_batches_before_closing_clients(
    slow_fsync: SlowFsync,
) -> None:
    """A stop while a batch waits for its fsync: the fsync completes, the client gets the
    event before its 1001 close, the source its ack, and the journal holds it."""

    async def body() -> tuple[list[int], int | None, dict[str, Any], float, list[int], Probed]:
        async with private_daemon(journal={"fsync": "always"}) as d:
            assert d.journal is not None
            journal = d.journal
            ws = await ws_connect(d)
            src = await Source.connect(d.socket_path, hello={"type": "hello", "acks": True})
            assert (await recv_json(ws))["type"] == "connected"
            probe = HeartbeatProbe(ws_url(d), slow_fsync)
            await probe.start_connected()
            await src.send({"type": "tick"})
            await _entered(slow_fsync, 1)
            probed = await probe.result()
            asyncio.get_running_loop().call_later(0.1, slow_fsync.gate.set)
            started = time.monotonic()
            d.request_stop()
            ack = await src.recv_type("ack")
            got = []
            close_code = None
            try:
                while True:
                    got.append((await recv_json(ws))["seq"])
            except Exception:
                close_code = ws.close_code
            await d.stopped.wait()
            took = time.monotonic() - started
            await src.close()
            await ws.close()
            lines = [
                json.loads(line)["seq"]
                for path in journal.files()
                for line in path.read_bytes().splitlines()
            ]
            return got, close_code, ack, took, lines, probed

    got, close_code, ack, took, journaled, probed = run(body())
    assert_loop_free(probed, "the batch's fsync")
    assert got == [1], f"frames before the close: {got}"
    assert close_code == 1001, f"close code {close_code}"
    assert ack["seq"] == 1, ack
    assert journaled == [1], journaled
    assert took < 5, f"stop took {took:.2f} s"


def test_held_batches_are_bounded_and_sources_wait_for_the_disk(slow_fsync: SlowFsync) -> None:
    """While the fsync is slow, the held batches stay within events.replay_buffer (plus
    the read that crossed it): sources are not read until the disk catches up (the
    backpressure a blocking fsync gave), and every event then arrives, in order, once."""
    limit, chunk, chunks = 50, 100, 20

    async def body() -> tuple[int, list[int]]:
        async with private_daemon(
            journal={"fsync": "always"}, events={"replay_buffer": limit}
        ) as d:
            async with (
                await ws_connect(d) as ws,
                await Source.connect(d.socket_path) as src,
            ):
                assert (await recv_json(ws))["type"] == "connected"

                await src.send_raw(_ticks(0, chunk))
                await _entered(slow_fsync, 1)  # the first chunk is held
                await src.send_raw(_ticks(chunk, chunk * (chunks - 1)))
                # A round trip through the loop: it has read whatever it was going to.
                await ws.send(json.dumps({"type": "heartbeat"}))
                seqs = []
                while (msg := await recv_json(ws))["type"] != "heartbeat_ack":
                    seqs.append(msg["seq"])
                taken = d.hub.last_seq  # all held: the first fsync has not returned
                slow_fsync.gate.set()
                seqs += [seq for seq, _, _ in await _events(ws, chunk * chunks - len(seqs))]
            return taken, seqs

    taken, seqs = run(body())
    assert taken <= limit + chunk, (
        f"{taken} events taken in while the first fsync was in flight "
        f"(events.replay_buffer {limit}, one read {chunk})"
    )
    assert seqs == list(range(1, chunk * chunks + 1)), f"{len(seqs)} events, not in order"
