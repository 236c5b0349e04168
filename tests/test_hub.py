"""The hub, with no I/O: seq, replay ring, running skills, confirmations (time as input)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from aaeventd import __version__
from aaeventd.daemon.hub import (
    CONNECTED_MAX_BYTES,
    CUT_MARK,
    KNOWN_TYPE_LABELS,
    MAX_OTHER_TYPE_LABELS,
    MAX_RUNNING_SKILLS,
    OTHER_TYPE_LABEL,
    SKILL_IDLE_SECONDS,
    SNAPSHOT_CUTS,
    Broadcast,
    Hub,
    HubLimits,
    ToSource,
)
from aaeventd.protocol.codec import rfc3339_utc
from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import ConfirmationResponse
from aaeventd.protocol.skills import NAME_KEEP_CHARS

WALL = 1_770_201_000.123  # 2026-02-04T10:30:00.123Z


def accept(
    hub: Hub, event: dict[str, Any], *, source: int | None = 1, now: float = 0.0
) -> list[Any]:
    return hub.accept(event, event["type"], source=source, wants_ack=True, wall=WALL, now=now)


def only_broadcast(effects: list[Any]) -> Broadcast:
    broadcasts = [e for e in effects if isinstance(e, Broadcast)]
    assert len(broadcasts) == 1, effects
    return broadcasts[0]


def confirm(hub: Hub, *, now: float = 0.0, **fields: Any) -> str:
    event = {"type": "confirmation_required", "message": "Create branch?", **fields}
    b = only_broadcast(accept(hub, event, now=now))
    assert b.ack_extra is not None
    cid = b.ack_extra["id"]
    assert isinstance(cid, str)
    return cid


def response(cid: str, answer: str = "yes", remember: str = "none") -> ConfirmationResponse:
    return ConfirmationResponse(id=cid, response=answer, remember=remember)


def test_seq_increments_and_continues_from_start_value() -> None:
    """seq starts after the resumed value and grows by one per event."""
    hub = Hub(epoch="e", last_seq=41)
    seqs = [only_broadcast(accept(hub, {"type": "x"})).stamped.seq for _ in range(3)]
    assert seqs == [42, 43, 44]
    assert hub.last_seq == 44


def test_source_seq_overwritten_in_place_and_timestamp_added() -> None:
    """A source's seq is replaced where it stood; timestamp is appended when absent."""
    hub = Hub(epoch="e")
    event = {"type": "x", "seq": 999, "a": 1}
    stamped = only_broadcast(accept(hub, event)).stamped
    assert list(stamped.event) == ["type", "seq", "a", "timestamp"]
    assert stamped.event["seq"] == 1
    assert stamped.event["timestamp"] == "2026-02-04T10:30:00.123Z"


def test_source_timestamp_kept() -> None:
    """A timestamp sent by the source is left exactly as sent."""
    hub = Hub(epoch="e")
    stamped = only_broadcast(accept(hub, {"type": "x", "timestamp": "yesterday"})).stamped
    assert stamped.event["timestamp"] == "yesterday"


def test_frame_and_payload_encode_the_event_once() -> None:
    """The journal payload is the JSON inside the frame, byte for byte."""
    hub = Hub(epoch="e")
    stamped = only_broadcast(accept(hub, {"type": "x", "text": "é" * 200})).stamped
    payload = bytes(stamped.payload)
    assert json.loads(payload) == stamped.event
    assert stamped.frame.endswith(payload)
    assert stamped.frame[0] == 0x81


def test_ack_requested_only_when_source_wants_it() -> None:
    """Plain events are acked only for sources that said acks:true."""
    hub = Hub(epoch="e")
    quiet = hub.accept({"type": "x"}, "x", source=7, wants_ack=False, wall=WALL, now=0)
    loud = hub.accept({"type": "x"}, "x", source=7, wants_ack=True, wall=WALL, now=0)
    assert only_broadcast(quiet).ack_to is None
    assert only_broadcast(loud).ack_to == 7


def test_replay_from_ring_and_gap_when_evicted() -> None:
    """replay_since returns what the ring still has and names the missing range."""
    hub = Hub(epoch="e", limits=HubLimits(replay_buffer=5))
    for _ in range(10):
        accept(hub, {"type": "x"})
    assert [s.seq for s in hub.replay_since(7).events] == [8, 9, 10]
    assert hub.replay_since(7).gap is None
    early = hub.replay_since(2)
    assert early.gap == (3, 5)
    assert [s.seq for s in early.events] == [6, 7, 8, 9, 10]
    assert hub.replay_since(10).events == []
    assert hub.replay_since(50).events == []


