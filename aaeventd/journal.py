"""The event journal: JSON Lines files that outlive the daemon (PROTOCOL §4).

Owns the journal directory: appending batches of broadcast events exactly as
broadcast, rotation at ``max_file_bytes``, retention of ``max_files``, the fsync
policy, the persisted ``epoch``, resuming ``seq`` on start, and cutting a torn last
line left by a crash.  It knows nothing of sockets, clients or the hub.

Files are named ``events-<first seq, 12 digits>.jsonl``; the name of a file is the
seq of its first line, so the files are in seq order by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from aaeventd.errors import StartupError

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
_NAME_RE = re.compile(r"^events-(\d{12})\.jsonl$")
EPOCH_FILE = "epoch"
LOCK_FILE = "lock"
# How much of a file's tail to read when looking for its last line.
_TAIL_CHUNK = 64 * 1024


class JournalInUse(StartupError):
    """Another process holds the journal directory's lock."""


def new_epoch() -> str:
    """A fresh journal identity."""
    return uuid.uuid4().hex[:16]


@dataclass
class JournalState:
    """What opening the journal found."""

    epoch: str
    last_seq: int
    warnings: list[str] = field(default_factory=list)


class Journal:
    """Appends broadcast events to the current file; rotates and prunes.

    Args:
        directory: where the files live (created 0700 when missing).
        max_file_bytes: a file is closed once it would grow past this.
        max_files: how many files are kept, the one being written included.
        fsync: ``always`` (before each batch is broadcast), ``interval`` (the owner
            calls :meth:`sync` about once a second) or ``never``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int,
        max_files: int,
        fsync: FsyncPolicy,
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.fsync = fsync
        self.bytes_written = 0
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        self._lock_fd: int | None = None

    # -- opening -----------------------------------------------------------------

    def open(self) -> JournalState:
        """Lock the directory, read the epoch and resume the last seq.

        Raises:
            JournalInUse: another aaeventd holds this journal (two writers would hand
                out the same seq).
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock()
        state = JournalState(epoch="", last_seq=0)
        epoch_path = self.directory / EPOCH_FILE
        files = self.files()
        try:
            state.epoch = epoch_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            state.epoch = ""
        if not state.epoch or not re.fullmatch(r"[0-9a-zA-Z_-]{1,64}", state.epoch):
            if files:
                self._set_aside(files, "the journal has no valid epoch file", state)
                files = []
            state.epoch = new_epoch()
            _write_atomic(epoch_path, state.epoch + "\n")
        for path in reversed(files):
            try:
                last = self._recover_tail(path, state)
            except (OSError, ValueError) as exc:
                self._set_aside(self.files(), f"cannot read {path.name}: {exc}", state)
                state.epoch = new_epoch()
                _write_atomic(epoch_path, state.epoch + "\n")
                state.last_seq = 0
                break
            if last is not None:
                state.last_seq = last
                break
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

    def append(self, data: bytes | bytearray, first_seq: int) -> None:
        """Write complete lines (each ending in ``\\n``) whose first seq is ``first_seq``.

        The data is handed to the OS before this returns; with ``fsync: always`` it is
        also on disk.
        """
        if self._fd is None or (self._size and self._size + len(data) > self.max_file_bytes):
            self._rotate(first_seq)
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self.bytes_written += len(data)
        if self.fsync == "always":
            os.fsync(self._fd)
        else:
            self._dirty = True

    def sync(self) -> None:
        """fsync the current file if anything was written since the last sync."""
        if self._dirty and self._fd is not None:
            self._dirty = False
            os.fsync(self._fd)

    def dirty_fd(self) -> int | None:
        """A duplicate of the current file's fd if it needs an fsync, else None.

        For syncing in another thread: the caller fsyncs and closes the duplicate, so
        a rotation meanwhile cannot close the fd under it.
        """
        if not self._dirty or self._fd is None:
            return None
        self._dirty = False
        return os.dup(self._fd)

    def _rotate(self, first_seq: int) -> None:
        if self._fd is not None:
            # The closing file's tail reaches the disk; with "always" it already has.
            if self.fsync == "interval" and self._dirty:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        files = self.files()
        path = self.directory / f"events-{first_seq:012d}.jsonl"
        if files and files[-1] == path:  # reopening after a restart with nothing new
            files.pop()
        # Keep max_files including the new one.
        for old in files[: max(0, len(files) - (self.max_files - 1))]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    def close(self) -> None:
        """Flush to disk (unless ``fsync: never``), close the file, release the lock."""
        if self._fd is not None:
            if self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading -----------------------------------------------------------------

    def read_since(self, since: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, line)`` (the line without ``\\n``) for ``seq > since``, oldest first."""
        files = self.files()
        firsts = [int(_NAME_RE.match(p.name).group(1)) for p in files]  # type: ignore[union-attr]
        start = 0
        for i, first in enumerate(firsts):
            if first <= since + 1:
                start = i
        for path in files[start:]:
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                continue
            with fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        return
                    seq = _line_seq(line)
                    if seq is not None and seq > since:
                        yield seq, line[:-1]


_SEQ_RE = re.compile(rb'"seq":(\d+)')


def _line_seq(line: bytes) -> int | None:
    # Sources' objects come first and may contain a "seq" of their own inside a nested
    # value, so parse when the cheap match could be fooled.
    match = _SEQ_RE.search(line)
    if match is None or line.count(b'"seq":') > 1:
        seq = json.loads(line).get("seq")
        return seq if isinstance(seq, int) else None
    return int(match.group(1))


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
