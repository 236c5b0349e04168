"""The replay's journal side: what left the hub's ring is read back from the journal.

:func:`backfill` reads a seq range off the event loop, in chunks of WebSocket frames
(:func:`journal_chunk`, which also runs in the benchmark's reader probe), and
:class:`Holes` announces every seq the journal lacks where it falls, as a
``replay_gap`` (PROTOCOL §2.3, §4.1).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aaeventd.daemon.journal import Journal
from aaeventd.daemon.wsserver import REPLAY_PIECE_BYTES
from aaeventd.protocol.codec import encode_json, ws_text_frame
from aaeventd.protocol.filters import TypeFilter


async def backfill(
    journal: Journal, seqs: tuple[int, int], type_filter: TypeFilter
) -> AsyncGenerator[tuple[bytes, int], None]:
    """Read ``seqs`` from the journal off the event loop, in chunks of frames.

    Every seq of the range the journal lacks is announced where it falls by a
    ``replay_gap`` (§2.3): ``evicted`` before the oldest journal file,
    ``not_journaled`` after it (a write failed, §4.1) or where this run knows one did.
    """
    first, last = seqs
    holes = Holes(first, journal.unjournaled_ranges(first, last), journal.oldest_seq)
    lines = journal.read_since(first - 1)
    while True:
        chunk = await asyncio.to_thread(journal_chunk, lines, last, type_filter, holes)
        if chunk.frames:
            yield b"".join(chunk.frames), len(chunk.frames)
        if chunk.done:
            return


@dataclass
class Chunk:
    """Frames read from the journal; ``done`` once the range is exhausted."""

    frames: list[bytes]
    first: int | None
    done: bool


BACKFILL_CHUNK = 2000


@dataclass
class Holes:
    """A journal backfill's progress through its seq range, to announce what is missing.

    ``expected``: the next seq due; ``known``: this run's unjournaled ranges in the
    range; ``oldest``: the seq the oldest journal file starts at (what lies before it
    was evicted), asked only when there is a hole (it lists the directory).
    """

    expected: int
    known: list[tuple[int, int]]
    oldest: Callable[[], int | None]
    _floor: int | None = None
    _floor_read: bool = False

    def gaps(self, upto: int) -> list[bytes]:
        """``replay_gap`` frames for ``expected..upto``, none of which the journal holds."""
        start, self.expected = self.expected, upto + 1
        spans: list[tuple[str, int, int]] = []
        pos = start
        for a, b in self.known:
            if b < pos or a > upto:
                continue
            if a > pos:
                spans.extend(self._by_floor(pos, a - 1))
            spans.append(("not_journaled", max(a, pos), min(b, upto)))
            pos = min(b, upto) + 1
        if pos <= upto:
            spans.extend(self._by_floor(pos, upto))
        merged: list[tuple[str, int, int]] = []
        for reason, a, b in spans:
            if merged and merged[-1][0] == reason and merged[-1][2] + 1 == a:
                merged[-1] = (reason, merged[-1][1], b)
            else:
                merged.append((reason, a, b))
        return [gap_frame(reason, a, b) for reason, a, b in merged]

    def _by_floor(self, a: int, b: int) -> list[tuple[str, int, int]]:
        if not self._floor_read:
            self._floor, self._floor_read = self.oldest(), True
        floor = self._floor if self._floor is not None else b + 1
        spans = []
        if a < floor:
            spans.append(("evicted", a, min(b, floor - 1)))
        if b >= floor:
            spans.append(("not_journaled", max(a, floor), b))
        return spans


def journal_chunk(
    lines: Iterator[tuple[int, bytes]],
    last: int,
    type_filter: TypeFilter,
    holes: Holes | None = None,
) -> Chunk:
    """Up to BACKFILL_CHUNK journal lines with seq <= last, as frames (runs in a thread).

    A line is parsed only when the client filters by type; the seq comes from the
    journal's own cheap lookup.  A chunk stops at about REPLAY_PIECE_BYTES of frames:
    it is what a client that does not read holds (§2.3).  With ``holes``, the seqs the
    journal lacks come as ``replay_gap`` frames where they fall, and a line whose seq
    was already passed is never sent twice.
    """
    frames: list[bytes] = []
    size = 0
    first: int | None = None
    everything = type_filter.matches_all
    for _ in range(BACKFILL_CHUNK):
        item = next(lines, None)
        if item is None or item[0] > last:
            if holes is not None and holes.expected <= last:
                frames.extend(holes.gaps(last))
            return Chunk(frames, first, True)
        seq, line = item
        if holes is not None:
            if seq < holes.expected:
                continue
            if seq > holes.expected:
                frames.extend(holes.gaps(seq - 1))
            holes.expected = seq + 1
        if first is None:
            first = seq
        if everything or type_filter.matches(str(json.loads(line).get("type"))):
            frames.append(ws_text_frame(bytes(line)))
            size += len(frames[-1])
            if size >= REPLAY_PIECE_BYTES:
                break
    return Chunk(frames, first, False)


def gap_frame(reason: str, first: int | None, last: int | None) -> bytes:
    """A ``replay_gap`` control frame for the seqs ``first..last`` (None: unknown)."""
    return ws_text_frame(encode_json(_gap(reason, first, last)))


def _gap(reason: str, first: int | None, last: int | None) -> dict[str, Any]:
    return {"type": "replay_gap", "reason": reason, "from": first, "to": last}