def test_replay_gap_when_ring_empty_after_restart() -> None:
    """After a restart the ring is empty: everything since N up to the last seq is a gap."""
    hub = Hub(epoch="e", last_seq=20)
    replay = hub.replay_since(15)
    assert replay.gap == (16, 20)
    assert replay.events == []


def test_shrinking_ring_keeps_newest() -> None:
    """A reload to a smaller replay_buffer keeps the newest events."""
    hub = Hub(epoch="e")
    for _ in range(10):
        accept(hub, {"type": "x"})
    hub.set_limits(HubLimits(replay_buffer=3))
    assert hub.oldest_in_ring == 8


# -- running skills -------------------------------------------------------------------


def test_running_skill_tracks_current_step_and_leaves_on_completion() -> None:
    """A skill shows its latest step_started, and leaves on skill_completed."""
    hub = Hub(epoch="e")
    accept(
        hub,
        {"type": "skill_started", "skill_name": "start_work", "skill_id": "s1", "total_steps": 5},
    )
    accept(
        hub, {"type": "step_started", "skill_id": "s1", "step_name": "fetch_issue", "step_index": 2}
    )
    accept(
        hub, {"type": "step_failed", "skill_id": "s1", "step_name": "fetch_issue", "step_index": 2}
    )
    [skill] = hub.running_skills(0)
    assert skill["skill_id"] == "s1"
    assert skill["skill_name"] == "start_work"
    assert skill["total_steps"] == 5
    assert skill["current_step"] == 2
    assert skill["current_step_name"] == "fetch_issue"
    assert skill["status"] == "running"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", skill["started_at"])
    accept(hub, {"type": "skill_completed", "skill_id": "s1"})
    assert hub.running_skills(0) == []


@pytest.mark.parametrize("end", ["skill_failed", "skill_error"])
def test_both_failure_synonyms_end_a_skill(end: str) -> None:
    """skill_failed and skill_error both remove the skill."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a"})
    accept(hub, {"type": end, "skill_name": "a"})
    assert hub.running_skills(0) == []


def test_skill_keyed_by_id_then_session_then_name() -> None:
    """The key is skill_id, else session_id, else skill_name; same key replaces."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a", "session_id": "sess"})
    accept(hub, {"type": "skill_started", "skill_name": "b", "session_id": "sess"})
    [skill] = hub.running_skills(0)
    assert skill["skill_name"] == "b"


def test_later_events_match_the_most_recent_start_by_name() -> None:
    """A step naming only skill_name updates the most recently started match."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a", "skill_id": "1"})
    accept(hub, {"type": "skill_started", "skill_name": "a", "skill_id": "2"})
    accept(hub, {"type": "step_started", "skill_name": "a", "step_name": "s", "step_index": 0})
    skills = {s["skill_id"]: s for s in hub.running_skills(0)}
    assert skills["2"]["current_step_name"] == "s"
    assert skills["1"]["current_step_name"] is None


def test_unmatched_id_falls_back_to_name() -> None:
    """An event whose skill_id matches nothing is matched by its skill_name."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a"})
    accept(
        hub,
        {
            "type": "step_started",
            "skill_id": "x",
            "skill_name": "a",
            "step_name": "s",
            "step_index": 1,
        },
    )
    assert hub.running_skills(0)[0]["current_step"] == 1


