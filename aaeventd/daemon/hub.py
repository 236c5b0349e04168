"""The daemon's state, with no I/O: seq, replay ring, running skills, confirmations.

Every method takes the current time as arguments (``now``: monotonic seconds, for
deadlines; ``wall``: Unix time, for timestamps) and returns *effect records*
(:class:`Broadcast`, :class:`ToSource`) that the composition root
(:mod:`aaeventd.daemon.app`) executes: journal, log line, fan-out, replies.  Nothing here
touches a socket, a file, a clock or asyncio, so every rule is testable in
microseconds.

A peer's mistake (a duplicate confirmation id, an answer to an unknown
confirmation) raises :class:`~aaeventd.protocol.errors.ProtocolError`; the caller
turns it into an error reply.

What sources send cannot make this state unbounded: pending confirmations are
counted against §3.7's bounds, the ``connected`` frame is built within 1 MiB (§2.1,
:meth:`Hub.connected_payload`) and event types label metrics only up to a bound (§6,
:meth:`HubStats.count_type`).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aaeventd import SERVER_NAME, __version__
from aaeventd.protocol.codec import encode_json, rfc3339_utc, splice_stamps, ws_text_frame
from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import KNOWN_TYPES, ConfirmationResponse, normalize_confirmation
from aaeventd.protocol.skills import (
    CUT_MARK,
    SKILL_END_TYPES,
    STEP_TYPES,
    event_refs,
    find_skill,
    name_of,
    shown_name,
    skill_key,
)

# Running skills (PROTOCOL §2.1): bounded by count and by idleness.
MAX_RUNNING_SKILLS = 100
SKILL_IDLE_SECONDS = 3600.0


# The connected frame (§2.1) is at most this many bytes of JSON, whatever sources sent.
CONNECTED_MAX_BYTES = 1 << 20
# Text a source chose, copied into a snapshot entry, is cut to the first of these
# lengths (in characters) for which the whole frame fits: 4096 keeps every
# confirmation text whole (§3.7 bounds them so) and bounds skill names, which nothing
# else bounds.  With the default confirmations.max_pending the last one always fits,
# even when every character is escaped to six bytes (tests/test_hub.py checks it).
SNAPSHOT_CUTS = (4096, 2048, 1024, 512, 256, 128, 64, 32, 16)
# The snapshot fields whose text may be cut.  `id` and `options` never are: a client
# answers with them; §3.7 and the id's own bound keep them small.
_SKILL_TEXT = ("skill_id", "skill_name", "session_id", "current_step_name")
_CONFIRMATION_TEXT = frozenset(
    {"skill_id", "skill_name", "step_name", "prompt", "message", "claude_suggestion"}
)

# /metrics labels event types (§6): these by name, at most MAX_OTHER_TYPE_LABELS
# others by name (first come), the rest (and a type literally named "other") as "other".
KNOWN_TYPE_LABELS = KNOWN_TYPES | {"confirmation_answered", "confirmation_expired"}
MAX_OTHER_TYPE_LABELS = 100
OTHER_TYPE_LABEL = "other"

# Fields copied from confirmation_required into the connected snapshot.
_CONFIRMATION_INFO = (
    "skill_id",
    "skill_name",
    "step_index",
    "step_name",
    "prompt",
    "message",
    "options",
    "claude_suggestion",
    "timeout_seconds",
    "created_at",
)

SourceId = int
"""The app's handle for a source connection (the hub never sees the connection)."""


