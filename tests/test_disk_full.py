"""The daemon on a real, small file system that fills up (PROTOCOL §4, §4.1).

The journal lives on a 2 MiB tmpfs mounted for each test (CI runs as root; off CI a
developer without root skips these, under ``AAEVENTD_CI=1`` that is a failure).  A
filler file takes the space, then is removed.  Asserted: the daemon keeps serving,
acks say ``"journaled": false`` exactly for the events not written, ``/healthz`` and
``/metrics`` say ``degraded``, a few ERROR lines rather than one per event, whole lines
only in the journal, replays that announce every unjournaled seq, no seq reused in an
epoch across a restart while the disk is still full, a read-only journal directory,
and ``keep_free_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support import (
    TIMEOUT,
    Source,
    daemon_process,
    http_get,
    make_config,
    require,
    run,
    running_daemon,
    samples,
    write_config,
)

IS_ROOT = os.geteuid() == 0
FS_BYTES = 2 << 20


@pytest.fixture
def small_fs(tmp: Path) -> Iterator[Path]:
    """A fresh 2 MiB tmpfs, unmounted after the test."""
    require(IS_ROOT, "mounting a small tmpfs needs root (CI runs the suite as root)")
    mount = tmp / "fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(mount)],
        check=True,
        timeout=TIMEOUT,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=TIMEOUT)


def fill(fs: Path) -> Path:
    """Take every free byte of ``fs`` with one file; its path (remove it to free the space)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 65536
    try:
        with pytest.raises(OSError, match="No space left") as full:  # noqa: PT012
            for _ in range(2 * FS_BYTES // len(chunk)):
                os.write(fd, chunk)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC, full.value
    return filler


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` made read-only under the running daemon, as ``chmod 0500`` would for a
    user (root ignores modes): a read-only bind mount over it.  Files the daemon already
    has open stay writable, new ones cannot be created."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


async def send_each(src: Source, n: int, kind: str = "tick") -> list[dict[str, Any]]:
    """Send ``n`` events one at a time (one journal write each); their acks."""
    acks = []
    for i in range(n):
        await src.send({"type": kind, "i": i})
        acks.append(await src.recv_type("ack"))
    return acks


def not_journaled(acks: list[dict[str, Any]]) -> list[int]:
    for ack in acks:
        assert ack.get("journaled", False) is False, f"journaled must be absent or false: {ack}"
    return [a["seq"] for a in acks if "journaled" in a]


async def recv_frame(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
    try:
        obj = json.loads(raw)
    except ValueError:
        raise AssertionError(f"a replay sent a frame that is not JSON: {raw!r:.200}") from None
    assert isinstance(obj, dict), raw
    return obj


async def replay(url: str, last: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Connect with since=0 and read until seq ``last`` is covered: event seqs, gaps."""
    seqs: list[int] = []
    gaps: list[dict[str, Any]] = []
    async with connect(f"{url}?since=0", open_timeout=TIMEOUT) as ws:
        connected = await recv_frame(ws)
        assert connected["type"] == "connected"
        covered = 0
        while covered < last:
            msg = await recv_frame(ws)
            if msg["type"] == "replay_gap":
                gaps.append(msg)
                covered = msg["to"]
            else:
                seqs.append(msg["seq"])
                covered = msg["seq"]
    return seqs, gaps


def check_coverage(
    seqs: list[int], gaps: list[dict[str, Any]], last: int, unjournaled: list[int]
) -> None:
    """Every seq 1..last replayed or inside a gap, once; not_journaled gaps name exactly
    the events whose acks said journaled: false."""
    announced: list[int] = []
    for gap in gaps:
        assert gap["reason"] == "not_journaled", gaps
        announced.extend(range(gap["from"], gap["to"] + 1))
    together = sorted(seqs + announced)
    assert together == list(range(1, last + 1)), (
        f"replayed {len(seqs)} + announced {len(announced)} seqs != 1..{last}: "
        f"missing {sorted(set(range(1, last + 1)) - set(together))[:10]}"
    )
    assert seqs == sorted(seqs), "replay out of order"
    assert announced == unjournaled, (
        f"gaps {[(g['from'], g['to']) for g in gaps]} vs {len(unjournaled)} unjournaled acks "
        f"{unjournaled[:1]}..{unjournaled[-1:]}"
    )


def journal_lines_parse(directory: Path) -> int:
    """Every journal line is whole JSON; how many there are."""
    count = 0
    for path in sorted(directory.glob("events-*.jsonl")):
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n"), f"torn line in {path.name}: {line[-60:]!r}"
            json.loads(line)
            count += 1
    return count


def error_lines(log: list[str]) -> list[str]:
    return [line for line in log if len(line.split()) > 1 and line.split()[1] == "ERROR"]


# -- disk full while events flow -----------------------------------------------------


@pytest.mark.e2e
def test_disk_full_while_events_flow(tmp: Path, small_fs: Path) -> None:
    """1000 events on a full disk: served live, acked journaled:false, /healthz degraded, a
    couple of ERROR lines; space back: ok again by itself, replay announces the hole."""
    journal_dir = small_fs / "journal"
    config = write_config(
        tmp,
        journal={"directory": str(journal_dir), "keep_free_bytes": 0},
        events={"replay_buffer": 10},
    )
    started = time.monotonic()

    async def body(port: int, sock: str) -> None:
        url = f"ws://127.0.0.1:{port}/"
        async with (
            connect(url, open_timeout=TIMEOUT) as live,
            await Source.connect(sock, hello={"type": "hello", "acks": True}) as src,
        ):
            assert (await recv_frame(live))["type"] == "connected"
            before = await send_each(src, 200)
            assert not_journaled(before) == []
            filler = fill(small_fs)
            during = await send_each(src, 1000)
            missing = not_journaled(during)
            # The journal file's last page may still take a few lines; then nothing.
            assert len(missing) >= 950, f"only {len(missing)} of 1000 acks said journaled:false"
            assert missing == list(range(missing[0], 1201)), "journaled:false not a clean tail"
            health = json.loads((await http_get(port, "/healthz"))[1])
            assert health["status"] == "degraded", health
            journal = health["journal"]
            assert journal["ok"] is False
            assert journal["error"] == "No space left on device"
            assert journal["since"].endswith("Z")
            assert journal["unjournaled"] == len(missing), journal
            _, metrics = await http_get(port, "/metrics")
            figures = samples(metrics)
            assert figures[("aaeventd_journal_ok", ())] == 0
            assert figures[("aaeventd_journal_unjournaled_events_total", ())] == len(missing)
            filler.unlink()
            after = await send_each(src, 200)
            assert not_journaled(after) == [], "acks after the space came back"
            health = json.loads((await http_get(port, "/healthz"))[1])
            assert health["status"] == "ok"
            assert health["journal"] == {
                "ok": True,
                "error": None,
                "since": None,
                "unjournaled": len(missing),
                "directory": str(journal_dir),
            }
            live_seqs = [(await recv_frame(live))["seq"] for _ in range(1400)]
            assert live_seqs == list(range(1, 1401)), "live clients must see every seq"
        seqs, gaps = await replay(url, 1400)
        check_coverage(seqs, gaps, 1400, missing)
        assert journal_lines_parse(journal_dir) == 1400 - len(missing)

    with daemon_process(tmp, args=["--config", config]) as d:
        run(body(d.port, d.sock))
        assert d.stop() == 0
    minutes = (time.monotonic() - started) / 60
    errors = error_lines(d.lines)
    assert len(errors) <= 2 + minutes, (
        f"{len(errors)} ERROR lines for ~1000 failed writes in {minutes:.1f} min:\n"
        + "".join(errors[:5])
    )
    assert "No space left on device" in errors[0]
    assert sum("journal writable again" in line for line in d.lines) == 1


# -- restart while the disk is still full --------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_restart_while_the_disk_is_full_reuses_no_seq(
    tmp: Path, small_fs: Path, sig: signal.Signals
) -> None:
    """Stopped (or killed) while the journal fails, restarted on the still full disk: a new
    epoch, and the next seq is past every seq acked before."""
    journal_dir = small_fs / "journal"
    config = write_config(tmp, journal={"directory": str(journal_dir), "keep_free_bytes": 0})
    acked: list[int] = []

    async def first_run(sock: str) -> list[int]:
        async with await Source.connect(sock, hello={"type": "hello", "acks": True}) as src:
            acks = await send_each(src, 50)
            fill(small_fs)
            acks += await send_each(src, 300)
        acked.extend(a["seq"] for a in acks)
        return not_journaled(acks)

    async def second_run(port: int, sock: str, old_epoch: str) -> None:
        async with connect(
            f"ws://127.0.0.1:{port}/?since={acked[-1]}&epoch={old_epoch}", open_timeout=TIMEOUT
        ) as ws:
            assert (await recv_frame(ws))["type"] == "connected"
            gap = await recv_frame(ws)
            assert (gap["type"], gap["reason"]) == ("replay_gap", "epoch_changed"), gap
        async with await Source.connect(sock, hello={"type": "hello", "acks": True}) as src:
            [ack] = await send_each(src, 1)
        assert ack["seq"] > acked[-1], f"seq {ack['seq']} handed out again (acked {acked[-1]})"
        assert ack.get("journaled") is False  # the disk is still full

    with daemon_process(tmp, args=["--config", config]) as first:
        missing = run(first_run(first.sock))
        assert len(missing) >= 250, f"only {len(missing)} events unjournaled"
        first.stop(sig)
    with daemon_process(tmp, args=["--config", config], before_ready="new epoch") as second:
        assert second.epoch != first.epoch
        assert second.seq >= acked[-1], f"resumed after {second.seq}, {acked[-1]} was acked"
        run(second_run(second.port, second.sock, first.epoch))
        assert second.stop() == 0


# -- the journal directory made read-only --------------------------------------------


def test_read_only_journal_directory_is_announced_in_replays(small_fs: Path, tmp: Path) -> None:
    """New journal files cannot be created: acks say journaled:false, the replay announces
    exactly those seqs as not_journaled, and writing resumes once it is writable."""
    journal_dir = small_fs / "journal"
    cfg = make_config(
        tmp,
        journal={"directory": str(journal_dir), "max_file_bytes": 4096, "keep_free_bytes": 0},
        events={"replay_buffer": 10},
    )

    async def body() -> None:
        async with running_daemon(cfg) as d:
            hello = {"type": "hello", "acks": True}
            async with await Source.connect(d.socket_path, hello=hello) as src:
                acks = await send_each(src, 100)
                with read_only(journal_dir):
                    acks += await send_each(src, 300)
                    health = json.loads((await http_get(d.ws_port, "/healthz"))[1])
                    assert health["status"] == "degraded", health
                    assert health["journal"]["error"] == "Read-only file system"
                    # What housekeeping sends as STATUS= (§5) says so too.
                    assert "journal failing: Read-only file system" in d._status_line()
                acks += await send_each(src, 100)
            missing = not_journaled(acks)
            assert len(missing) >= 200, f"only {len(missing)} of 300 events unjournaled"
            assert acks[-1]["seq"] == 500
            seqs, gaps = await replay(f"ws://127.0.0.1:{d.ws_port}/", 500)
            check_coverage(seqs, gaps, 500, missing)
            assert d.journal is not None
            assert d.journal.ok

    run(body())


# -- keep_free_bytes -----------------------------------------------------------------


def test_keep_free_bytes_removes_the_oldest_journal_files(small_fs: Path, tmp: Path) -> None:
    """With less free space than keep_free_bytes, the oldest files go, the current stays;
    the replay then starts with an evicted gap."""
    journal_dir = small_fs / "journal"
    keep_free = FS_BYTES - 300_000  # 640 events of ~1 KB leave less free than this
    cfg = make_config(
        tmp,
        journal={
            "directory": str(journal_dir),
            "max_file_bytes": 65536,
            "max_files": 100,
            "keep_free_bytes": 0,
        },
        events={"replay_buffer": 10},
    )

    async def body() -> None:
        async with running_daemon(cfg) as d:
            hello = {"type": "hello", "acks": True}
            async with await Source.connect(d.socket_path, hello=hello) as src:
                for _ in range(10):
                    await src.send_raw(
                        b"".join(
                            json.dumps({"type": "t", "pad": "x" * 900}).encode() + b"\n"
                            for _ in range(64)
                        )
                    )
                    for _ in range(64):
                        await src.recv_type("ack")
            assert d.journal is not None
            before = [p.name for p in d.journal.files()]
            assert len(before) >= 9, before
            st = os.statvfs(journal_dir)
            assert st.f_bavail * st.f_frsize < keep_free
            new = cfg.model_copy(
                update={"journal": cfg.journal.model_copy(update={"keep_free_bytes": keep_free})}
            )
            d.apply_config(new)
            d.journal.tick()
            st = os.statvfs(journal_dir)
            free = st.f_bavail * st.f_frsize
            after = [p.name for p in d.journal.files()]
            assert free >= keep_free or after == before[-1:], (
                f"{free} bytes free < keep_free_bytes {keep_free} with {len(after)} files left"
            )
            assert after == before[len(before) - len(after) :], (before, after)
            assert len(after) < len(before)
            seqs, gaps = await replay(f"ws://127.0.0.1:{d.ws_port}/", 640)
            first_kept = int(after[0][7:19])
            assert gaps == [
                {"type": "replay_gap", "reason": "evicted", "from": 1, "to": first_kept - 1}
            ]
            assert seqs == list(range(first_kept, 641))

    run(body())