def test_idle_skills_dropped_after_an_hour() -> None:
    """A skill with no event for an hour leaves the list."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "old"}, now=0)
    accept(hub, {"type": "skill_started", "skill_name": "new"}, now=SKILL_IDLE_SECONDS)
    names = [s["skill_name"] for s in hub.running_skills(SKILL_IDLE_SECONDS + 1)]
    assert names == ["new"]


def test_at_most_100_running_skills_oldest_first_out() -> None:
    """The 101st start pushes out the oldest."""
    hub = Hub(epoch="e")
    for i in range(MAX_RUNNING_SKILLS + 1):
        accept(hub, {"type": "skill_started", "skill_name": f"s{i}"})
    names = [s["skill_name"] for s in hub.running_skills(0)]
    assert len(names) == MAX_RUNNING_SKILLS
    assert names[0] == "s1"


def test_long_skill_names_are_kept_as_bounded_refs_that_still_match() -> None:
    """100 skills named by 1 MiB ids cost the hub at most 4,130 characters a name, yet
    a step finds its skill, a long id sharing the start does not, and completion ends it."""
    hub = Hub(epoch="e")
    ids = [f"{i:07d}" + "i" * (1 << 20) for i in range(MAX_RUNNING_SKILLS)]
    for skill_id in ids:
        accept(hub, {"type": "skill_started", "skill_name": "s", "skill_id": skill_id})
    kept = [len(s.skill_id or "") for s in hub._skills.values()]
    keys = [len(k) for k in hub._skills]
    assert max(kept + keys) <= NAME_KEEP_CHARS + 34, f"a name kept as {max(kept + keys)} chars"
    target = ids[42]
    accept(
        hub,
        {"type": "step_started", "skill_id": target, "step_name": "load", "step_index": 3},
    )
    # Same first 4,095 characters (and more), another id: no match, so no step recorded.
    twin = target[:-1] + "y"
    accept(hub, {"type": "step_started", "skill_id": twin, "step_name": "x", "step_index": 9})
    snap = {s["skill_id"]: s for s in hub.running_skills(0)}
    shown = target[: NAME_KEEP_CHARS - 1] + CUT_MARK
    assert len(snap) == MAX_RUNNING_SKILLS  # every kept id shows as its own start + mark
    assert snap[shown]["current_step"] == 3, snap[shown]
    assert snap[shown]["current_step_name"] == "load"
    accept(hub, {"type": "skill_completed", "skill_id": target})
    assert len(hub.running_skills(0)) == MAX_RUNNING_SKILLS - 1
    assert shown not in {s["skill_id"] for s in hub.running_skills(0)}


# -- confirmations ----------------------------------------------------------------------


def test_confirmation_gets_id_both_texts_options_and_ack() -> None:
    """A confirmation gets a UUID, prompt==message, default options, created_at, an ack."""
    hub = Hub(epoch="e")
    b = only_broadcast(
        accept(hub, {"type": "confirmation_required", "prompt": "Go?", "skill_name": "s"})
    )
    event = b.stamped.event
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", event["id"]
    )
    assert event["prompt"] == event["message"] == "Go?"
    assert event["options"] == ["yes", "no"]
    assert event["timeout_seconds"] == 60
    assert event["created_at"] == "2026-02-04T10:30:00.123Z"
    assert b.ack_to == 1
    assert b.ack_extra == {"id": event["id"]}


def test_duplicate_pending_id_refused() -> None:
    """An id still pending is refused with duplicate_confirmation."""
    hub = Hub(epoch="e")
    confirm(hub, id="c1")
    with pytest.raises(ProtocolError) as info:
        confirm(hub, id="c1")
    assert info.value.code is ErrorCode.DUPLICATE_CONFIRMATION


def test_first_valid_answer_wins() -> None:
    """The first valid answer goes to the source and is broadcast; a second is refused."""
    hub = Hub(epoch="e")
    cid = confirm(hub, options=["yes", "no", "skip"])
    effects = hub.answer(response(cid, "skip"), client="c1", user_agent="ua", wall=WALL, now=1)
    to_source = [e for e in effects if isinstance(e, ToSource)]
    assert to_source == [
        ToSource(
            1, {"type": "confirmation_response", "id": cid, "response": "skip", "remember": "none"}
        )
    ]
    answered = only_broadcast(effects).stamped.event
    assert answered["type"] == "confirmation_answered"
    assert answered["answered_by"] == {"client": "c1", "user_agent": "ua"}
    with pytest.raises(ProtocolError) as info:
        hub.answer(response(cid, "yes"), client="c2", user_agent=None, wall=WALL, now=1)
    assert info.value.code is ErrorCode.UNKNOWN_CONFIRMATION


def test_answer_outside_options_refused_and_still_pending() -> None:
    """A response not in options is invalid_response and the confirmation stays pending."""
    hub = Hub(epoch="e")
    cid = confirm(hub)
    with pytest.raises(ProtocolError) as info:
        hub.answer(response(cid, "maybe"), client="c1", user_agent=None, wall=WALL, now=1)
    assert info.value.code is ErrorCode.INVALID_RESPONSE
    assert hub.pending_count == 1


def test_timeout_expires_with_default() -> None:
    """Past timeout_seconds the confirmation expires with reason timeout and its default."""
    hub = Hub(epoch="e")
    cid = confirm(hub, timeout_seconds=5, default="no", now=100)
    assert hub.next_deadline() == 105
    assert hub.expire_due(WALL, 104.9) == []
    effects = hub.expire_due(WALL, 105)
    expected = {"type": "confirmation_expired", "id": cid, "reason": "timeout", "response": "no"}
    assert ToSource(1, expected) in effects
    event = only_broadcast(effects).stamped.event
    assert {k: event[k] for k in expected} == expected
    assert hub.pending_count == 0


def test_pause_excludes_time_and_resume_restarts() -> None:
    """Paused time does not count; pausing twice or resuming a running one is a no-op."""
    hub = Hub(epoch="e")
    cid = confirm(hub, timeout_seconds=10, now=0)
    hub.pause(cid, 4)
    hub.pause(cid, 6)  # no-op
    assert hub.pending_confirmations(50)[0]["remaining_seconds"] == 6
    assert hub.expire_due(WALL, 50) == []
    hub.resume(cid, 100)
    hub.resume(cid, 101)  # no-op
    assert hub.next_deadline() == 106
    assert hub.expire_due(WALL, 105.9) == []
    assert hub.expire_due(WALL, 106) != []


def test_pause_ends_by_itself_after_max_pause() -> None:
    """A pause longer than max_pause_seconds ends and the countdown goes on."""
    hub = Hub(epoch="e", limits=HubLimits(max_pause_seconds=30))
    cid = confirm(hub, timeout_seconds=10, now=0)
    hub.pause(cid, 2)  # 8 s remain
    assert hub.next_deadline() == 32
    assert hub.expire_due(WALL, 32) == []
    assert hub.next_deadline() == 40
    assert hub.expire_due(WALL, 40) != []


def test_pause_unknown_id_refused() -> None:
    """pause_timer/resume_timer for an id not pending is unknown_confirmation."""
    hub = Hub(epoch="e")
    for op in (hub.pause, hub.resume):
        with pytest.raises(ProtocolError) as info:
            op("nope", 0)
        assert info.value.code is ErrorCode.UNKNOWN_CONFIRMATION


def test_source_gone_expires_its_confirmations_only() -> None:
    """A disconnected source's confirmations expire with source_gone; others stay."""
    hub = Hub(epoch="e")
    mine = confirm(hub)
    hub.accept(
        {"type": "confirmation_required", "message": "other"},
        "confirmation_required",
        source=2,
        wants_ack=False,
        wall=WALL,
        now=0,
    )
    effects = hub.source_gone(1, WALL, 1)
    assert not any(isinstance(e, ToSource) for e in effects)
    event = only_broadcast(effects).stamped.event
    assert (event["id"], event["reason"]) == (mine, "source_gone")
    assert hub.pending_count == 1


