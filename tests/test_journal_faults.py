"""The journal failing safely (PROTOCOL §4, §4.1), with faults injected into its writes.

A stand-in for the ``os`` module inside ``aaeventd.daemon.journal`` lets a test make the
journal's data writes short or failing (ENOSPC) while everything else, the in-place
state record included, works as on a real full disk.  The daemon on a real small file
system is tests/test_disk_full.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aaeventd.daemon import journal as journal_module
from aaeventd.daemon.journal import EPOCH_FILE, STATE_FILE, Journal
from aaeventd.daemon.replay import Holes, journal_chunk
from aaeventd.protocol.filters import TypeFilter


@dataclass(frozen=True)
class Row:
    """A journal line as the daemon hands it over: its seq and JSON text."""

    seq: int
    payload: bytes


def batch(first: int, last: int, pad: int = 0) -> list[Row]:
    return [
        Row(
            s, json.dumps({"type": "x", "pad": "p" * pad, "seq": s}, separators=(",", ":")).encode()
        )
        for s in range(first, last + 1)
    ]


class FaultyOs:
    """``os`` for the journal module: data writes obey ``budget`` (bytes left, None: all).

    Past the budget a write is short, then fails with ENOSPC, as on a full disk.
    ``fail_truncate`` makes the cut-back fail too; ``fail_open`` makes creating files whose
    name ends with ``fail_suffix`` fail with that errno (a read-only directory, no room
    for a new inode's data); ``free`` fakes statvfs's free bytes.
    """

    def __init__(self) -> None:
        self.budget: int | None = None
        self.fail_truncate = False
        self.fail_open: int | None = None
        self.fail_suffix = ".jsonl"
        self.free: int | None = None
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        self.writes += 1
        if self.budget is None:
            return os.write(fd, data)
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = os.write(fd, bytes(data[: self.budget]))
        self.budget -= count
        return count

    def ftruncate(self, fd: int, size: int) -> None:
        if self.fail_truncate:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.ftruncate(fd, size)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if (
            self.fail_open is not None
            and flags & os.O_CREAT
            and str(path).endswith(self.fail_suffix)
        ):
            raise OSError(self.fail_open, os.strerror(self.fail_open))
        return os.open(path, flags, mode)

    def statvfs(self, path: Any) -> Any:
        real = os.statvfs(path)
        if self.free is None:
            return real
        return os.statvfs_result((real.f_bsize, 1, 0, 0, self.free, 0, 0, 0, 0, 255))


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> FaultyOs:
    fake = FaultyOs()
    monkeypatch.setattr(journal_module, "os", fake)
    return fake


def journal(directory: Path, **kw: Any) -> Journal:
    opts: dict[str, Any] = {"max_file_bytes": 1 << 20, "max_files": 8, "fsync": "never"}
    opts.update(kw)
    return Journal(directory, **opts)


def file_lines(j: Journal) -> list[bytes]:
    return [line for path in j.files() for line in path.read_bytes().splitlines(keepends=True)]


def journaled_seqs(j: Journal) -> list[int]:
    """Every line of every file parsed (fails on a torn or non-JSON line)."""
    seqs = []
    for line in file_lines(j):
        assert line.endswith(b"\n"), f"torn line in the journal: {line!r}"
        seqs.append(json.loads(line)["seq"])
    return seqs


# -- whole lines only ----------------------------------------------------------------


def test_short_write_is_cut_back_to_the_last_whole_line(tmp_path: Path, faulty: FaultyOs) -> None:
    """ENOSPC mid-line: the file keeps only whole lines; the rest is counted as unjournaled."""
    j = journal(tmp_path)
    j.open()
    assert j.append(batch(1, 10)) == 10
    line_len = len(batch(11, 11)[0].payload) + 1
    faulty.budget = 3 * line_len + line_len // 2  # three lines and half of the fourth
    written = j.append(batch(11, 30))
    assert written == 3, f"{written} lines reported written, 3 whole ones fitted"
    assert journaled_seqs(j) == list(range(1, 14))
    assert not j.health.ok
    assert j.health.unjournaled == 17, j.health
    faulty.budget = None
    assert j.append(batch(31, 35)) == 5
    seqs = journaled_seqs(j)
    assert seqs == [*range(1, 14), *range(31, 36)], seqs
    assert j.health.ok
    assert j.health.error is None
    assert j.unjournaled_ranges(1, 100) == [(14, 30)]
    j.close()


def test_a_cut_that_fails_leaves_the_file_and_goes_on_in_a_new_one(
    tmp_path: Path, faulty: FaultyOs
) -> None:
    """If even ftruncate fails, nothing is written after the torn bytes; readers skip them."""
    j = journal(tmp_path)
    j.open()
    j.append(batch(1, 5))
    faulty.budget = 10
    faulty.fail_truncate = True
    assert j.append(batch(6, 8)) == 0
    faulty.budget = None
    faulty.fail_truncate = False
    assert j.append(batch(9, 12)) == 4
    first, second = j.files()
    assert not first.read_bytes().endswith(b"\n")  # the torn tail stays where it was
    assert second.name == "events-000000000009.jsonl"
    got = list(j.read_since(0))
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 9, 10, 11, 12]
    assert all(json.loads(line)["seq"] == s for s, line in got)
    assert j.health.skipped_lines == 1, j.health
    j.close()


def test_reader_skips_and_counts_a_torn_line_glued_to_the_next(tmp_path: Path) -> None:
    """A torn line followed by more lines (what the old writer left) is never yielded."""
    j = journal(tmp_path)
    j.open()
    j.append(batch(1, 3))
    j.close()
    [path] = j.files()
    good = [r.payload + b"\n" for r in batch(4, 6)]
    with path.open("ab") as fh:
        fh.write(b'{"type":"x","pad":"","se' + good[0] + good[1] + b"not json at all\n" + good[2])
    reader = journal(tmp_path)
    got = list(reader.read_since(0))
    assert [s for s, _ in got] == [1, 2, 3, 5, 6], got
    for _, line in got:
        json.loads(line)
    assert reader.health.skipped_lines == 2, reader.health


# -- failing: logs, counts, recovery -------------------------------------------------


def test_a_failing_journal_logs_once_then_once_a_minute_then_once_on_recovery(
    tmp_path: Path,
    faulty: FaultyOs,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1000 failed writes: one ERROR with the reason, one more per minute, one WARNING back."""
    clock = [1000.0]
    monkeypatch.setattr(journal_module.time, "monotonic", lambda: clock[0])
    j = journal(tmp_path)
    j.open()
    faulty.budget = 0
    caplog.set_level(logging.WARNING, logger="aaeventd.journal")
    for seq in range(1, 1001):
        assert j.append(batch(seq, seq)) == 0
        clock[0] += 0.1  # 1000 writes over 100 s
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, f"{len(errors)} ERROR lines for 1000 failed writes over 100 s"
    assert "No space left on device" in errors[0].getMessage()
    assert "not journaled since" in errors[1].getMessage()
    assert j.health.unjournaled == 1000
    assert j.health.failed_writes == 1000
    assert j.health.error == "No space left on device"
    assert j.health.since is not None
    faulty.budget = None
    assert j.append(batch(1001, 1001)) == 1
    back = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(back) == 1, back
    assert "writable again" in back[0]
    assert "1000 events were not journaled" in back[0]
    assert j.health.ok
    j.close()


def test_a_new_file_that_cannot_be_created_is_retried_with_the_next_batch(
    tmp_path: Path, faulty: FaultyOs
) -> None:
    """Rotation into a read-only directory fails: counted; the next batch tries again."""
    j = journal(tmp_path, max_file_bytes=4096)
    j.open()
    j.append(batch(1, 1, pad=3000))
    faulty.fail_open = errno.EROFS
    assert j.append(batch(2, 2, pad=3000)) == 0
    assert j.append(batch(3, 4)) == 0
    assert (j.health.ok, j.health.error, j.health.unjournaled) == (
        False,
        "Read-only file system",
        3,
    )
    faulty.fail_open = None
    assert j.append(batch(5, 5)) == 1
    assert journaled_seqs(j) == [1, 5]
    assert j.unjournaled_ranges(1, 5) == [(2, 4)]
    j.close()


# -- no seq reused: the state record --------------------------------------------------


@pytest.mark.parametrize("recovered", [False, True])
def test_stopping_while_failing_starts_a_new_epoch_past_every_seq_handed_out(
    tmp_path: Path, faulty: FaultyOs, recovered: bool
) -> None:
    """Closed while failing: the next open has a new epoch and seq past the failed ones;
    after a recovery the epoch is kept."""
    j = journal(tmp_path)
    first = j.open()
    j.append(batch(1, 10))
    faulty.budget = 0
    j.append(batch(11, 25))
    if recovered:
        faulty.budget = None
        j.append(batch(26, 26))
    j.close()
    record = (tmp_path / STATE_FILE).read_bytes()
    assert len(record) == 64
    again = journal(tmp_path).open()
    if recovered:
        assert (again.epoch, again.last_seq) == (first.epoch, 26)
    else:
        assert again.epoch != first.epoch, record
        assert again.last_seq == 25, f"resumed after {again.last_seq}, 25 was handed out"
        assert (tmp_path / EPOCH_FILE).read_text().strip() == again.epoch
        assert any("new epoch" in w for w in again.warnings)


def test_the_new_epoch_is_written_in_place_on_a_full_disk(tmp_path: Path, faulty: FaultyOs) -> None:
    """No room for a new epoch file: it is overwritten in place; the record says ok again."""
    j = journal(tmp_path)
    j.open()
    j.append(batch(1, 3))
    faulty.budget = 0
    j.append(batch(4, 6))
    j.close()
    faulty.fail_open = errno.ENOSPC  # epoch.tmp cannot be created
    faulty.fail_suffix = ".tmp"
    state = journal(tmp_path).open()
    assert (tmp_path / EPOCH_FILE).read_text() == state.epoch + "\n"
    assert not (tmp_path / "epoch.tmp").exists()
    assert (tmp_path / STATE_FILE).read_bytes().split() == [b"ok", b"6"]


def test_an_unreadable_state_record_means_a_new_epoch(tmp_path: Path) -> None:
    """A state file whose record cannot be read (never written: a full disk) is not trusted."""
    j = journal(tmp_path)
    first = j.open()
    j.append(batch(1, 3))
    j.close()
    (tmp_path / STATE_FILE).write_bytes(b"")
    again = journal(tmp_path).open()
    assert again.epoch != first.epoch
    assert again.last_seq == 3


def test_a_journal_without_state_file_keeps_its_epoch(tmp_path: Path) -> None:
    """A journal written before the state file existed resumes as before (no new epoch)."""
    j = journal(tmp_path)
    first = j.open()
    j.append(batch(1, 3))
    j.close()
    (tmp_path / STATE_FILE).unlink()
    again = journal(tmp_path).open()
    assert (again.epoch, again.last_seq) == (first.epoch, 3)


def test_a_deleted_directory_is_recreated_with_its_epoch(tmp_path: Path) -> None:
    """The directory removed under the daemon: noticed within a tick, recreated on the next
    write with the same epoch; a restart then resumes there."""
    directory = tmp_path / "j"
    j = journal(directory)
    first = j.open()
    j.append(batch(1, 3))
    shutil.rmtree(directory)
    j.tick()
    assert j.append(batch(4, 5)) == 2
    assert journaled_seqs(j) == [4, 5]
    j.close()
    again = journal(directory).open()
    assert (again.epoch, again.last_seq) == (first.epoch, 5)


# -- rotation by line, keep_free_bytes -----------------------------------------------


def test_a_burst_is_split_at_the_rotation_point_one_write_per_file(
    tmp_path: Path, faulty: FaultyOs
) -> None:
    """600 events in one batch at max_file_bytes 20000: every file within the limit, one
    write per file."""
    j = journal(tmp_path, max_file_bytes=20000, max_files=100)
    j.open()
    faulty.writes = 0
    rows = batch(1, 600, pad=250)
    assert j.append(rows) == 600
    sizes = [p.stat().st_size for p in j.files()]
    assert max(sizes) <= 20000, f"largest file {max(sizes)} bytes > max_file_bytes 20000"
    assert sum(sizes) == sum(len(r.payload) + 1 for r in rows)
    assert faulty.writes == len(sizes), f"{faulty.writes} writes for {len(sizes)} files"
    assert journaled_seqs(j) == list(range(1, 601))
    for path in j.files():
        assert int(path.name[7:19]) == json.loads(path.read_bytes().split(b"\n", 1)[0])["seq"]
    j.close()


def test_a_line_longer_than_max_file_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    """One line over the limit: the only line of its file (exceeds it by at most one line)."""
    j = journal(tmp_path, max_file_bytes=4096)
    j.open()
    j.append([*batch(1, 2), *batch(3, 3, pad=6000), *batch(4, 5)])
    lines_per_file = [len(p.read_bytes().splitlines()) for p in j.files()]
    assert lines_per_file == [2, 1, 2], lines_per_file
    j.close()


def test_keep_free_bytes_removes_the_oldest_files_down_to_the_current(
    tmp_path: Path, faulty: FaultyOs
) -> None:
    """Less free space than keep_free_bytes: oldest files go first, the current one stays."""
    j = journal(tmp_path, max_file_bytes=4096, max_files=100, keep_free_bytes=1 << 20)
    j.open()
    for seq in range(1, 41):
        j.append(batch(seq, seq, pad=900))
    names = [p.name for p in j.files()]
    assert len(names) == 10
    faulty.free = (1 << 20) - 3 * 4096  # three files' worth short
    j.tick()
    kept = [p.name for p in j.files()]
    assert kept == names[3:], f"kept {kept}"
    assert j.health.files_removed_for_space == 3
    faulty.free = 0
    j.tick()
    assert [p.name for p in j.files()] == names[-1:]
    j.close()


# -- replay: what the journal lacks is announced -------------------------------------


def frame_payloads(data: bytes) -> Iterator[bytes]:
    """The payloads of unmasked server frames laid end to end (RFC 6455 §5.2)."""
    pos = 0
    while pos < len(data):
        length = data[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        yield data[pos : pos + length]
        pos += length


def chunk_messages(j: Journal, first: int, last: int) -> list[dict[str, Any]]:
    holes = Holes(first, j.unjournaled_ranges(first, last), j.oldest_seq)
    lines = j.read_since(first - 1)
    out: list[dict[str, Any]] = []
    while True:
        chunk = journal_chunk(lines, last, TypeFilter.from_query(None), holes)
        out.extend(json.loads(payload) for payload in frame_payloads(b"".join(chunk.frames)))
        if chunk.done:
            return out


def test_backfill_announces_unjournaled_seqs_where_they_fall(
    tmp_path: Path, faulty: FaultyOs
) -> None:
    """Seqs missing from the journal come as not_journaled gaps at their place; what lies
    before the oldest file is evicted; nothing is skipped silently."""
    j = journal(tmp_path, max_file_bytes=4096, max_files=3)
    j.open()
    for seq in range(1, 31):
        j.append(batch(seq, seq, pad=500))
    faulty.budget = 0
    j.append(batch(31, 40))
    faulty.budget = None
    j.append(batch(41, 45))
    faulty.budget = 0
    j.append(batch(46, 50))
    faulty.budget = None
    oldest = j.oldest_seq()
    assert oldest is not None
    assert oldest > 1
    got = chunk_messages(j, 1, 50)
    gaps = [m for m in got if m["type"] == "replay_gap"]
    assert gaps == [
        {"type": "replay_gap", "reason": "evicted", "from": 1, "to": oldest - 1},
        {"type": "replay_gap", "reason": "not_journaled", "from": 31, "to": 40},
        {"type": "replay_gap", "reason": "not_journaled", "from": 46, "to": 50},
    ], gaps
    events = [m["seq"] for m in got if m["type"] == "x"]
    assert events == [*range(oldest, 31), *range(41, 46)]
    # After a restart nothing is remembered: a hole after the oldest file still shows.
    j.close()
    j2 = journal(tmp_path, max_file_bytes=4096, max_files=3)
    got = chunk_messages(j2, 25, 45)
    assert [m for m in got if m["type"] == "replay_gap"] == [
        {"type": "replay_gap", "reason": "not_journaled", "from": 31, "to": 40}
    ]