@dataclass(slots=True)
class Stamped:
    """An event that has its ``seq``: encoded once, framed once, sent as-is to all.

    ``frame`` is a complete unmasked WebSocket text frame; ``payload`` is the JSON
    text inside it (a view, not a copy), which is also the journal line.
    """

    seq: int
    type: str
    event: dict[str, Any]
    frame: bytes
    offset: int

    @property
    def payload(self) -> memoryview:
        return memoryview(self.frame)[self.offset :]

    @classmethod
    def build(cls, seq: int, event_type: str, event: dict[str, Any]) -> Stamped:
        payload = encode_json(event)
        frame = ws_text_frame(payload)
        return cls(seq, event_type, event, frame, len(frame) - len(payload))


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Journal, log and send this event to every client whose filter matches.

    When ``ack_to`` is set, the source gets ``{"type":"ack","seq":..,"delivered":..}``
    plus ``ack_extra`` once the fan-out has counted the deliveries.
    """

    stamped: Stamped
    source: SourceId | None = None
    ack_to: SourceId | None = None
    ack_extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToSource:
    """Write this object as one NDJSON line to that source (if still connected)."""

    source: SourceId
    message: dict[str, Any]


Effect = Broadcast | ToSource


def parse_timestamp(value: Any) -> float | None:
    """The Unix time of an event's ``timestamp`` (RFC 3339; no offset: UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def cut_text(value: Any, limit: int) -> Any:
    """``value`` cut to ``limit`` characters, the last one :data:`CUT_MARK`, if longer.

    Anything but a string is returned as is.
    """
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + CUT_MARK
    return value


@dataclass(slots=True)
class _Encodings:
    """One snapshot entry's JSON per cut length: every size kept, the latest bytes.

    The frame is assembled from these, so a ``connected`` costs a join, not an encode
    of everything; only an entry that changed (or a cut length not tried before) is
    encoded again.
    """

    sizes: dict[int, int] = field(default_factory=dict)
    cut: int = 0
    data: bytes = b""

    def get(self, cut: int, build: Callable[[int], dict[str, Any]]) -> bytes:
        if self.cut != cut:
            self.data = encode_json(build(cut))
            self.cut = cut
            self.sizes[cut] = len(self.data)
        return self.data

    def size(self, cut: int, build: Callable[[int], dict[str, Any]]) -> int:
        size = self.sizes.get(cut)
        return size if size is not None else len(self.get(cut, build))

    def clear(self) -> None:
        self.sizes.clear()
        self.cut = 0
        self.data = b""


@dataclass(slots=True)
class RunningSkill:
    """One entry of ``running_skills`` in the ``connected`` frame.

    Call :meth:`changed` after changing a field the snapshot shows.
    """

    key: str
    skill_id: str | None
    session_id: str | None
    skill_name: str | None
    total_steps: Any
    current_step: Any
    current_step_name: Any
    started_at: str
    last_event: float
    status: str = "running"
    encodings: _Encodings = field(default_factory=_Encodings, repr=False, compare=False)

    def snapshot(self, cut: int | None = None) -> dict[str, Any]:
        """The entry, its source-chosen text cut to ``cut`` characters (None: whole)."""
        entry = {
            "skill_id": shown_name(self.skill_id),
            "skill_name": shown_name(self.skill_name),
            "session_id": shown_name(self.session_id),
            "total_steps": self.total_steps,
            "current_step": self.current_step,
            "current_step_name": self.current_step_name,
            "status": self.status,
            "started_at": self.started_at,
        }
        if cut is not None:
            for name in _SKILL_TEXT:
                entry[name] = cut_text(entry[name], cut)
        return entry

    def changed(self) -> None:
        self.encodings.clear()


