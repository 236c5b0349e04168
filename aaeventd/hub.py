"""The daemon's state, with no I/O: seq, replay ring, running skills, confirmations.

Every method takes the current time as arguments (``now``: monotonic seconds, for
deadlines; ``wall``: Unix time, for timestamps) and returns *effect records*
(:class:`Broadcast`, :class:`ToSource`) that the composition root
(:mod:`aaeventd.app`) executes: journal, log line, fan-out, replies.  Nothing here
touches a socket, a file, a clock or asyncio, so every rule is testable in
microseconds.

A peer's mistake (a duplicate confirmation id, an answer to an unknown
confirmation) raises :class:`~aaeventd.protocol.errors.ProtocolError`; the caller
turns it into an error reply.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aaeventd import SERVER_NAME, __version__
from aaeventd.protocol.codec import encode_json, rfc3339_utc, ws_text_frame
from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import ConfirmationResponse, normalize_confirmation
from aaeventd.protocol.skills import find_skill, skill_key

# Running skills (PROTOCOL §2.1): bounded by count and by idleness.
MAX_RUNNING_SKILLS = 100
SKILL_IDLE_SECONDS = 3600.0

_SKILL_END_TYPES = frozenset({"skill_completed", "skill_failed", "skill_error"})
_STEP_TYPES = frozenset({"step_started", "step_completed", "step_failed"})
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


@dataclass(slots=True)
class RunningSkill:
    """One entry of ``running_skills`` in the ``connected`` frame."""

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

    def snapshot(self) -> dict[str, Any]:
        return {
            "skill_id": self.skill_id,
            "skill_name": self.skill_name,
            "session_id": self.session_id,
            "total_steps": self.total_steps,
            "current_step": self.current_step,
            "current_step_name": self.current_step_name,
            "status": self.status,
            "started_at": self.started_at,
        }


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

    def remaining(self, now: float) -> float:
        if self.paused_remaining is not None:
            return self.paused_remaining
        return max(0.0, self.deadline - now)

    def next_deadline(self) -> float:
        if self.pause_ends is not None:
            return self.pause_ends
        return self.deadline


@dataclass(frozen=True, slots=True)
class Replay:
    """What a client that connected with ``since`` gets before live events."""

    gap: tuple[int, int] | None
    events: list[Stamped]


@dataclass(slots=True)
class HubLimits:
    """The hub's live-reloadable settings (from ``events`` and ``confirmations``)."""

    replay_buffer: int = 10_000
    default_timeout_seconds: float = 60.0
    max_pause_seconds: float = 600.0