def test_shutdown_expires_all_and_tells_sources() -> None:
    """On shutdown every pending confirmation expires with reason shutdown."""
    hub = Hub(epoch="e")
    a = confirm(hub, default="yes")
    b = confirm(hub)
    effects = hub.shutdown(WALL, 1)
    told = {e.message["id"]: e.message for e in effects if isinstance(e, ToSource)}
    assert told[a] == {
        "type": "confirmation_expired",
        "id": a,
        "reason": "shutdown",
        "response": "yes",
    }
    assert told[b] == {"type": "confirmation_expired", "id": b, "reason": "shutdown"}
    assert hub.pending_count == 0


def test_connected_snapshot_lists_pending_with_remaining_seconds() -> None:
    """The connected frame carries epoch, seq and each pending confirmation's countdown."""
    hub = Hub(epoch="ep", last_seq=3)
    cid = confirm(hub, timeout_seconds=60, now=10, skill_name="start_work", step_index=2)
    snap = hub.connected(27.5)
    assert snap["type"] == "connected"
    assert (snap["epoch"], snap["seq"], snap["version"]) == ("ep", 4, __version__)
    [pending] = snap["pending_confirmations"]
    assert pending["id"] == cid
    assert pending["remaining_seconds"] == 42.5
    assert pending["skill_name"] == "start_work"
    assert pending["prompt"] == pending["message"] == "Create branch?"