@dataclass(slots=True)
class Pending:
    """A confirmation waiting for its first valid answer."""

    id: str
    source: SourceId | None
    options: tuple[str, ...]
    default: str | None
    timeout: float
    deadline: float
    info: dict[str, Any]
    paused_remaining: float | None = None
    pause_ends: float | None = None
    encodings: _Encodings = field(default_factory=_Encodings, repr=False, compare=False)

    def static_entry(self, cut: int | None = None) -> dict[str, Any]:
        """The snapshot entry but for its countdown, text cut to ``cut`` (None: whole)."""
        entry = {"id": self.id, **self.info}
        if cut is not None:
            for name in _CONFIRMATION_TEXT:
                entry[name] = cut_text(entry[name], cut)
        return entry

    def countdown(self, now: float) -> bytes:
        """The end of its snapshot entry: the fields that change with time."""
        paused = self.paused_remaining is not None
        return (
            b',"remaining_seconds":'
            + encode_json(round(self.remaining(now), 3))
            + (b',"paused":true}' if paused else b',"paused":false}')
        )

    def remaining(self, now: float) -> float:
        if self.paused_remaining is not None:
            return self.paused_remaining
        return max(0.0, self.deadline - now)

    def next_deadline(self) -> float:
        if self.pause_ends is not None:
            return self.pause_ends
        return self.deadline


@dataclass(frozen=True, slots=True)
class Kept:
    """What the replay ring keeps of an event: its frame, not the parsed dict (whose
    strings would double the memory the ring's byte bound counts)."""

    seq: int
    type: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Replay:
    """What a client that connected with ``since`` gets before live events."""

    gap: tuple[int, int] | None
    events: list[Kept]


@dataclass(frozen=True, slots=True)
class RingPiece:
    """One piece of a replay read from the ring (:meth:`Hub.replay_piece`).

    ``gap``: a range no longer in the ring (nothing else then); ``frames``: the
    matching frames; ``last``: the last seq this piece covers (the next piece starts
    after it).
    """

    gap: tuple[int, int] | None
    frames: list[bytes]
    last: int


@dataclass(slots=True)
class HubLimits:
    """The hub's live-reloadable settings (from ``events`` and ``confirmations``)."""

    replay_buffer: int = 10_000
    replay_buffer_bytes: int = 32 << 20
    default_timeout_seconds: float = 60.0
    max_pause_seconds: float = 600.0
    max_pending: int = 100
    max_pending_per_source: int = 20


@dataclass(slots=True)
class HubStats:
    events_out: int = 0
    confirmations_answered: int = 0
    confirmations_expired: int = 0
    last_seq_at_start: int = 0
    # Events out by type label: bounded (see count_type).
    by_type: dict[str, int] = field(default_factory=dict)
    other_type_labels: int = 0
    # Snapshot entries left out of a connected frame that would not fit even with
    # text cut to the shortest length (only with a raised confirmations.max_pending).
    snapshot_entries_left_out: int = 0

    def count_type(self, event_type: str) -> None:
        """Count one event under its label: one dict lookup for a type seen before."""
        by_type = self.by_type
        count = by_type.get(event_type)
        if count is None:
            event_type = self._new_label(event_type)
            count = by_type.get(event_type, 0)
        by_type[event_type] = count + 1

    def _new_label(self, event_type: str) -> str:
        if event_type in KNOWN_TYPE_LABELS:
            return event_type
        if event_type != OTHER_TYPE_LABEL and self.other_type_labels < MAX_OTHER_TYPE_LABELS:
            self.other_type_labels += 1
            return event_type
        return OTHER_TYPE_LABEL


