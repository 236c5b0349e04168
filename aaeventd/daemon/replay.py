"""The replay's journal side: what left the hub's ring is read back from the journal.

:func:`backfill` reads a seq range off the event loop, in chunks of WebSocket frames
(:func:`journal_chunk`, which also runs in the benchmark's reader probe), and
:class:`Holes` announces every seq the journal lacks where it falls, as a
``replay_gap`` (PROTOCOL §2.3, §4.1).  At start, :func:`skill_history` reads back the
events the hub rebuilds its running skills from (§2.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydantic_core import from_json

from aaeventd.daemon.hub import SKILL_IDLE_SECONDS, SNAPSHOT_CUTS, cut_text, parse_timestamp
from aaeventd.daemon.journal import Journal
from aaeventd.daemon.wsserver import REPLAY_PIECE_BYTES
from aaeventd.protocol.codec import encode_json, rfc3339_utc, ws_text_frame
from aaeventd.protocol.filters import TypeFilter
from aaeventd.protocol.skills import SKILL_END_TYPES, SKILL_KEYS

log = logging.getLogger("aaeventd.journal")


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
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        chunk = await asyncio.to_thread(journal_chunk, lines, last, type_filter, holes)
        took = loop.time() - started
        if chunk.frames:
            yield b"".join(chunk.frames), len(chunk.frames)
        if chunk.done:
            return
        # Leave the CPU to the live traffic as long as the reader had it (READER_DUTY).
        await asyncio.sleep(took * (1 - READER_DUTY) / READER_DUTY)


# The share of the time a journal reader may run: after each chunk it rests as long as
# the chunk took.  Unpaced, a 200,000-event replay takes a core of a 2-core box for
# 2.3 s and, with the client reading it, starves everything else: the live events to
# the other clients then waited up to 18 ms (p99; 0.7 ms without the replay).  At
# one half: 2.2 to 4.4 ms, for a replay twice as long (docs/performance.md).
READER_DUTY = 0.5


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


# What the running-skill rules read of an event (hub.Hub._track): the rest is not kept.
_SKILL_FIELDS = ("type", "timestamp", *SKILL_KEYS, "step_index", "step_name", "total_steps")
# Events that change which skills run (and so which one a name matches).
_STRUCTURAL = SKILL_END_TYPES | {"skill_started"}
# The journal is read backwards in blocks of this many bytes.
_BACK_BLOCK = 1 << 20
# At most this many events, of at most this many bytes of lines, are kept for the
# rebuild: past either, the older ones are not read (logged).  Only starts and ends of
# skills add up: other events are kept once per skill between two of those.
MAX_SKILL_HISTORY = 50_000
MAX_SKILL_HISTORY_BYTES = 32 << 20

Refs = tuple[tuple[str, str], ...]
# A timestamp the daemon gave (appended after the seq it set): arrival order, unlike a
# source's own, so one over an hour old means every line before it is too.
_DAEMON_STAMPED = re.compile(rb',"seq":\d+,"timestamp":"([^"\\]*)"}$')
# The string fields a flat line with no escapes names its type and skill with (_peek).
# JSON allows whitespace around the colon, and the source's spacing is kept.
_FLAT_FIELDS = re.compile(rb'"(type|skill_id|session_id|skill_name)"\s*:\s*"([^"]*)"')
_TOTAL_STEPS = re.compile(rb'"total_steps"\s*:')


def skill_history(journal: Journal, now_wall: float) -> list[dict[str, Any]]:
    """The journaled events that name a skill, oldest first, for ``Hub.rebuild_skills``.

    Read backwards from the newest line, and only as far as the rebuild needs: past
    the first event over an hour old by a timestamp the daemon gave (those are in
    arrival order; a source's own may not be), and back to a ``skill_started`` for
    every skill named since then.  A line is parsed only if its bytes name a skill
    field; only the fields the rules read are kept, and of the events that neither
    start nor end a skill only those the result depends on (between two that do,
    the newest per name, per ``step_started`` and per ``total_steps``).  A file that
    cannot be read ends the reading (logged).
    """
    reader = _SkillReader(now_wall)
    for path in reversed(journal.files()):
        try:
            with path.open("rb") as fh:
                for line in _lines_backwards(fh):
                    if reader.feed(line):
                        return reader.history()
        except OSError as exc:  # the rebuild is a convenience: what was read is used
            if not isinstance(exc, FileNotFoundError):
                log.warning("cannot read %s to rebuild the running skills: %s", path.name, exc)
            break
    return reader.history()


class _SkillReader:
    """:func:`skill_history`'s state: fed journal lines newest first."""

    def __init__(self, now_wall: float) -> None:
        self.horizon = now_wall - SKILL_IDLE_SECONDS
        self.since = rfc3339_utc(self.horizon)
        self.newest_first: list[dict[str, Any]] = []
        self.started: set[tuple[str, str]] = set()
        self.unresolved: set[Refs] = set()  # names used since the horizon, not started
        self.passed = False
        # What is kept since the last (newer) start or end: (what, names).
        self.segment: set[tuple[str, Refs]] = set()
        self.kept_bytes = 0  # of the lines kept

    def history(self) -> list[dict[str, Any]]:
        return self.newest_first[::-1]

    def feed(self, line: bytes) -> bool:
        """Take the next older line; True once nothing older can change the result."""
        # A line is the source's as it wrote it (docs/protocol.md §1.1): a key spelled
        # plainly, or with a \u escape somewhere.  Neither "skill_…" nor "session_id"
        # nor an escape: no skill named.  A torn line is skipped.
        if b'"skill_' not in line and b'"session_id"' not in line and b"\\u" not in line:
            return False
        obj: dict[str, Any] | None = None
        peeked = _peek(line)
        if peeked is None:
            obj = _parse(line)
            if obj is None:
                return False
            kind = obj["type"]
            refs: Refs = tuple(
                [(k, v) for k in SKILL_KEYS if isinstance(v := obj.get(k), str) and v]
            )
            has_total = "total_steps" in obj
        else:
            kind, refs = peeked
            has_total = _TOTAL_STEPS.search(line) is not None
        if not refs:
            return False
        # The daemon's stamp is the line's last 60-odd bytes: only the tail is searched.
        tail = max(0, len(line) - 100)
        if not self.passed and (stamp := _DAEMON_STAMPED.search(line, tail)) is not None:
            self.passed = _before(stamp.group(1).decode(), self.horizon, self.since)
        if kind == "skill_started":
            self.started.update(refs)
            if self.unresolved:
                self.unresolved = {u for u in self.unresolved if self.started.isdisjoint(u)}
        elif not self.passed and self.started.isdisjoint(refs):
            self.unresolved.add(refs)
        if self._needed(kind, refs, has_total):
            if obj is None:
                obj = _parse(line)
                if obj is None:  # pragma: no cover - _peek read it as a flat JSON object
                    return False
            event = {k: obj[k] for k in _SKILL_FIELDS if k in obj}
            if isinstance(name := event.get("step_name"), str):
                event["step_name"] = cut_text(name, SNAPSHOT_CUTS[0])  # as the hub keeps it
            self.newest_first.append(event)
            self.kept_bytes += len(line)
            if (
                len(self.newest_first) >= MAX_SKILL_HISTORY
                or self.kept_bytes >= MAX_SKILL_HISTORY_BYTES
            ):
                log.warning(
                    "rebuilding the running skills from the last %d events that matter "
                    "(%d bytes); older ones not read",
                    len(self.newest_first),
                    self.kept_bytes,
                )
                return True
        return self.passed and not self.unresolved

    def _needed(self, kind: str, refs: Refs, has_total: bool) -> bool:
        """Whether the rebuild depends on this event, given the newer ones kept."""
        if kind in _STRUCTURAL:
            self.segment.clear()
            return True
        # Between two starts or ends, events with the same names find the same skill:
        # only the newest refreshes it last, sets its step last, its total_steps last.
        marks = [("any", refs)]
        if kind == "step_started":
            marks.append(("step", refs))
        if has_total:
            marks.append(("total", refs))
        needed = False
        for mark in marks:
            if mark not in self.segment:
                self.segment.add(mark)
                needed = True
        return needed


def _peek(line: bytes) -> tuple[str, Refs] | None:
    """The type and skill names of a plain line without parsing it, else None.

    A plain line is one flat object with no backslash: no string in it holds a quote,
    so ``"key":"`` appears only as that key (a key the source wrote twice: the last,
    as a JSON parser reads it).
    """
    if b"\\" in line or line.count(b"{") != 1:
        return None
    try:
        fields = {k.decode(): v.decode() for k, v in _FLAT_FIELDS.findall(line) if v}
    except UnicodeDecodeError:
        return None
    kind = fields.pop("type", None)
    if kind is None:
        return None
    return kind, tuple([(k, fields[k]) for k in SKILL_KEYS if k in fields])


def _parse(line: bytes) -> dict[str, Any] | None:
    """A journal line as an object with a string ``type``, else None (a torn line)."""
    try:
        obj = from_json(line)  # ~3 times json.loads' speed
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    return obj


def _before(timestamp: Any, horizon: float, since: str) -> bool:
    """Whether ``timestamp`` is before ``horizon`` (``since`` is it as the daemon writes
    timestamps: those compare as strings, the rest are parsed)."""
    if isinstance(timestamp, str) and len(timestamp) == len(since) and timestamp[-1] == "Z":
        return timestamp < since
    stamped_at = parse_timestamp(timestamp)
    return stamped_at is not None and stamped_at < horizon


def _lines_backwards(fh: BinaryIO) -> Iterator[bytes]:
    """The lines of ``fh`` (without ``\\n``), last first, read in blocks from the end."""
    pos = fh.seek(0, os.SEEK_END)
    rest = b""
    while pos > 0:
        start = max(0, pos - _BACK_BLOCK)
        fh.seek(start)
        lines = (fh.read(pos - start) + rest).split(b"\n")
        pos = start
        rest = lines[0]  # the start of a line that began in an earlier block
        for line in reversed(lines[1:]):
            if line:
                yield line
    if rest:
        yield rest