@dataclass(slots=True)
class HubStats:
    events_out: int = 0
    confirmations_answered: int = 0
    confirmations_expired: int = 0
    last_seq_at_start: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Hub:
    """Sequence numbers, replay ring, running skills and the confirmation machine."""

    def __init__(self, *, epoch: str, last_seq: int = 0, limits: HubLimits | None = None) -> None:
        self.epoch = epoch
        self.last_seq = last_seq
        self.limits = limits or HubLimits()
        self._ring: deque[Stamped] = deque(maxlen=self.limits.replay_buffer)
        self._skills: OrderedDict[str, RunningSkill] = OrderedDict()
        self._pending: dict[str, Pending] = {}
        self.stats = HubStats(last_seq_at_start=last_seq)

    # -- settings ------------------------------------------------------------------

    def set_limits(self, limits: HubLimits) -> None:
        """Apply reloaded settings; a smaller ring keeps its newest events."""
        self.limits = limits
        if self._ring.maxlen != limits.replay_buffer:
            self._ring = deque(self._ring, maxlen=limits.replay_buffer)

    # -- events ----------------------------------------------------------------------

    def stamp(self, event: dict[str, Any], event_type: str, wall: float, now: float) -> Stamped:
        """Give ``event`` the next seq (and a timestamp when it has none); record it.

        The dict is updated in place: ``seq`` is overwritten where the source put it,
        otherwise appended, and ``timestamp`` is appended only when absent.
        """
        seq = self.last_seq + 1
        event["seq"] = seq
        if "timestamp" not in event:
            event["timestamp"] = rfc3339_utc(wall)
        stamped = Stamped.build(seq, event_type, event)
        # Committed only once encoded: a failure above never leaves a hole in the seqs.
        self.last_seq = seq
        self._ring.append(stamped)
        self.stats.events_out += 1
        self.stats.by_type[event_type] = self.stats.by_type.get(event_type, 0) + 1
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
    ) -> list[Effect]:
        """Take a validated event from a source and return what to do with it.

        Raises:
            ProtocolError: ``duplicate_confirmation`` for an id still pending.
        """
        if event_type == "confirmation_required":
            return [self._open_confirmation(event, source=source, wall=wall, now=now)]
        stamped = self.stamp(event, event_type, wall, now)
        return [Broadcast(stamped, source=source, ack_to=source if wants_ack else None)]

    def replay_since(self, since: int) -> Replay:
        """Events with ``seq > since`` still in the ring, and the range that is not."""
        if since >= self.last_seq:
            return Replay(None, [])
        ring = self._ring
        first = ring[0].seq if ring else self.last_seq + 1
        if since + 1 >= first:
            start = since + 1 - first
            return Replay(None, [ring[i] for i in range(start, len(ring))])
        return Replay((since + 1, first - 1), list(ring))

    @property
    def oldest_in_ring(self) -> int | None:
        return self._ring[0].seq if self._ring else None

    # -- running skills (§2.1) -------------------------------------------------------

    def _track(self, event_type: str, event: dict[str, Any], wall: float, now: float) -> None:
        if event_type == "skill_started":
            self._skill_started(event, wall, now)
            return
        skill = self._find_skill(event)
        if skill is None:
            return
        if event_type not in _STEP_TYPES and event_type not in _SKILL_END_TYPES:
            skill.last_event = now  # a heal or confirmation naming the skill: still alive
            return
        if event_type in _SKILL_END_TYPES:
            del self._skills[skill.key]
            return
        skill.last_event = now
        if event_type == "step_started":
            skill.current_step = event.get("step_index")
            skill.current_step_name = event.get("step_name")
        if "total_steps" in event:
            skill.total_steps = event["total_steps"]

    def _skill_started(self, event: dict[str, Any], wall: float, now: float) -> None:
        key = skill_key(event)
        if key is None:  # pragma: no cover - validation requires skill_name
            return
        self._skills.pop(key, None)
        self._skills[key] = RunningSkill(
            key=key,
            skill_id=_str_or_none(event.get("skill_id")),
            session_id=_str_or_none(event.get("session_id")),
            skill_name=_str_or_none(event.get("skill_name")),
            total_steps=event.get("total_steps"),
            current_step=None,
            current_step_name=None,
            started_at=rfc3339_utc(wall),
            last_event=now,
        )
        while len(self._skills) > MAX_RUNNING_SKILLS:
            self._skills.popitem(last=False)

    def _find_skill(self, event: dict[str, Any]) -> RunningSkill | None:
        if not self._skills:
            return None
        return find_skill(self._skills.values(), event)

    def running_skills(self, now: float) -> list[dict[str, Any]]:
        """The snapshot list, after dropping skills idle for more than an hour."""
        stale = [k for k, s in self._skills.items() if now - s.last_event > SKILL_IDLE_SECONDS]
        for key in stale:
            del self._skills[key]
        return [s.snapshot() for s in self._skills.values()]

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
            info={k: normalized.get(k) for k in _CONFIRMATION_INFO},
        )
        return Broadcast(stamped, source=source, ack_to=source, ack_extra={"id": cid})

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
        del self._pending[msg.id]
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
        return sum(1 for p in self._pending.values() if p.source == source)

    def _expire(self, pending: Pending, reason: str, wall: float, now: float) -> list[Effect]:
        del self._pending[pending.id]
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
        """The first frame every client gets (§2.1)."""
        return {
            "type": "connected",
            "server": SERVER_NAME,
            "version": __version__,
            "epoch": self.epoch,
            "seq": self.last_seq,
            "running_skills": self.running_skills(now),
            "pending_confirmations": self.pending_confirmations(now),
        }


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
