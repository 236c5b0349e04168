"""Replay on reconnect (PROTOCOL §2.3): from the journal, from memory, during live traffic."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from tests.support import (
    Source,
    make_config,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
    ws_connect,
)


async def send_many(source: Source, n: int, pad: int = 0, kind: str = "tick") -> None:
    """Send ``n`` events in one write, then wait for the ack of the last one."""
    body = b"".join(
        json.dumps({"type": kind, "i": i, "pad": "x" * pad}).encode() + b"\n" for i in range(n)
    )
    await source.send_raw(body)
    for _ in range(n):
        await source.recv_type("ack")


async def collect_seqs(ws: Any, until_seq: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Every event seq up to ``until_seq``, and the control frames seen on the way."""
    seqs: list[int] = []
    control: list[dict[str, Any]] = []
    while not seqs or seqs[-1] < until_seq:
        msg = await recv_json(ws)
        if "seq" in msg and msg["type"] != "connected":
            seqs.append(msg["seq"])
        else:
            control.append(msg)
    return seqs, control


def test_large_journal_replay_while_live_events_flow() -> None:
    """since=0 replays thousands of journaled events, then live ones: no gap, no dup."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp, events={"replay_buffer": 100})
            async with running_daemon(cfg) as d:
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d.socket_path, hello=hello) as src:
                    await send_many(src, 6000, pad=100)
                    ws = await ws_connect(d, "since=0")
                    connected = await recv_json(ws)
                    assert connected["type"] == "connected"
                    assert connected["seq"] == 6000
                    # Live events race with the replay that is still being read.
                    live = asyncio.create_task(send_many(src, 3000))
                    seqs, control = await collect_seqs(ws, 9000)
                    await live
                    await ws.close()
        assert control == []
        assert seqs == list(range(1, 9001))

    run(body())


def test_replay_gap_names_exactly_what_the_journal_lost() -> None:
    """Rotated-away events are announced by one replay_gap with the exact range."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(
                tmp,
                events={"replay_buffer": 10},
                journal={"max_file_bytes": 4096, "max_files": 2},
            )
            async with running_daemon(cfg) as d:
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d.socket_path, hello=hello) as src:
                    for _ in range(30):
                        await send_many(src, 10, pad=50)
                assert d.journal is not None
                first_kept = min(
                    json.loads(f.read_bytes().splitlines()[0])["seq"] for f in d.journal.files()
                )
                assert first_kept > 3
                ws = await ws_connect(d, "since=2")
                assert (await recv_json(ws))["type"] == "connected"
                gap = await recv_json(ws)
                assert gap == {
                    "type": "replay_gap",
                    "reason": "evicted",
                    "from": 3,
                    "to": first_kept - 1,
                }
                seqs, control = await collect_seqs(ws, 300)
                await ws.close()
        assert control == []
        assert seqs == list(range(first_kept, 301))

    run(body())


def test_filtered_replay_from_journal_only_sends_matching_types() -> None:
    """A filtered client replays only the matching events, journal and ring alike."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp, events={"replay_buffer": 5})
            async with running_daemon(cfg) as d:
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d.socket_path, hello=hello) as src:
                    for _ in range(10):
                        await send_many(src, 1, kind="keep_me")
                        await send_many(src, 1, kind="drop_me")
                    ws = await ws_connect(d, "since=0&types=keep_*")
                    assert (await recv_json(ws))["type"] == "connected"
                    got = [await recv_json(ws) for _ in range(10)]
                    await ws.send(json.dumps({"type": "heartbeat"}))
                    assert (await recv_json(ws))["type"] == "heartbeat_ack"
                    await ws.close()
        assert [m["type"] for m in got] == ["keep_me"] * 10
        assert [m["seq"] for m in got] == list(range(1, 20, 2))

    run(body())


def test_replay_after_restart_comes_from_the_journal() -> None:
    """After a restart the ring is empty: since=N is served from the journal."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp)
            async with running_daemon(cfg) as d:
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d.socket_path, hello=hello) as src:
                    await send_many(src, 20)
                epoch = d.hub.epoch
            async with running_daemon(cfg) as d2:
                assert d2.hub.epoch == epoch
                ws = await ws_connect(d2, f"since=5&epoch={epoch}")
                connected = await recv_json(ws)
                assert connected["seq"] == 20
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d2.socket_path, hello=hello) as src:
                    await send_many(src, 1)
                seqs, control = await collect_seqs(ws, 21)
                await ws.close()
        assert control == []
        assert seqs == list(range(6, 22))

    run(body())