class Hub:
    """Sequence numbers, replay ring, running skills and the confirmation machine."""

    def __init__(self, *, epoch: str, last_seq: int = 0, limits: HubLimits | None = None) -> None:
        self.epoch = epoch
        self.last_seq = last_seq
        # Set by the app while stamped batches wait for their fsync (group commit,
        # PROTOCOL §4): the last seq released to clients; None when nothing is held.
        self.held_after: int | None = None
        self.limits = limits or HubLimits()
        # Bounded by count and by frame bytes (§2.3): see _trim_ring.
        self._ring: deque[Kept] = deque()
        self._ring_bytes = 0
        self._skills: OrderedDict[str, RunningSkill] = OrderedDict()
        self._pending: dict[str, Pending] = {}
        # Pending confirmations per source (§3.7), so the bound costs no scan.
        self._pending_by_source: dict[SourceId, int] = {}
        self.stats = HubStats(last_seq_at_start=last_seq)

    # -- settings ------------------------------------------------------------------

    def set_limits(self, limits: HubLimits) -> None:
        """Apply reloaded settings; a smaller ring keeps its newest events."""
        self.limits = limits
        self._trim_ring()

    def _trim_ring(self) -> None:
        """Evict the oldest events until the ring is within both of its bounds."""
        ring = self._ring
        max_events = self.limits.replay_buffer
        max_bytes = self.limits.replay_buffer_bytes
        while ring and (len(ring) > max_events or self._ring_bytes > max_bytes):
            self._ring_bytes -= len(ring.popleft().frame)

    # -- events ----------------------------------------------------------------------

    def stamp(
        self,
        event: dict[str, Any],
        event_type: str,
        wall: float,
        now: float,
        raw: bytes | None = None,
    ) -> Stamped:
        """Give ``event`` the next seq (and a timestamp when it has none); record it.

        The dict is updated in place: ``seq`` is overwritten where the source put it,
        otherwise appended, and ``timestamp`` is appended only when absent.  ``raw``,
        the source's line ``event`` was parsed from, is then the frame's payload with
        the two fields spliced in (:func:`~aaeventd.protocol.codec.splice_stamps`),
        unless the source sent a ``seq`` of its own (overwritten in place: encoded).
        """
        seq = self.last_seq + 1
        spliced = raw is not None and "seq" not in event
        event["seq"] = seq
        timestamp = None
        if "timestamp" not in event:
            event["timestamp"] = timestamp = rfc3339_utc(wall)
        if spliced:
            assert raw is not None
            frame, offset = splice_stamps(raw, seq, timestamp)
            stamped = Stamped(seq, event_type, event, frame, offset)
        else:
            stamped = Stamped.build(seq, event_type, event)
        # Committed only once encoded: a failure above never leaves a hole in the seqs.
        self.last_seq = seq
        self._ring.append(Kept(seq, event_type, stamped.frame))
        self._ring_bytes += len(stamped.frame)
        self._trim_ring()
        self.stats.events_out += 1
        self.stats.count_type(event_type)
        self._track(event_type, event, wall, now)
        return stamped

    def accept(
        self,
        event: dict[str, Any],
        event_type: str,
        *,
        source: SourceId | None,
        wants_ack: bool,
        wall: float,
        now: float,
        raw: bytes | None = None,
    ) -> list[Effect]:
        """Take a validated event from a source and return what to do with it.

        ``raw`` is the line ``event`` was parsed from, if the caller has it: the
        broadcast is then that line with the stamps spliced in (:meth:`stamp`).

        Raises:
            ProtocolError: ``duplicate_confirmation`` for an id still pending,
                ``too_many_confirmations`` past a bound of §3.7 (nothing stamped).
        """
        if event_type == "confirmation_required":
            return [self._open_confirmation(event, source=source, wall=wall, now=now)]
        stamped = self.stamp(event, event_type, wall, now, raw)
        return [Broadcast(stamped, source=source, ack_to=source if wants_ack else None)]

    @property
    def released_seq(self) -> int:
        """The last seq clients may see: ``last_seq`` but for batches held for their fsync.

        ``connected.seq`` and every replay stop here, so that what a client sees never
        runs ahead of the disk; the held events reach clients live once released.
        """
        held = self.held_after
        return self.last_seq if held is None else held

    def replay_since(self, since: int) -> Replay:
        """Events ``since < seq <= released_seq`` still in the ring, and the range that is not."""
        upto = self.released_seq
        if since >= upto:
            return Replay(None, [])
        ring = self._ring
        first = ring[0].seq if ring else self.last_seq + 1
        if since + 1 >= first:
            start = since + 1 - first
            return Replay(None, [ring[i] for i in range(start, start + upto - since)])
        return Replay((since + 1, first - 1), [k for k in ring if k.seq <= upto])

    def replay_piece(
        self,
        after: int,
        upto: int,
        accept: Callable[[str], bool] | None,
        *,
        max_bytes: int,
        max_scan: int,
    ) -> RingPiece:
        """The next piece of a replay of ``after < seq <= upto`` from the ring.

        A client's replay is read from the ring a piece at a time, at the pace the
        client reads, so it pins no frames while it waits (the ring may move on in
        the meantime: what left it comes back as ``gap``, to be read from the journal).
        ``accept`` filters by type (``None``: every event).  A piece holds at most
        ``max_scan`` events looked at and about ``max_bytes`` of frames (at least one).
        """
        if after >= upto:
            return RingPiece(None, [], upto)
        ring = self._ring
        first = ring[0].seq if ring else self.last_seq + 1
        if after + 1 < first:
            end = min(first - 1, upto)
            return RingPiece((after + 1, end), [], end)
        frames: list[bytes] = []
        size = 0
        last = after
        # Seqs in the ring are consecutive, so ``after`` gives the index directly.
        for kept in itertools.islice(ring, after + 1 - first, after + 1 - first + max_scan):
            if kept.seq > upto or (frames and size >= max_bytes):
                break
            last = kept.seq
            if accept is None or accept(kept.type):
                frames.append(kept.frame)
                size += len(kept.frame)
        return RingPiece(None, frames, last)

    @property
    def oldest_in_ring(self) -> int | None:
        return self._ring[0].seq if self._ring else None

    @property
    def ring_bytes(self) -> int:
        """The bytes of frames the replay ring holds."""
        return self._ring_bytes

    # -- running skills (§2.1) -------------------------------------------------------

    def _track(self, event_type: str, event: dict[str, Any], wall: float, now: float) -> None:
        if event_type == "skill_started":
            self._skill_started(event, wall, now)
            return
        if not self._skills:  # nothing runs that this event could name
            return
        skill = self._find_skill(event_refs(event))
        if skill is None:
            return
        if event_type not in STEP_TYPES and event_type not in SKILL_END_TYPES:
            skill.last_event = now  # a heal or confirmation naming the skill: still alive
            return
        if event_type in SKILL_END_TYPES:
            del self._skills[skill.key]
            return
        skill.last_event = now
        if event_type == "step_started":
            skill.current_step = event.get("step_index")
            # Shown only, never matched: keep no more than a snapshot can show.
            skill.current_step_name = cut_text(event.get("step_name"), SNAPSHOT_CUTS[0])
            skill.changed()
        if "total_steps" in event:
            skill.total_steps = event["total_steps"]
            skill.changed()

    def _skill_started(self, event: dict[str, Any], wall: float, now: float) -> None:
        # Kept as refs: a name as long as a line costs no more than NAME_KEEP_CHARS here.
        refs = event_refs(event)
        key = skill_key(refs)
        if key is None:  # pragma: no cover - validation requires skill_name
            return
        self._skills.pop(key, None)
        self._skills[key] = RunningSkill(
            key=key,
            skill_id=name_of(refs.get("skill_id")),
            session_id=name_of(refs.get("session_id")),
            skill_name=name_of(refs.get("skill_name")),
            total_steps=event.get("total_steps"),
            current_step=None,
            current_step_name=None,
            started_at=rfc3339_utc(wall),
            last_event=now,
        )
        while len(self._skills) > MAX_RUNNING_SKILLS:
            self._skills.popitem(last=False)

    def _find_skill(self, event: Mapping[str, Any]) -> RunningSkill | None:
        if not self._skills:
            return None
        return find_skill(self._skills.values(), event)

    def running_skills(self, now: float) -> list[dict[str, Any]]:
        """The snapshot list (text whole), after dropping skills idle for an hour."""
        self._drop_idle_skills(now)
        return [s.snapshot() for s in self._skills.values()]

    def _drop_idle_skills(self, now: float) -> None:
        stale = [k for k, s in self._skills.items() if now - s.last_event > SKILL_IDLE_SECONDS]
        for key in stale:
            del self._skills[key]

    def rebuild_skills(self, events: Iterable[dict[str, Any]], now_wall: float, now: float) -> int:
        """Rebuild the running skills from journaled events, oldest first (§2.1, at start).

        The live rules (:meth:`_track`) applied to each event as though it arrived at
        its ``timestamp`` (one that cannot be read takes the previous event's, the
        first such ``now_wall``), then the skills idle for an hour at ``now_wall``
        dropped.  ``now`` is the monotonic clock that ``now_wall`` corresponds to: the
        rebuilt skills go on ageing with the live ones.  Returns how many are running.
        """
        wall = now_wall
        for event in events:
            event_type = event.get("type")
            if not isinstance(event_type, str):
                continue
            stamped_at = parse_timestamp(event.get("timestamp"))
            if stamped_at is not None:
                wall = stamped_at
            self._track(event_type, event, wall, now - (now_wall - wall))
        self._drop_idle_skills(now)
        return len(self._skills)

    # -- confirmations (§3) ----------------------------------------------------------

    def _open_confirmation(
        self, event: dict[str, Any], *, source: SourceId | None, wall: float, now: float
    ) -> Broadcast:
        cid = event.get("id")
        if cid is None:
            cid = str(uuid.uuid4())
        elif cid in self._pending:
            raise ProtocolError(
                ErrorCode.DUPLICATE_CONFIRMATION, f"confirmation {cid!r} is still pending"
            )
        self._check_room(source)
        normalized = normalize_confirmation(
            event, default_timeout_seconds=self.limits.default_timeout_seconds
        )
        normalized["id"] = cid
        normalized["created_at"] = rfc3339_utc(wall)
        timeout = float(normalized["timeout_seconds"])
        stamped = self.stamp(normalized, "confirmation_required", wall, now)
        self._pending[cid] = Pending(
            id=cid,
            source=source,
            options=tuple(normalized["options"]),
            default=normalized.get("default"),
            timeout=timeout,
            deadline=now + timeout,
            # No snapshot shows more of a text than SNAPSHOT_CUTS[0] characters, so
            # that is all a pending confirmation keeps (the event had it whole).
            info={
                k: cut_text(normalized.get(k), SNAPSHOT_CUTS[0])
                if k in _CONFIRMATION_TEXT
                else normalized.get(k)
                for k in _CONFIRMATION_INFO
            },
        )
        if source is not None:
            self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
        return Broadcast(stamped, source=source, ack_to=source, ack_extra={"id": cid})

    def _check_room(self, source: SourceId | None) -> None:
        """Refuse one more confirmation past either bound of §3.7.

        A bound lowered by a reload leaves those already pending alone.
        """
        limits = self.limits
        if len(self._pending) >= limits.max_pending:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONFIRMATIONS,
                f"{len(self._pending)} confirmations are pending "
                f"(confirmations.max_pending={limits.max_pending}); not broadcast",
            )
        mine = self._pending_by_source.get(source, 0) if source is not None else 0
        if mine >= limits.max_pending_per_source:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONFIRMATIONS,
                f"{mine} confirmations of this source are pending "
                f"(confirmations.max_pending_per_source={limits.max_pending_per_source}); "
                "not broadcast",
            )

    def _forget(self, pending: Pending) -> None:
        del self._pending[pending.id]
        source = pending.source
        if source is not None:
            left = self._pending_by_source[source] - 1
            if left:
                self._pending_by_source[source] = left
            else:
                del self._pending_by_source[source]

    def answer(
        self,
        msg: ConfirmationResponse,
        *,
        client: str,
        user_agent: str | None,
        wall: float,
        now: float,
    ) -> list[Effect]:
        """Apply a client's answer: the first valid one wins.

        Raises:
            ProtocolError: ``unknown_confirmation`` (not pending) or
                ``invalid_response`` (not one of its options).
        """
        pending = self._pending.get(msg.id)
        if pending is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_CONFIRMATION, f"no pending confirmation with id {msg.id!r}"
            )
        if msg.response not in pending.options:
            raise ProtocolError(
                ErrorCode.INVALID_RESPONSE,
                f"response {msg.response!r} is not one of {list(pending.options)}",
            )
        self._forget(pending)
        self.stats.confirmations_answered += 1
        effects: list[Effect] = []
        if pending.source is not None:
            effects.append(
                ToSource(
                    pending.source,
                    {
                        "type": "confirmation_response",
                        "id": msg.id,
                        "response": msg.response,
                        "remember": msg.remember,
                    },
                )
            )
        answered = {
            "type": "confirmation_answered",
            "id": msg.id,
            "response": msg.response,
            "remember": msg.remember,
            "answered_by": {"client": client, "user_agent": user_agent},
        }
        effects.append(Broadcast(self.stamp(answered, "confirmation_answered", wall, now)))
        return effects

    def pause(self, cid: str, now: float) -> None:
        """Stop the countdown (a no-op when already paused)."""
        pending = self._require_pending(cid)
        if pending.paused_remaining is None:
            pending.paused_remaining = max(0.0, pending.deadline - now)
            pending.pause_ends = now + self.limits.max_pause_seconds

    def resume(self, cid: str, now: float) -> None:
        """Restart the countdown (a no-op when running)."""
        pending = self._require_pending(cid)
        if pending.paused_remaining is not None:
            pending.deadline = now + pending.paused_remaining
            pending.paused_remaining = None
            pending.pause_ends = None

    def _require_pending(self, cid: str) -> Pending:
        pending = self._pending.get(cid)
        if pending is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_CONFIRMATION, f"no pending confirmation with id {cid!r}"
            )
        return pending

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`expire_due` next has work, if any."""
        return min((p.next_deadline() for p in self._pending.values()), default=None)

    def expire_due(self, wall: float, now: float) -> list[Effect]:
        """End pauses that ran too long and expire confirmations past their deadline."""
        effects: list[Effect] = []
        for pending in list(self._pending.values()):
            if pending.pause_ends is not None and now >= pending.pause_ends:
                assert pending.paused_remaining is not None
                pending.deadline = pending.pause_ends + pending.paused_remaining
                pending.paused_remaining = None
                pending.pause_ends = None
            if pending.paused_remaining is None and now >= pending.deadline:
                effects.extend(self._expire(pending, "timeout", wall, now))
        return effects

    def source_gone(self, source: SourceId, wall: float, now: float) -> list[Effect]:
        """Expire the confirmations of a source that disconnected (nobody to tell)."""
        effects: list[Effect] = []
        self._pending_by_source.pop(source, None)
        for pending in [p for p in self._pending.values() if p.source == source]:
            pending.source = None
            effects.extend(self._expire(pending, "source_gone", wall, now))
        return effects

    def shutdown(self, wall: float, now: float) -> list[Effect]:
        """Expire every pending confirmation with reason ``shutdown``."""
        effects: list[Effect] = []
        for pending in list(self._pending.values()):
            effects.extend(self._expire(pending, "shutdown", wall, now))
        return effects

    def pending_for(self, source: SourceId) -> int:
        return self._pending_by_source.get(source, 0)

    def _expire(self, pending: Pending, reason: str, wall: float, now: float) -> list[Effect]:
        self._forget(pending)
        self.stats.confirmations_expired += 1
        message: dict[str, Any] = {
            "type": "confirmation_expired",
            "id": pending.id,
            "reason": reason,
        }
        if pending.default is not None and reason != "source_gone":
            message["response"] = pending.default
        effects: list[Effect] = []
        if pending.source is not None:
            effects.append(ToSource(pending.source, dict(message)))
        effects.append(Broadcast(self.stamp(message, "confirmation_expired", wall, now)))
        return effects

    def pending_confirmations(self, now: float) -> list[dict[str, Any]]:
        out = []
        for p in self._pending.values():
            entry = {"id": p.id, **p.info}
            entry["remaining_seconds"] = round(p.remaining(now), 3)
            entry["paused"] = p.paused_remaining is not None
            out.append(entry)
        return out

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def iter_pending(self) -> Iterator[Pending]:
        return iter(self._pending.values())

    # -- snapshot --------------------------------------------------------------------

    def connected(self, now: float) -> dict[str, Any]:
        """The first frame every client gets (§2.1), decoded: see :meth:`connected_payload`."""
        snapshot: dict[str, Any] = json.loads(self.connected_payload(now))
        return snapshot

    def connected_payload(self, now: float) -> bytes:
        """The JSON text of the ``connected`` frame: at most :data:`CONNECTED_MAX_BYTES`.

        Text a source chose (:data:`_SKILL_TEXT`, :data:`_CONFIRMATION_TEXT`) is cut to
        the first length of :data:`SNAPSHOT_CUTS` for which the whole frame fits, the
        same length for every entry.  Should even the shortest not fit (only possible
        with ``confirmations.max_pending`` raised well past its default), running
        skills are left out, oldest first, then confirmations, newest first.
        Entries are encoded once per cut length and kept, so a call costs a join.
        """
        self._drop_idle_skills(now)
        head = encode_json(
            {
                "type": "connected",
                "server": SERVER_NAME,
                "version": __version__,
                "epoch": self.epoch,
                "seq": self.released_seq,
            }
        )[:-1]
        skills = list(self._skills.values())
        pending = list(self._pending.values())
        tails = [p.countdown(now) for p in pending]
        # Everything but the entries' cuttable parts; a pending entry is its static
        # JSON without the closing brace, then its countdown tail (which has one).
        fixed = (
            len(head)
            + len(_SKILLS_OPEN)
            + len(_PENDING_OPEN)
            + len(_SNAPSHOT_CLOSE)
            + max(len(skills) - 1, 0)
            + max(len(pending) - 1, 0)
            + sum(len(t) - 1 for t in tails)
        )
        for cut in SNAPSHOT_CUTS:
            total = (
                fixed
                + sum(s.encodings.size(cut, s.snapshot) for s in skills)
                + sum(p.encodings.size(cut, p.static_entry) for p in pending)
            )
            if total <= CONNECTED_MAX_BYTES:
                break
        else:
            left_out = 0
            while total > CONNECTED_MAX_BYTES and skills:
                oldest = skills.pop(0)
                # Its size and the comma that separated it (none when it was alone).
                total -= oldest.encodings.size(cut, oldest.snapshot) + (1 if skills else 0)
                left_out += 1
            while total > CONNECTED_MAX_BYTES and pending:
                newest = pending.pop()
                total -= newest.encodings.size(cut, newest.static_entry) - 1 + len(tails.pop())
                total -= 1 if pending else 0
                left_out += 1
            self.stats.snapshot_entries_left_out += left_out
        payload = b"".join(
            (
                head,
                _SKILLS_OPEN,
                b",".join(s.encodings.get(cut, s.snapshot) for s in skills),
                _PENDING_OPEN,
                b",".join(
                    p.encodings.get(cut, p.static_entry)[:-1] + tail
                    for p, tail in zip(pending, tails, strict=True)
                ),
                _SNAPSHOT_CLOSE,
            )
        )
        assert len(payload) <= CONNECTED_MAX_BYTES, len(payload)
        return payload


_SKILLS_OPEN = b',"running_skills":['
_PENDING_OPEN = b'],"pending_confirmations":['
_SNAPSHOT_CLOSE = b"]}"