def test_any_event_naming_a_skill_keeps_it_alive() -> None:
    """A heal or confirmation naming the skill resets its idle hour."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "a", "skill_id": "s1"}, now=0)
    accept(hub, {"type": "heal_started", "skill_id": "s1"}, now=SKILL_IDLE_SECONDS - 1)
    assert [s["skill_id"] for s in hub.running_skills(SKILL_IDLE_SECONDS + 1)] == ["s1"]
    assert hub.running_skills(2 * SKILL_IDLE_SECONDS) == []


# -- the replay ring's byte bound (§2.3) ----------------------------------------------


def padded(n: int, size: int) -> dict[str, Any]:
    return {"type": "x", "n": n, "pad": "p" * size}


def test_ring_is_bounded_by_frame_bytes_oldest_first() -> None:
    """replay_buffer_bytes evicts the oldest events even when the count bound has room;
    replay_since then names the evicted range as a gap."""
    hub = Hub(epoch="e", limits=HubLimits(replay_buffer=1000, replay_buffer_bytes=10_000))
    for n in range(20):
        accept(hub, padded(n, 1000))
    frame = len(hub.replay_since(19).events[0].frame)
    assert 1000 < frame < 1100
    kept = 10_000 // frame
    assert hub.ring_bytes <= 10_000, f"the ring holds {hub.ring_bytes} bytes > 10000"
    assert hub.ring_bytes == kept * frame
    assert hub.oldest_in_ring == 20 - kept + 1
    replay = hub.replay_since(0)
    assert replay.gap == (1, 20 - kept)
    assert [k.seq for k in replay.events] == list(range(20 - kept + 1, 21))


def test_reload_to_fewer_ring_bytes_keeps_the_newest() -> None:
    """A reload to a smaller replay_buffer_bytes applies at once; the newest stay."""
    hub = Hub(epoch="e", limits=HubLimits(replay_buffer=1000))
    for n in range(20):
        accept(hub, padded(n, 1000))
    assert hub.oldest_in_ring == 1
    hub.set_limits(HubLimits(replay_buffer=1000, replay_buffer_bytes=3000))
    assert hub.oldest_in_ring == 19
    assert hub.ring_bytes <= 3000, f"the ring holds {hub.ring_bytes} bytes > 3000"
    hub.set_limits(HubLimits(replay_buffer=1000, replay_buffer_bytes=0))
    assert (hub.oldest_in_ring, hub.ring_bytes) == (None, 0)
    assert hub.replay_since(10).gap == (11, 20)


def test_ring_keeps_frames_not_the_parsed_events() -> None:
    """The ring holds each event's frame only, so its bytes bound is its memory."""
    hub = Hub(epoch="e")
    accept(hub, padded(0, 10))
    kept = hub.replay_since(0).events[0]
    assert not hasattr(kept, "event")
    assert json.loads(kept.frame[2:]) == {
        "type": "x",
        "n": 0,
        "pad": "p" * 10,
        "seq": 1,
        "timestamp": "2026-02-04T10:30:00.123Z",
    }


def test_replay_piece_walks_the_ring_in_bounded_pieces() -> None:
    """replay_piece returns at most max_bytes (at least one frame) or max_scan events,
    filtered, and a gap for what left the ring, so a replay can go on after eviction."""
    hub = Hub(epoch="e", limits=HubLimits(replay_buffer=8))
    for n in range(12):
        accept(hub, {"type": "a" if n % 2 else "b", "n": n})
    # seq 5..12 are in the ring; 1..4 left it.
    assert hub.replay_piece(0, 12, None, max_bytes=1 << 20, max_scan=100).gap == (1, 4)
    assert hub.replay_piece(0, 3, None, max_bytes=1 << 20, max_scan=100).gap == (1, 3)
    frame = min(len(k.frame) for k in hub.replay_since(4).events)
    pieces, after = [], 4
    while after < 12:
        piece = hub.replay_piece(after, 12, None, max_bytes=2 * frame, max_scan=100)
        assert piece.gap is None
        pieces.append([json.loads(f[2:])["seq"] for f in piece.frames])
        after = piece.last
    assert pieces == [[5, 6], [7, 8], [9, 10], [11, 12]]
    only_a = hub.replay_piece(4, 10, lambda t: t == "a", max_bytes=1 << 20, max_scan=3)
    assert (only_a.last, [json.loads(f[2:])["seq"] for f in only_a.frames]) == (7, [6])
    huge = hub.replay_piece(4, 12, None, max_bytes=1, max_scan=100)
    assert (huge.last, len(huge.frames)) == (5, 1)
    assert hub.replay_piece(12, 12, None, max_bytes=1, max_scan=100).frames == []


# -- bounds (§3.7, §2.1, §6) ------------------------------------------------------------


def confirm_from(hub: Hub, source: int, now: float = 0.0, **fields: Any) -> str:
    event = {"type": "confirmation_required", "message": "Go?", **fields}
    b = only_broadcast(accept(hub, event, source=source, now=now))
    assert b.ack_extra is not None
    return str(b.ack_extra["id"])


def refused(hub: Hub, source: int) -> ProtocolError:
    seq, ring_end = hub.last_seq, hub.replay_since(0).events[-1:]
    with pytest.raises(ProtocolError) as info:
        confirm_from(hub, source)
    # Nothing broadcast: no seq consumed, nothing new in the ring.
    assert hub.last_seq == seq
    assert hub.replay_since(0).events[-1:] == ring_end
    assert info.value.code is ErrorCode.TOO_MANY_CONFIRMATIONS
    return info.value


