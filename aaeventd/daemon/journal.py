"""The event journal: JSON Lines files that outlive the daemon (PROTOCOL §4, §4.1).

Owns the journal directory: appending batches of broadcast events exactly as
broadcast, rotation by line at ``max_file_bytes``, retention of ``max_files`` and of
``keep_free_bytes``, the fsync policy, the persisted ``epoch``, resuming ``seq`` on
start, cutting a torn last line left by a crash, and failing safely (§4.1): a write
that fails is cut back to whole lines, reported (rate-limited), counted, and recorded
in the ``state`` file so that a restart never reuses a seq.  It knows nothing of
sockets, clients or the hub.

:meth:`Journal.append` only writes (hands the lines to the OS); the owner syncs.  With
``fsync: always`` the owner takes :meth:`Journal.unsynced_fds` and fsyncs them in a
worker thread before it releases the batch (the group commit, PROTOCOL §4): a file
closed by a rotation meanwhile is handed over rather than synced on the caller's thread.

Files are named ``events-<first seq, 12 digits>.jsonl``: the seq of the first line
written to it when it was opened.  Its lines start there or later (a failed write
leaves seqs out) and come before the next file's name, so the files are in seq order
by name, and a seq missing between the oldest file's name and the last line was
handed out but never journaled.

The ``state`` file is a fixed-size record, kept open from :meth:`Journal.open` and
overwritten in place (no new blocks: it works on a full disk), saying ``ok N`` or
``failing N``: ``N`` is the highest seq known to have been handed out when it was
written.  ``failing`` (or a record that cannot be read) at open means the journal may
lack seqs that were handed out: the daemon starts a new epoch, and ``seq`` continues
after ``max(last journaled, N)``.  The old files stay where they are, as the start of
the new epoch's history.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from aaeventd.errors import StartupError
from aaeventd.protocol.codec import rfc3339_utc

log = logging.getLogger("aaeventd.journal")

FsyncPolicy = Literal["always", "interval", "never"]
_NAME_RE = re.compile(r"^events-(\d{12})\.jsonl$")
EPOCH_FILE = "epoch"
LOCK_FILE = "lock"
STATE_FILE = "state"
# The state record's fixed size: always overwritten whole, in place.
STATE_RECORD_BYTES = 64
_STATE_RE = re.compile(rb"(ok|failing) (\d{1,19}) *\n")
# How much of a file's tail to read when looking for its last line.
_TAIL_CHUNK = 64 * 1024
# While the journal keeps failing, at most one log line per this many seconds (§4.1).
FAILURE_REPORT_INTERVAL = 60.0
# The unjournaled seq ranges remembered for replays (the oldest are merged past it).
MAX_UNJOURNALED_RANGES = 1000
# Files with unreadable lines reported (each once); past that they are only counted.
MAX_REPORTED_BAD_FILES = 100


class JournalInUse(StartupError):
    """Another process holds the journal directory's lock."""


class JournalLine(Protocol):
    """One event to journal: its seq and its JSON text (without the newline)."""

    @property
    def seq(self) -> int: ...

    @property
    def payload(self) -> bytes | memoryview: ...


def new_epoch() -> str:
    """A fresh journal identity."""
    return uuid.uuid4().hex[:16]


@dataclass
class JournalState:
    """What opening the journal found."""

    epoch: str
    last_seq: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class JournalHealth:
    """Whether the journal is being written (§4.1); what ``/healthz`` and ``/metrics`` show.

    ``since`` is the wall time of the first failure of the current episode;
    ``unjournaled`` counts every event not written since the daemon started.
    """

    ok: bool = True
    error: str | None = None
    since: float | None = None
    unjournaled: int = 0
    failed_writes: int = 0
    skipped_lines: int = 0
    files_removed_for_space: int = 0