def test_replay_skips_a_torn_journal_line_and_announces_its_seqs() -> None:
    """A torn line glued to the next one in the journal is never sent: every replayed frame
    is JSON, the lost seqs come as a not_journaled gap, the skipped line is counted."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp, events={"replay_buffer": 5})
            async with running_daemon(cfg) as d:
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d.socket_path, hello=hello) as src:
                    await send_many(src, 20)
                assert d.journal is not None
                [path] = d.journal.files()
            lines = path.read_bytes().splitlines(keepends=True)
            # Seq 10's line loses its end and its newline: glued to seq 11's (a short
            # write that was not cut back, as the old writer left it).
            lines[9] = lines[9][:25]
            path.write_bytes(b"".join(lines))
            async with running_daemon(cfg) as d2:
                ws = await ws_connect(d2, "since=0")
                raw_frames = [await asyncio.wait_for(ws.recv(), 10) for _ in range(20)]
                await ws.close()
                assert d2.journal is not None
                skipped = d2.journal.health.skipped_lines
        frames = []
        for raw in raw_frames:
            try:
                frames.append(json.loads(raw))
            except ValueError:
                raise AssertionError(f"the replay sent a non-JSON frame: {raw!r:.120}") from None
        assert frames[0]["type"] == "connected"
        assert [f.get("seq") for f in frames[1:10]] == list(range(1, 10))
        assert frames[10] == {"type": "replay_gap", "reason": "not_journaled", "from": 10, "to": 11}
        assert [f["seq"] for f in frames[11:]] == list(range(12, 21))
        assert skipped == 1, f"{skipped} unreadable lines counted, 1 expected"

    run(body())


def test_journal_reader_rests_as_long_as_it_reads(monkeypatch: Any) -> None:
    """A replay from the journal leaves the CPU to live traffic: after each chunk the
    reader rests (at least) as long as the chunk took, READER_DUTY = 0.5."""
    from aaeventd.daemon import replay

    assert replay.READER_DUTY == 0.5
    spans: list[tuple[float, float]] = []
    real_chunk = replay.journal_chunk

    def timed_chunk(*args: Any, **kwargs: Any) -> replay.Chunk:
        began = time.monotonic()
        try:
            return real_chunk(*args, **kwargs)
        finally:
            spans.append((began, time.monotonic()))

    monkeypatch.setattr(replay, "journal_chunk", timed_chunk)

    async def body() -> None:
        with short_tmpdir() as tmp:
            cfg = make_config(tmp, events={"replay_buffer": 100})
            async with running_daemon(cfg) as d:
                async with await Source.connect(
                    d.socket_path, hello={"type": "hello", "acks": True}
                ) as src:
                    await send_many(src, 4000, pad=200)
                ws = await ws_connect(d, "since=0")
                assert (await recv_json(ws))["type"] == "connected"
                seqs, _ = await collect_seqs(ws, 4000)
                assert seqs[0] == 4000 - len(seqs) + 1
                await ws.close()

    run(body())
    # The last chunk ends the replay: no rest after it.
    rests = [(nxt[0] - cur[1], cur[1] - cur[0]) for cur, nxt in itertools.pairwise(spans)]
    assert len(rests) >= 10, f"{len(spans)} chunks: the replay did not come from the journal"
    short = [(round(r * 1e3, 3), round(w * 1e3, 3)) for r, w in rests if r < w]
    assert len(short) <= len(rests) // 10, f"rests shorter than the work (ms): {short[:10]}"