def test_pending_confirmations_bounded_per_source_and_in_total() -> None:
    """Past max_pending_per_source or max_pending the line is too_many_confirmations,
    nothing is stamped, and room comes back as confirmations end."""
    hub = Hub(epoch="e", limits=HubLimits(max_pending=5, max_pending_per_source=2))
    first = confirm_from(hub, 1)
    confirm_from(hub, 1, timeout_seconds=1)
    assert "max_pending_per_source=2" in refused(hub, 1).message
    confirm_from(hub, 2)
    confirm_from(hub, 2)
    confirm_from(hub, 3)
    assert (hub.pending_count, hub.pending_for(1), hub.pending_for(3)) == (5, 2, 1)
    assert "max_pending=5" in refused(hub, 4).message
    hub.answer(response(first), client="c", user_agent=None, wall=WALL, now=0)
    assert hub.pending_for(1) == 1
    confirm_from(hub, 1)
    hub.expire_due(WALL, 2.0)  # the one with a one-second timeout
    hub.source_gone(2, WALL, 2.0)
    assert (hub.pending_count, hub.pending_for(1), hub.pending_for(2)) == (2, 1, 0)
    confirm_from(hub, 2)
    hub.set_limits(HubLimits(max_pending=1, max_pending_per_source=1))
    assert hub.pending_count == 3  # a lowered bound expires nothing
    refused(hub, 5)


def test_unbounded_source_none_counts_only_towards_the_total() -> None:
    """A daemon-made confirmation (source None) counts towards max_pending only."""
    hub = Hub(epoch="e", limits=HubLimits(max_pending=3, max_pending_per_source=1))
    for _ in range(3):
        only_broadcast(
            hub.accept(
                {"type": "confirmation_required", "message": "?"},
                "confirmation_required",
                source=None,
                wants_ack=False,
                wall=WALL,
                now=0,
            )
        )
    refused(hub, 1)


def widest_confirmation(i: int, char: str = "\x01", text: int = 4096) -> dict[str, Any]:
    """A confirmation as large as §3.7 lets it be, every character escaped to 6 bytes."""
    return {
        "type": "confirmation_required",
        "id": f"{i:04d}" + char * 252,
        "prompt": char * text,
        "message": char * text,
        "claude_suggestion": char * text,
        "options": [f"{j:02d}" + char * 62 for j in range(16)],
        "skill_id": char * 5000,
        "skill_name": char * 5000,
        "step_name": char * 5000,
        "step_index": 2**53 - 1,
        "timeout_seconds": 3599.123456789,
    }


def start_widest_skill(hub: Hub, i: int, char: str = "\x01") -> None:
    name = f"{i:03d}" + char * 5000
    accept(
        hub,
        {
            "type": "skill_started",
            "skill_id": name,
            "skill_name": name,
            "session_id": char * 5000,
            "total_steps": 2**53 - 1,
        },
    )
    accept(
        hub,
        {
            "type": "step_started",
            "skill_id": name,
            "step_name": char * 5000,
            "step_index": 2**53 - 1,
        },
    )


SKILL_TEXT = ("skill_id", "skill_name", "session_id", "current_step_name")
CONFIRMATION_TEXT = (
    "skill_id",
    "skill_name",
    "step_name",
    "prompt",
    "message",
    "claude_suggestion",
)


def cut_lengths(snap: dict[str, Any]) -> set[int]:
    """The lengths of every cut string in the snapshot (each must end with the mark)."""
    texts = [s[k] for s in snap["running_skills"] for k in SKILL_TEXT]
    texts += [c[k] for c in snap["pending_confirmations"] for k in CONFIRMATION_TEXT]
    return {len(t) for t in texts if isinstance(t, str) and t.endswith(CUT_MARK)}


def test_connected_keeps_text_whole_while_it_fits_but_skill_text_at_most_4096() -> None:
    """Confirmation texts of 4,096 characters come whole; a longer skill name is cut
    to exactly 4,096 characters, the last one the cut mark; the events keep it all."""
    hub = Hub(epoch="e")
    long_name = "n" * 10_000
    started = only_broadcast(accept(hub, {"type": "skill_started", "skill_name": long_name}))
    event = widest_confirmation(1, char="p")
    b = only_broadcast(accept(hub, event))
    snap = hub.connected(0)
    [skill] = snap["running_skills"]
    assert skill["skill_name"] == "n" * 4095 + CUT_MARK
    assert started.stamped.event["skill_name"] == long_name
    [pending] = snap["pending_confirmations"]
    assert pending["prompt"] == pending["message"] == event["prompt"]  # 4,096: whole
    assert pending["skill_name"] == "p" * 4095 + CUT_MARK
    assert b.stamped.event["skill_name"] == event["skill_name"]
    assert pending["id"] == event["id"]
    assert pending["options"] == event["options"]