class Journal:
    """Appends broadcast events to the current file; rotates and prunes.

    Args:
        directory: where the files live (created 0700 when missing).
        max_file_bytes: a file never grows past this, but for a single line that is
            longer on its own (it then gets a file to itself).
        max_files: how many files are kept, the one being written included.
        fsync: ``always`` (the owner syncs every batch before it broadcasts it, with
            :meth:`unsynced_fds` or :meth:`sync`), ``interval`` (the owner syncs about
            once a second) or ``never``.
        keep_free_bytes: while the file system has less free space than this, the
            oldest files are removed (down to the one being written); ``0``: never.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int,
        max_files: int,
        fsync: FsyncPolicy,
        keep_free_bytes: int = 0,
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.fsync = fsync
        self.keep_free_bytes = keep_free_bytes
        self.bytes_written = 0
        self.health = JournalHealth()
        self.epoch = ""
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._dirty = False
        # Closed files still to be synced (``always``): fds the next sync owns.
        self._unsynced: list[int] = []
        # Which failure keeps the journal degraded (§4.1): a write, an fsync, or both.
        self._write_failing = False
        self._sync_failing = False
        self._lock_fd: int | None = None
        self._state_fd: int | None = None
        self._state_record = b""
        self._epoch_pending = False
        self._episode_unjournaled = 0
        self._last_report = 0.0
        self._unjournaled: list[tuple[int, int]] = []
        self._reported_bad: set[str] = set()

    # -- opening -----------------------------------------------------------------

    def open(self) -> JournalState:
        """Lock the directory, read the epoch and the state record, resume the last seq.

        Raises:
            JournalInUse: another aaeventd holds this journal (two writers would hand
                out the same seq).
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock()
        state = JournalState(epoch="", last_seq=0)
        epoch_path = self.directory / EPOCH_FILE
        files = self.files()
        failing, floor = self._open_state()
        persisted = True
        set_aside = False
        try:
            state.epoch = epoch_path.read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            state.epoch = ""
        if not state.epoch or not re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", state.epoch):
            if files:
                self._set_aside(files, "the journal has no valid epoch file", state)
                files = []
                set_aside = True
            state.epoch = new_epoch()
            persisted = self._persist_epoch(state.epoch)
        for path in reversed(files):
            try:
                last = self._recover_tail(path, state)
            except (OSError, ValueError) as exc:
                self._set_aside(self.files(), f"cannot read {path.name}: {exc}", state)
                state.epoch = new_epoch()
                persisted = self._persist_epoch(state.epoch)
                state.last_seq = 0
                set_aside = True
                break
            if last is not None:
                state.last_seq = last
                break
        if not set_aside:
            if failing:
                old = state.epoch
                state.epoch = new_epoch()
                state.last_seq = max(state.last_seq, floor)
                msg = (
                    f"the journal was failing when aaeventd last stopped (seqs up to "
                    f"{floor or 'an unknown seq'} were handed out, not all journaled): new "
                    f"epoch {state.epoch} (was {old}), seq goes on after {state.last_seq}"
                )
                log.warning("%s", msg)
                state.warnings.append(msg)
                persisted = self._persist_epoch(state.epoch)
            else:
                state.last_seq = max(state.last_seq, floor)
        self.epoch = state.epoch
        # Until the new epoch is on disk the record keeps saying "failing": a restart
        # meanwhile must not take this run's seqs for the old epoch's.
        self._epoch_pending = not persisted
        self._mark(failing=not persisted, seq=state.last_seq)
        return state

    def _lock(self) -> None:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalInUse(
                f"the journal {self.directory} is in use by another aaeventd"
            ) from None
        self._lock_fd = fd

    def _open_state(self) -> tuple[bool, int]:
        """Open the state file (kept open); ``(failing, floor)`` from its record.

        No file (a journal from before it existed): ``ok 0``.  A file whose record
        cannot be read (created on a full disk, never written): ``failing 0``, since
        nothing says the journal holds every seq handed out.
        """
        path = self.directory / STATE_FILE
        existed = path.exists()
        if self._state_fd is not None:
            os.close(self._state_fd)
        self._state_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._state_record = b""
        if not existed:
            return False, 0
        data = os.pread(self._state_fd, STATE_RECORD_BYTES, 0)
        match = _STATE_RE.fullmatch(data)
        if match is None:
            log.warning("journal state file %s is unreadable (%r)", path, data[:40])
            return True, 0
        self._state_record = data
        return match.group(1) == b"failing", int(match.group(2))

    def _mark(self, *, failing: bool, seq: int) -> bool:
        """Overwrite the state record in place; False when that failed too."""
        if self._state_fd is None:
            return False
        word = "failing" if failing else "ok"
        record = f"{word} {seq}".encode("ascii").ljust(STATE_RECORD_BYTES - 1) + b"\n"
        if record == self._state_record:
            return True
        try:
            os.pwrite(self._state_fd, record, 0)
        except OSError:
            return False
        self._state_record = record
        return True

    def _persist_epoch(self, epoch: str) -> bool:
        """Write the epoch file: atomically, else (a full disk) in place; False if neither."""
        path = self.directory / EPOCH_FILE
        text = epoch + "\n"
        try:
            _write_atomic(path, text)
            return True
        except OSError as exc:
            atomic_error = exc
        try:
            _write_in_place(path, text)
            return True
        except OSError as exc:
            log.error(
                "cannot write the journal's epoch file %s (%s; in place: %s): a restart "
                "starts yet another epoch",
                path,
                _reason(atomic_error),
                _reason(exc),
            )
            return False

    def files(self) -> list[Path]:
        """The journal files, oldest first."""
        try:
            names = sorted(p.name for p in self.directory.iterdir() if _NAME_RE.match(p.name))
        except FileNotFoundError:
            return []
        return [self.directory / n for n in names]

    def _recover_tail(self, path: Path, state: JournalState) -> int | None:
        """Cut a torn last line off ``path``; return the seq of its last line, if any."""
        with path.open("r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return None
            last_nl = _rfind_newline(fh, size)
            if last_nl != size - 1:
                fh.truncate(last_nl + 1)
                msg = (
                    f"journal {path.name}: cut a torn last line "
                    f"({size - last_nl - 1} bytes) left by a crash"
                )
                log.warning("%s", msg)
                state.warnings.append(msg)
                size = last_nl + 1
                if size == 0:
                    return None
            start = _rfind_newline(fh, size - 1) + 1
            fh.seek(start)
            last_line = fh.read(size - 1 - start)
        seq = json.loads(last_line)["seq"]
        if not isinstance(seq, int):
            raise ValueError("last line has no integer seq")
        return seq

    def _set_aside(self, files: list[Path], why: str, state: JournalState) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
        msg = f"journal set aside ({why}); starting a new epoch"
        log.warning("%s", msg)
        state.warnings.append(msg)

    # -- writing -----------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.health.ok

    def append(self, lines: Sequence[JournalLine]) -> int:
        """Write ``lines`` (in seq order) and return how many were written, from the front.

        All of them, normally: handed to the OS before this returns (a crash of the
        daemon loses none of them); reaching the disk is the owner's call to
        :meth:`sync` or :meth:`unsynced_fds`.  When the journal cannot be written (§4.1) the rest of
        the batch is not journaled: the failure is logged (rate-limited), counted and
        recorded, and the next call tries again.  The file only ever holds whole lines,
        and a file exceeds ``max_file_bytes`` by at most one line: the batch is split
        at the rotation point, one write per file.  Never raises ``OSError``.
        """
        n = len(lines)
        done = 0
        limit = self.max_file_bytes
        fresh = False
        while done < n:
            if self._fd is None or (
                not fresh and self._size and self._size + len(lines[done].payload) + 1 > limit
            ):
                try:
                    self._rotate(lines[done].seq)
                except OSError as exc:
                    self._failed(exc, lines[done].seq, lines[n - 1].seq)
                    return done
                fresh = True
            room = limit - self._size
            parts: list[bytes | memoryview] = []
            total = 0
            end = done
            while end < n:
                payload = lines[end].payload
                size = len(payload) + 1
                if end > done and total + size > room:
                    break
                parts.append(payload)
                parts.append(b"\n")
                total += size
                end += 1
            written, error = self._write(parts)
            if (
                error is not None
                and error.errno == errno.ENOSPC
                and self._fd is not None
                and self._keep_free()
            ):
                # Space was made: the rest of this segment gets one more try.
                more, error = self._write(parts[2 * written :])
                written += more
            done += written
            if error is not None:
                self._failed(error, lines[done].seq, lines[n - 1].seq)
                return done
            fresh = False
        self._write_failing = False
        # A failing fsync is cleared by an fsync that works (synced), not by a write.
        if not self.health.ok and n and not self._sync_failing:
            self._recovered(lines[n - 1].seq)
        return n

    def _write(self, parts: list[bytes | memoryview]) -> tuple[int, OSError | None]:
        """Append ``parts`` (line, ``\\n``, line, ...) in one write; ``(lines written, error)``.

        A short write is cut back to the last whole line before anything else is
        written; if even that fails the file is left (its torn tail is skipped by
        readers) and the next write opens a new one.
        """
        assert self._fd is not None
        data = b"".join(parts)
        base = self._size
        view = memoryview(data)
        off = 0
        try:
            while off < len(data):
                count = os.write(self._fd, view[off:])
                if count <= 0:
                    raise OSError(errno.EIO, "the write made no progress")
                off += count
        except OSError as exc:
            # Where each line ends, worked out only now (not on the hot path).
            ends = list(itertools.accumulate(len(p) for p in parts))[1::2]
            whole = bisect.bisect_right(ends, off)
            keep = ends[whole - 1] if whole else 0
            if off != keep:
                try:
                    os.ftruncate(self._fd, base + keep)
                except OSError as cut_error:
                    log.error(
                        "journal %s: cannot cut a short write back to a whole line (%s); "
                        "the file is left as it is and the journal goes on in a new one",
                        self._path,
                        _reason(cut_error),
                    )
                    self._close_current(sync=False)
                    self._account(keep)
                    return whole, exc
            self._size = base + keep
            self._account(keep)
            return whole, exc
        self._size = base + off
        self._account(off)
        return len(parts) // 2, None

    def _account(self, written: int) -> None:
        if written:
            self.bytes_written += written
            self._dirty = True

    def _failed(self, exc: OSError, first: int, last: int) -> None:
        """Seqs ``first..last`` were not journaled because of ``exc``: count, record, log."""
        health = self.health
        count = last - first + 1
        self._write_failing = True
        health.unjournaled += count
        health.failed_writes += 1
        self._remember_unjournaled(first, last)
        marked = self._mark(failing=True, seq=max(last, _record_seq(self._state_record)))
        reason = _reason(exc)
        now = time.monotonic()
        if health.ok:
            health.ok = False
            health.since = time.time()
            self._episode_unjournaled = count
            self._last_report = now
            log.error(
                "journal write failed in %s: %s; events still reach clients but are not "
                "journaled (retried with every new event)%s",
                self.directory,
                reason,
                ""
                if marked
                else "; the journal's state file cannot be written either, so a restart "
                "before the journal works again may reuse seqs",
            )
        else:
            self._episode_unjournaled += count
            if now - self._last_report >= FAILURE_REPORT_INTERVAL:
                self._last_report = now
                log.error(
                    "journal still failing (%s): %d events not journaled since %s",
                    reason,
                    self._episode_unjournaled,
                    rfc3339_utc(health.since or time.time()),
                )
        health.error = reason

    def sync_failed(self, exc: OSError) -> None:
        """An fsync failed: the journal is degraded until an fsync succeeds again.

        What was written stays in the file (replays serve it, a crash of the daemon
        loses none of it); only its durability against a power loss is unknown.
        """
        health = self.health
        self._sync_failing = True
        health.failed_writes += 1
        if health.ok:
            health.ok = False
            health.since = time.time()
            self._episode_unjournaled = 0
            self._last_report = time.monotonic()
            log.error("journal fsync failed in %s: %s", self.directory, _reason(exc))
        health.error = f"fsync: {_reason(exc)}"

    def synced(self, last_seq: int) -> None:
        """An fsync covering everything up to ``last_seq`` worked: ends a failing fsync."""
        if self._sync_failing:
            self._sync_failing = False
            if not self.health.ok and not self._write_failing:
                self._recovered(last_seq)

    def _recovered(self, last_seq: int) -> None:
        health = self.health
        took = time.time() - (health.since or time.time())
        if self._epoch_pending and self._persist_epoch(self.epoch):
            self._epoch_pending = False
        self._mark(failing=self._epoch_pending, seq=last_seq)
        log.warning(
            "journal writable again after %.0f s; %d events were not journaled meanwhile",
            took,
            self._episode_unjournaled,
        )
        health.ok = True
        health.error = None
        health.since = None

    def _remember_unjournaled(self, first: int, last: int) -> None:
        ranges = self._unjournaled
        if ranges and ranges[-1][1] + 1 >= first:
            ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
        else:
            ranges.append((first, last))
        if len(ranges) > MAX_UNJOURNALED_RANGES:
            # Merging the two oldest ranges over-reports (as not_journaled) what lies
            # between them: announced, never silent.
            (a, _), (_, b) = ranges[0], ranges[1]
            ranges[0:2] = [(a, b)]

    def unjournaled_ranges(self, first: int, last: int) -> list[tuple[int, int]]:
        """This run's seq ranges that were not journaled, clipped to ``first..last``."""
        return [
            (max(a, first), min(b, last)) for a, b in self._unjournaled if b >= first and a <= last
        ]

    def oldest_seq(self) -> int | None:
        """The seq the oldest journal file starts at (its name), or None without files."""
        for path in self.files():
            match = _NAME_RE.match(path.name)
            assert match is not None
            return int(match.group(1))
        return None

    def sync(self) -> None:
        """fsync, on this thread, what was written since the last sync.

        That is the current file if it was written, and the files a rotation closed
        meanwhile (``always``).

        Raises:
            OSError: an fsync failed (every file is still tried, and closed).
        """
        fds, self._unsynced = self._unsynced, []
        error = fsync_fds(fds)
        if self._dirty and self._fd is not None:
            self._dirty = False
            os.fsync(self._fd)
        if error is not None:
            raise error

    def unsynced_fds(self) -> list[int]:
        """The fds to fsync (and then close) in another thread; empty when nothing is due.

        The files a rotation closed since the last call (``always``), and a duplicate
        of the current file's fd if it was written since: the caller owns them all, so
        a rotation meanwhile cannot close one under it (:func:`fsync_fds`).

        Raises:
            OSError: no duplicate could be made (out of descriptors); nothing changed,
                :meth:`sync` on this thread still works.
        """
        fds = self._unsynced
        if self._dirty and self._fd is not None:
            fds.append(os.dup(self._fd))
            self._dirty = False
        self._unsynced = []
        return fds

    def _rotate(self, first_seq: int) -> None:
        self._close_current(sync=True)
        self._ensure_directory()
        files = self.files()
        path = self.directory / f"events-{first_seq:012d}.jsonl"
        if files and files[-1] == path:  # reopening after a restart with nothing new
            files.pop()
        # Keep max_files including the new one.
        for old in files[: max(0, len(files) - (self.max_files - 1))]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._path = path
        self._size = os.fstat(self._fd).st_size
        self._dirty = False
        self._keep_free()

    def _close_current(self, *, sync: bool) -> None:
        fd, self._fd, self._path = self._fd, None, None
        if fd is None:
            return
        if self._dirty and self.fsync == "always":
            # Its lines wait for the next group commit (the owner's thread syncs it);
            # even a file given up on (sync False) holds whole lines still waiting.
            self._dirty = False
            self._unsynced.append(fd)
            return
        # The closing file's tail reaches the disk.
        if sync and self._dirty and self.fsync != "never":
            try:
                os.fsync(fd)
            except OSError as exc:
                self.sync_failed(exc)
        self._dirty = False
        os.close(fd)

    def _ensure_directory(self) -> None:
        """Recreate a deleted journal directory: lock, epoch and state file again."""
        if (self.directory / EPOCH_FILE).exists():
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        try:
            self._lock()
        except JournalInUse as exc:
            raise OSError(errno.EBUSY, str(exc)) from None
        _write_atomic(self.directory / EPOCH_FILE, self.epoch + "\n")
        self._epoch_pending = False
        seq = _record_seq(self._state_record)
        self._open_state()
        self._mark(failing=not self.health.ok, seq=seq)
        log.warning(
            "journal directory %s was gone: recreated (epoch %s)", self.directory, self.epoch
        )

    def tick(self) -> None:
        """Housekeeping, about once a second: free space, a deleted current file."""
        self._keep_free()
        if self._fd is not None and self._path is not None:
            try:
                on_disk = os.stat(self._path)
                current = os.fstat(self._fd)
                gone = (on_disk.st_ino, on_disk.st_dev) != (current.st_ino, current.st_dev)
            except FileNotFoundError:
                gone = True
            except OSError:
                gone = False
            if gone:
                log.warning(
                    "journal file %s was removed: writing goes on in a new file", self._path
                )
                self._close_current(sync=False)

    def _keep_free(self) -> int:
        """Remove the oldest files while the file system has less than keep_free_bytes free.

        Returns the bytes freed.  The file being written (or the newest) is kept.
        """
        if not self.keep_free_bytes:
            return 0
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return 0
        free = st.f_bavail * st.f_frsize
        need = self.keep_free_bytes - free
        if need <= 0:
            return 0
        freed = 0
        files = self.files()
        for path in files[:-1]:
            if path == self._path:
                break
            try:
                size = path.stat().st_blocks * 512
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("journal: cannot remove %s to make space: %s", path, _reason(exc))
                break
            freed += size
            self.health.files_removed_for_space += 1
            log.warning(
                "journal: removed %s (%d bytes): %d bytes free < keep_free_bytes %d",
                path.name,
                size,
                free,
                self.keep_free_bytes,
            )
            if freed >= need:
                break
        return freed

    def close(self) -> None:
        """Flush to disk (unless ``fsync: never``), close the files, release the lock.

        The state record is left as it is: ``failing`` stays ``failing`` (§4.1).
        """
        self._close_current(sync=True)
        if self._unsynced:
            try:
                self.sync()
            except OSError as exc:
                self.sync_failed(exc)
        for name in ("_state_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    # -- reading -----------------------------------------------------------------

    def read_since(self, since: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, line)`` (the line without ``\\n``) for ``seq > since``, oldest first.

        A line that is not a whole JSON object with an integer ``seq`` is skipped and
        counted (``health.skipped_lines``), never yielded.
        """
        files = self.files()
        firsts = [int(_NAME_RE.match(p.name).group(1)) for p in files]  # type: ignore[union-attr]
        start = 0
        for i, first in enumerate(firsts):
            if first <= since + 1:
                start = i
        newest = files[-1] if files else None
        for path in files[start:]:
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                continue
            with fh:
                for line in fh:
                    seq = _line_seq(line) if line.endswith(b"\n") else None
                    if seq is None:
                        # The newest file's unfinished last line may be a write in
                        # progress; anywhere else it is a torn or garbled line.
                        if path != newest or line.endswith(b"\n"):
                            self._bad_line(path)
                        continue
                    if seq > since:
                        yield seq, line[:-1]

    def _bad_line(self, path: Path) -> None:
        self.health.skipped_lines += 1
        name = path.name
        if name not in self._reported_bad and len(self._reported_bad) < MAX_REPORTED_BAD_FILES:
            self._reported_bad.add(name)
            log.warning(
                "journal %s: skipped an unreadable line (a torn write?); replays leave such "
                "lines out (counted in aaeventd_journal_skipped_lines_total)",
                name,
            )


_SEQ_RE = re.compile(rb'"seq":(\d+)')


def _line_seq(line: bytes) -> int | None:
    """The seq of a journal line (ending in ``\\n``), or None if it is not a JSON object.

    The cheap path reads the seq with a regex, for a flat object (its one ``{`` the
    first byte) with one ``"seq":``: a torn line glued to the next has two ``{``, and
    any line that is not so plain is parsed whole.
    """
    if line.startswith(b"{") and line.endswith(b"}\n") and line.count(b"{") == 1:
        match = _SEQ_RE.search(line)
        if match is not None and line.find(b'"seq":', match.end()) < 0:
            return int(match.group(1))
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    return seq if type(seq) is int else None


def fsync_fds(fds: list[int]) -> OSError | None:
    """fsync then close each of ``fds`` (in a worker thread); the first error, if any."""
    error: OSError | None = None
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            error = error or exc
        finally:
            os.close(fd)
    return error


def _record_seq(record: bytes) -> int:
    match = _STATE_RE.fullmatch(record)
    return int(match.group(2)) if match else 0


def _reason(exc: OSError) -> str:
    """``No space left on device`` rather than ``[Errno 28] No space left on device: ...``."""
    return exc.strerror or str(exc)


def _rfind_newline(fh: BinaryIO, end: int) -> int:
    """Offset of the last ``\\n`` before ``end`` in ``fh``, or -1; reads backwards."""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        fh.seek(start)
        idx = fh.read(pos - start).rfind(b"\n")
        if idx >= 0:
            return start + idx
        pos = start
    return -1


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_in_place(path: Path, text: str) -> None:
    """Overwrite a small existing file without new blocks (for a full disk)."""
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + ".tmp").unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        data = text.encode("ascii")
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
