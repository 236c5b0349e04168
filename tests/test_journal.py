"""The journal on a real filesystem: append, resume, torn tail, rotation, retention."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from aaeventd.daemon.journal import EPOCH_FILE, Journal, JournalInUse, fsync_fds
from tests.support import Source, private_daemon, run


def lines(first: int, last: int, pad: int = 0) -> bytes:
    return b"".join(
        json.dumps({"type": "x", "seq": s, "pad": "p" * pad}).encode() + b"\n"
        for s in range(first, last + 1)
    )


@dataclass(frozen=True)
class Row:
    """A journal line as the daemon hands it over: its seq and JSON text."""

    seq: int
    payload: bytes


def rows(data: bytes) -> list[Row]:
    """``data`` (whole lines) as the rows :meth:`Journal.append` takes."""
    return [Row(json.loads(line)["seq"], line) for line in data.splitlines()]


def journal(directory: Path, **kw: object) -> Journal:
    opts: dict[str, object] = {"max_file_bytes": 1 << 20, "max_files": 8, "fsync": "never"}
    opts.update(kw)
    return Journal(directory, **opts)  # type: ignore[arg-type]


def test_new_journal_has_epoch_and_starts_at_zero(tmp_path: Path) -> None:
    """An empty directory gets a fresh epoch file (0600) and seq 0."""
    state = journal(tmp_path / "j").open()
    assert state.last_seq == 0
    assert len(state.epoch) == 16
    epoch_file = tmp_path / "j" / EPOCH_FILE
    assert epoch_file.read_text().strip() == state.epoch
    assert stat.S_IMODE(epoch_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "j").stat().st_mode) == 0o700


def test_reopen_resumes_seq_and_keeps_epoch(tmp_path: Path) -> None:
    """After appending, a new Journal on the same dir resumes the last seq and epoch."""
    j = journal(tmp_path)
    first = j.open()
    j.append(rows(lines(1, 5)))
    j.close()
    again = journal(tmp_path).open()
    assert (again.epoch, again.last_seq) == (first.epoch, 5)


def test_torn_last_line_is_cut_with_warning(tmp_path: Path) -> None:
    """A partial last line (crash mid-write) is truncated and reported."""
    j = journal(tmp_path)
    j.open()
    j.append(rows(lines(1, 3)))
    j.close()
    [path] = j.files()
    with path.open("ab") as fh:
        fh.write(b'{"type":"x","seq":4,"pa')
    state = journal(tmp_path).open()
    assert state.last_seq == 3
    assert any("torn" in w for w in state.warnings)
    assert path.read_bytes() == lines(1, 3)


def test_only_a_torn_line_means_empty_file(tmp_path: Path) -> None:
    """A file holding only a torn line resumes from the previous file."""
    j = journal(tmp_path, max_file_bytes=200)
    j.open()
    j.append(rows(lines(1, 2)))
    j.close()
    (tmp_path / "events-000000000003.jsonl").write_bytes(b'{"type":"x","se')
    state = journal(tmp_path).open()
    assert state.last_seq == 2


def test_rotation_and_retention(tmp_path: Path) -> None:
    """Files rotate past max_file_bytes and at most max_files are kept."""
    j = journal(tmp_path, max_file_bytes=1000, max_files=3)
    j.open()
    for seq in range(1, 41):
        j.append(rows(lines(seq, seq, pad=100)))
    j.close()
    files = j.files()
    assert len(files) == 3
    assert all(f.stat().st_size <= 1000 for f in files)
    seqs = [json.loads(ln)["seq"] for f in files for ln in f.read_bytes().splitlines()]
    assert seqs == list(range(seqs[0], 41))
    assert files[0].name == f"events-{seqs[0]:012d}.jsonl"
    assert journal(tmp_path).open().last_seq == 40


def test_read_since_yields_later_lines_across_files(tmp_path: Path) -> None:
    """read_since returns every line with seq > N, in order, across rotated files."""
    j = journal(tmp_path, max_file_bytes=300)
    j.open()
    for seq in range(1, 21):
        j.append(rows(lines(seq, seq)))
    got = [seq for seq, line in j.read_since(7) if json.loads(line)["seq"] == seq]
    assert got == list(range(8, 21))
    assert list(j.read_since(20)) == []


def test_read_since_parses_lines_with_a_nested_seq(tmp_path: Path) -> None:
    """A source field that contains '"seq":' does not confuse the seq lookup."""
    j = journal(tmp_path)
    j.open()
    tricky = json.dumps({"type": "x", "note": '"seq":999', "seq": 1}).encode() + b"\n"
    j.append(rows(tricky + lines(2, 2)))
    assert [(s, json.loads(x)["seq"]) for s, x in j.read_since(0)] == [(1, 1), (2, 2)]
    assert [s for s, _ in j.read_since(1)] == [2]


def test_corrupt_last_line_sets_journal_aside(tmp_path: Path) -> None:
    """An unreadable complete last line: files renamed aside, new epoch, seq 0."""
    j = journal(tmp_path)
    first = j.open()
    j.append([*rows(lines(1, 2)), Row(3, b"garbage")])
    j.close()
    state = journal(tmp_path).open()
    assert state.epoch != first.epoch
    assert state.last_seq == 0
    assert any(p.name.startswith("events-") and ".corrupt-" in p.name for p in tmp_path.iterdir())
    assert journal(tmp_path).files() == []


def test_missing_epoch_with_data_starts_new_epoch(tmp_path: Path) -> None:
    """Data without an epoch file cannot be trusted: set aside, new epoch."""
    j = journal(tmp_path)
    j.open()
    j.append(rows(lines(1, 2)))
    j.close()
    (tmp_path / EPOCH_FILE).unlink()
    state = journal(tmp_path).open()
    assert state.last_seq == 0
    assert j.files() == []


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_writes_before_returning(tmp_path: Path, policy: str) -> None:
    """append hands the data to the OS before it returns, whatever the fsync policy."""
    j = journal(tmp_path, fsync=policy)
    j.open()
    j.append(rows(lines(1, 1)))
    j.sync()
    [path] = j.files()
    assert path.read_bytes() == lines(1, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    j.close()


def test_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    """Two daemons on one journal would reuse seqs: the second open is refused."""
    first = journal(tmp_path)
    first.open()
    with pytest.raises(JournalInUse):
        journal(tmp_path).open()
    first.close()
    second = journal(tmp_path)
    assert second.open().last_seq == 0
    second.close()


def test_always_leaves_every_fsync_to_the_owner_even_across_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync: always, append (and the rotation inside it) never fsyncs on the
    calling thread (the event loop): unsynced_fds hands over the rotated file and a
    duplicate of the current one, and fsync_fds syncs and closes them (group commit)."""
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    j = journal(tmp_path, fsync="always", max_file_bytes=200)
    j.open()
    calls.clear()  # the epoch file's own fsync at open
    j.append(rows(lines(1, 6, pad=20)))
    assert calls == [], f"{len(calls)} fsyncs on the appending thread"
    files = j.files()
    fds = j.unsynced_fds()
    assert len(fds) == len(files) >= 2, f"{len(fds)} fds for {len(files)} written files"
    assert {os.fstat(fd).st_ino for fd in fds} == {f.stat().st_ino for f in files}
    assert fsync_fds(fds) is None
    assert len(calls) == len(fds)
    assert j.unsynced_fds() == []  # nothing written since
    j.close()


def test_daemon_rotates_by_line_during_a_burst() -> None:
    """600 events in one write at max_file_bytes 20000: no file exceeds it by more than a
    line (rotation is by line, not by read batch)."""

    async def body() -> tuple[list[int], int]:
        async with private_daemon(journal={"max_file_bytes": 20000, "max_files": 100}) as d:
            hello = {"type": "hello", "acks": True}
            async with await Source.connect(d.socket_path, hello=hello) as src:
                events = [{"type": "tick", "i": i, "pad": "x" * 200} for i in range(600)]
                await src.send_raw(b"".join(json.dumps(e).encode() + b"\n" for e in events))
                for _ in range(600):
                    await src.recv_type("ack")
            assert d.journal is not None
            files = d.journal.files()
            longest = max(len(ln) + 1 for f in files for ln in f.read_bytes().splitlines())
            seqs = [json.loads(ln)["seq"] for f in files for ln in f.read_bytes().splitlines()]
            assert seqs == list(range(1, 601))
            return [f.stat().st_size for f in files], longest

    sizes, longest = run(body())
    assert max(sizes) <= 20000 + longest, f"a {max(sizes)}-byte file at max_file_bytes 20000"
    assert len(sizes) >= 600 * 230 // 20000, sizes