def test_connected_cuts_every_text_to_the_first_length_that_fits() -> None:
    """100 confirmations of 3 x 4,096 characters exceed 1 MiB: every text is cut to
    the same 2,048 characters (the first of the ladder that fits), ids and options whole."""
    hub = Hub(epoch="e")
    events = [{**widest_confirmation(i, char="a"), "skill_name": "s"} for i in range(100)]
    for event in events:
        del event["skill_id"], event["step_name"]
    for event in events:
        accept(hub, event, source=None)
    whole = len(json.dumps(hub.pending_confirmations(0), ensure_ascii=False).encode())
    assert whole > CONNECTED_MAX_BYTES, whole
    payload = hub.connected_payload(0)
    assert len(payload) <= CONNECTED_MAX_BYTES, f"connected is {len(payload)} bytes"
    snap = json.loads(payload)
    assert cut_lengths(snap) == {2048}
    for pending, event in zip(snap["pending_confirmations"], events, strict=True):
        assert pending["prompt"] == "a" * 2047 + CUT_MARK
        assert (pending["id"], pending["options"]) == (event["id"], event["options"])


def test_connected_stays_under_1_mib_in_the_worst_case_of_the_defaults() -> None:
    """100 running skills and 100 pending confirmations as large as validation allows,
    every character escaped to \\u0001: the frame is at most 1 MiB and lists them all."""
    hub = Hub(epoch="e" * 36, last_seq=2**53 - 1)
    for i in range(MAX_RUNNING_SKILLS):
        start_widest_skill(hub, i)
    for i in range(HubLimits().max_pending):
        accept(hub, widest_confirmation(i), source=i // HubLimits().max_pending_per_source)
    payload = hub.connected_payload(0.000123)
    assert len(payload) <= CONNECTED_MAX_BYTES, f"connected is {len(payload)} bytes"
    snap = json.loads(payload)
    assert (len(snap["running_skills"]), len(snap["pending_confirmations"])) == (100, 100)
    # Measured: 32 characters fit (16, the shortest cut, leaves room to spare).
    assert cut_lengths(snap) == {32}
    assert hub.stats.snapshot_entries_left_out == 0
    assert all(len(c["options"]) == 16 for c in snap["pending_confirmations"])


def test_connected_leaves_out_what_does_not_fit_with_a_raised_max_pending() -> None:
    """With max_pending raised to 300, what does not fit at the shortest cut is left
    out: running skills first, then the newest confirmations; counted in stats."""
    hub = Hub(epoch="e", limits=HubLimits(max_pending=300, max_pending_per_source=300))
    start_widest_skill(hub, 0)
    ids = [confirm_from(hub, 1, **widest_confirmation(i)) for i in range(300)]
    payload = hub.connected_payload(0)
    assert len(payload) <= CONNECTED_MAX_BYTES, f"connected is {len(payload)} bytes"
    snap = json.loads(payload)
    kept = [c["id"] for c in snap["pending_confirmations"]]
    assert snap["running_skills"] == []
    assert 0 < len(kept) < 300
    assert kept == ids[: len(kept)]
    assert cut_lengths(snap) == {min(SNAPSHOT_CUTS)}
    assert hub.stats.snapshot_entries_left_out == 1 + 300 - len(kept)


def test_connected_snapshot_follows_changes_after_being_built() -> None:
    """Entries are encoded once and kept: a step, an answer, a pause still show."""
    hub = Hub(epoch="e")
    accept(hub, {"type": "skill_started", "skill_name": "s", "skill_id": "k"})
    cid = confirm(hub, timeout_seconds=60)
    other = confirm(hub)
    hub.connected_payload(0)
    accept(hub, {"type": "step_started", "skill_id": "k", "step_name": "two", "step_index": 1})
    hub.answer(response(other), client="c", user_agent=None, wall=WALL, now=0)
    hub.pause(cid, 10)
    snap = hub.connected(20)
    [skill] = snap["running_skills"]
    assert (skill["current_step"], skill["current_step_name"]) == (1, "two")
    [pending] = snap["pending_confirmations"]
    assert (pending["id"], pending["paused"], pending["remaining_seconds"]) == (cid, True, 50)
    assert snap["seq"] == hub.last_seq


def test_event_type_labels_are_bounded() -> None:
    """by_type names the known and daemon-made types, at most 100 others (first
    come), and counts the rest, and a type literally named other, as "other"."""
    hub = Hub(epoch="e")
    for t in sorted(KNOWN_TYPE_LABELS):
        hub.stamp({"type": t}, t, WALL, 0)
    for i in range(150):
        hub.stamp({"type": f"t{i}"}, f"t{i}", WALL, 0)
    for t in ("t0", "t120", "other"):
        hub.stamp({"type": t}, t, WALL, 0)
    by_type = hub.stats.by_type
    others = set(by_type) - KNOWN_TYPE_LABELS - {OTHER_TYPE_LABEL}
    assert others == {f"t{i}" for i in range(MAX_OTHER_TYPE_LABELS)}
    assert by_type["t0"] == 2
    assert by_type[OTHER_TYPE_LABEL] == 50 + 2  # t100..t149, then t120 again and "other"
    assert sum(by_type.values()) == hub.stats.events_out


# -- running skills rebuilt at start (§2.1) ------------------------------------------


def journaled(kind: str, at: float, **fields: Any) -> dict[str, Any]:
    """An event as the journal holds it: its type, fields and the daemon's timestamp."""
    return {"type": kind, **fields, "timestamp": rfc3339_utc(at)}


def test_rebuild_skills_applies_the_live_rules_on_the_events_timestamps() -> None:
    """A running skill comes back with its step and start time; ended and idle ones do not."""
    hub = Hub(epoch="e", last_seq=9)
    events = [
        journaled(
            "skill_started", WALL - 600, skill_id="run", skill_name="start_work", total_steps=3
        ),
        journaled("step_started", WALL - 500, skill_id="run", step_name="fetch", step_index=1),
        journaled("skill_started", WALL - 400, skill_id="done", skill_name="close_issue"),
        journaled("skill_completed", WALL - 300, skill_id="done"),
        journaled("skill_started", WALL - 3700, skill_id="old", skill_name="idle"),
        journaled("skill_started", WALL - 7300, skill_id="heal", skill_name="healed"),
        journaled("auto_heal_triggered", WALL - 3500, skill_id="heal", step_index=0),
    ]
    running = hub.rebuild_skills(events, WALL, 5000.0)
    snapshot = hub.running_skills(5000.0)
    assert running == 2, snapshot
    assert [s["skill_id"] for s in snapshot] == ["run", "heal"], snapshot
    assert snapshot[0]["current_step"] == 1, snapshot[0]
    assert snapshot[0]["current_step_name"] == "fetch", snapshot[0]
    assert snapshot[0]["started_at"] == rfc3339_utc(WALL - 600), snapshot[0]
    assert hub.last_seq == 9, hub.last_seq  # nothing was stamped
    assert hub.stats.events_out == 0, hub.stats.events_out


def test_rebuilt_skill_ages_on_the_monotonic_clock_and_finishes_live() -> None:
    """A rebuilt skill's idle hour counts from its last event; live events still find it."""
    hub = Hub(epoch="e")
    hub.rebuild_skills(
        [journaled("skill_started", WALL - 3000, skill_id="s", skill_name="n")], WALL, 100.0
    )
    assert len(hub.running_skills(100.0 + SKILL_IDLE_SECONDS - 3001)) == 1
    accept(
        hub, {"type": "step_started", "skill_id": "s", "step_name": "b", "step_index": 2}, now=100.0
    )
    assert hub.running_skills(100.0)[0]["current_step"] == 2
    accept(hub, {"type": "skill_completed", "skill_id": "s"}, now=100.0)
    assert hub.running_skills(100.0) == []
    hub.rebuild_skills(
        [journaled("skill_started", WALL - 3000, skill_id="s", skill_name="n")], WALL, 100.0
    )
    left = hub.running_skills(100.0 + SKILL_IDLE_SECONDS - 2999)
    assert left == [], f"{len(left)} skill(s) left 3601 s after their last event"


def test_rebuild_reads_any_timestamp_format_and_carries_unreadable_ones() -> None:
    """An offset timestamp is read; one that cannot be read takes the previous event's."""
    hub = Hub(epoch="e")
    events: list[dict[str, Any]] = [
        {
            "type": "skill_started",
            "skill_id": "a",
            "skill_name": "a",
            "timestamp": "2026-02-04T12:30:00+02:00",
        },  # WALL - 0.123
        {
            "type": "skill_started",
            "skill_id": "b",
            "skill_name": "b",
            "timestamp": rfc3339_utc(WALL - 4000),
        },
        {
            "type": "step_started",
            "skill_id": "b",
            "step_name": "x",
            "step_index": 0,
            "timestamp": "yesterday",
        },
    ]
    assert hub.rebuild_skills(events, WALL, 0.0) == 1
    assert [s["skill_id"] for s in hub.running_skills(0.0)] == ["a"]
