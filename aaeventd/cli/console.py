"""What the CLI shows on a terminal, as text: pure functions and the live view's state.

Owns the formatting of one event line (``watch``), of ``/healthz`` (``status``) and of
``/clients`` (``clients``), and :class:`LiveView`, the state behind ``watch --live``:
it is fed the frames a WebSocket client receives and renders running skills, pending
confirmations and the last events as lines that fit a given terminal size.

Must not do I/O: no printing, no sockets, no clock.  Time comes in as ``now`` (Unix
seconds, the clock the daemon's timestamps use); the CLI writes what this returns.
Strings from sources go through :func:`printable`, so an event cannot move the cursor,
clear the screen or break a line on the user's terminal.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aaeventd.protocol.skills import SKILL_END_TYPES, STEP_TYPES, find_skill, name_of, skill_key

# Same rules as the daemon's running-skills list (PROTOCOL §2.1).
HEAL_START_TYPES = frozenset({"heal_started", "auto_heal_triggered"})
HEAL_END_TYPES = frozenset({"heal_completed", "auto_heal_completed"})
CONFIRMATION_END_TYPES = frozenset({"confirmation_answered", "confirmation_expired"})
MAX_SKILLS = 100
SKILL_IDLE_SECONDS = 3600.0

# C0 and C1 control characters and DEL, shown escaped instead of sent to the terminal.
_CONTROL = {
    code: json.dumps(chr(code))[1:-1] if code < 0x80 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0))
}


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\u001b``): one safe line."""
    return text.translate(_CONTROL)


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide East Asian characters 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def fit(text: str, width: int, *, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``width`` cells, ending in ``ellipsis`` when cut."""
    if width <= 0:
        return ""
    if display_width(text) <= width:
        return text
    room = width - display_width(ellipsis)
    if room < 0:
        return ellipsis[:width] if display_width(ellipsis[:width]) <= width else ""
    out: list[str] = []
    used = 0
    for char in text:
        cells = 0 if unicodedata.combining(char) else display_width(char)
        if used + cells > room:
            break
        out.append(char)
        used += cells
    return "".join(out) + ellipsis


def format_duration(seconds: float) -> str:
    """A short human duration: ``42s``, ``5m 07s``, ``2h 03m 04s``, ``3d 04h 05m``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_bytes(count: int) -> str:
    """``512 B``, ``1.5 KiB``, ``4.0 MiB``."""
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def _value(value: Any) -> str:
    # JSON escapes C0 controls inside strings, not DEL and C1: printable() does.
    return printable(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def format_event(event: dict[str, Any]) -> str:
    """One readable line: ``seq time type key=value ...``.

    String values are shown as is, others as JSON; control characters are escaped
    (a newline or an escape sequence from a source stays on its line, inert).
    """
    seq = event.get("seq", "-")
    stamp = str(event.get("timestamp", ""))
    clock = stamp[11:23] if len(stamp) >= 23 else stamp
    skip = {"type", "seq", "timestamp"}
    rest = " ".join(f"{printable(k)}={_value(v)}" for k, v in event.items() if k not in skip)
    kind = printable(str(event.get("type")))
    return f"{printable(str(seq)):>6} {printable(clock):12} {kind} {rest}".rstrip()


# -- status (/healthz) ---------------------------------------------------------------

# /healthz keys in display order, with their labels (PROTOCOL §6).
_HEALTH_LABELS = {
    "status": "status",
    "server": "server",
    "version": "version",
    "uptime_seconds": "uptime",
    "epoch": "epoch",
    "seq": "seq",
    "clients": "clients",
    "sources": "sources",
    "pending_confirmations": "pending confirmations",
    "running_skills": "running skills",
    "port": "port",
    "socket_path": "socket",
    "journal": "journal",
    "last_error": "last error",
}


def format_health(health: dict[str, Any], ui_link: str | None = None) -> list[str]:
    """``/healthz`` as aligned ``label: value`` lines, the uptime humanised.

    Keys this version does not know come after the known ones, under their own name;
    ``ui_link``, when given, is the last line (``web UI:``).
    """
    pairs: list[tuple[str, str]] = []
    for key, label in _HEALTH_LABELS.items():
        if key not in health:
            continue
        value = health[key]
        if key == "uptime_seconds" and isinstance(value, int | float):
            shown = format_duration(value)
        elif value is None:
            shown = "none"
        else:
            shown = _value(value)
        pairs.append((label, shown))
    pairs.extend(
        (printable(key).replace("_", " "), "none" if value is None else _value(value))
        for key, value in health.items()
        if key not in _HEALTH_LABELS
    )
    if ui_link is not None:
        pairs.append(("web UI", printable(ui_link)))
    width = max((len(label) for label, _ in pairs), default=0) + 1
    return [f"{label + ':':<{width}} {value}".rstrip() for label, value in pairs]


# -- clients (/clients) --------------------------------------------------------------

USER_AGENT_WIDTH = 40


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal cells."""
    return text + " " * max(0, width - display_width(text))


def table(
    headers: list[str], rows: list[list[str]], *, right: frozenset[int] = frozenset()
) -> list[str]:
    """Aligned columns two spaces apart; the columns in ``right`` are right-aligned."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = []
    for row in [headers, *rows]:
        cells = []
        for i, cell in enumerate(row):
            spaces = " " * (widths[i] - display_width(cell))
            cells.append(spaces + cell if i in right else cell + spaces)
        lines.append("  ".join(cells).rstrip())
    return lines


def _since(stamp: Any) -> str:
    """``2026-02-04T10:30:00.123Z`` shown as ``2026-02-04 10:30:00Z``."""
    if not isinstance(stamp, str):
        return "-" if stamp is None else _value(stamp)
    if len(stamp) >= 19 and stamp[10] == "T":
        return f"{stamp[:10]} {stamp[11:19]}Z"
    return printable(stamp)


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else _value(value)


def format_clients(view: dict[str, Any]) -> list[str]:
    """``/clients`` as two aligned tables: WebSocket clients, then sources."""
    clients = view.get("clients") or []
    sources = view.get("sources") or []
    lines = [f"clients ({len(clients)})"]
    if clients:
        rows = []
        for c in clients:
            globs = c.get("filter") or []
            agent = c.get("user_agent")
            rows.append(
                [
                    _cell(c.get("id")),
                    _cell(c.get("address")),
                    fit(_cell(agent), USER_AGENT_WIDTH),
                    ",".join(printable(str(g)) for g in globs) if globs else "*",
                    _since(c.get("connected_since")),
                    _cell(c.get("frames_sent")),
                    format_bytes(b) if isinstance(b := c.get("backlog_bytes"), int) else _cell(b),
                ]
            )
        headers = ["ID", "ADDRESS", "USER AGENT", "FILTER", "SINCE", "FRAMES", "BACKLOG"]
        lines += ["  " + line for line in table(headers, rows, right=frozenset({5, 6}))]
    else:
        lines.append("  none")
    lines.append(f"sources ({len(sources)})")
    if sources:
        rows = [
            [
                _cell(s.get("pid")),
                _cell(s.get("uid")),
                _cell(s.get("name")),
                _cell(s.get("executable")),
                _cell(s.get("unit")),
                _since(s.get("connected_since")),
                _cell(s.get("events_accepted")),
                _cell(s.get("errors")),
                _cell(s.get("dropped_replies")),
            ]
            for s in sources
        ]
        headers = [
            "PID",
            "UID",
            "NAME",
            "EXECUTABLE",
            "UNIT",
            "SINCE",
            "EVENTS",
            "ERRORS",
            "DROPPED",
        ]
        right = frozenset({0, 1, 6, 7, 8})
        lines += ["  " + line for line in table(headers, rows, right=right)]
    else:
        lines.append("  none")
    return lines


# -- watch --live ----------------------------------------------------------------------


@dataclass(slots=True)
class _Skill:
    key: str
    skill_id: str | None
    session_id: str | None
    skill_name: str | None
    total_steps: int | None
    step_index: int | None  # 0-based, as sent
    step_name: str | None
    steps_done: int
    started: float
    last_event: float
    failed_step: bool = False
    healing: str | None = None


@dataclass(slots=True)
class _Confirmation:
    id: str
    prompt: str
    options: list[str]
    deadline: float  # when running: now + what was left
    paused_left: float | None  # paused: what is left, frozen
    skill_name: str | None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    """A JSON integer ≥ 0 (booleans are not integers in JSON)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _parse_time(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class LiveView:
    """What ``watch --live`` shows, rebuilt from the frames a client receives.

    Feed every frame with :meth:`feed` (the ``connected`` snapshot first) and draw
    :meth:`render`.  A ``connected`` frame replaces the skills and confirmations: the
    snapshot is the daemon's state at its ``seq``, so events replayed after it with a
    ``seq`` at or below that one only go to the event list.  Skills follow the daemon's
    rules (PROTOCOL §2.1): keyed by ``skill_id``, else ``session_id``, else
    ``skill_name``; gone on ``skill_completed``/``skill_failed``/``skill_error``.
    Confirmations count down from ``remaining_seconds`` (snapshot) or
    ``timeout_seconds`` (live) as of the ``now`` they were fed at.  Pauses are not
    broadcast, so "paused" is what the last snapshot said.

    Args:
        max_events: how many event lines are kept for the bottom of the screen.
        ascii: draw the bars as ``[####....]`` and cut lines with ``~`` (for
            terminals that cannot show Unicode block characters).
    """

    # Limits
    BAR_CELLS = 20

    def __init__(self, *, max_events: int = 500, ascii: bool = False) -> None:
        self.ascii = ascii
        self.status = "connecting"
        self.seq: int | None = None
        self._snapshot_seq = 0
        self._skills: OrderedDict[str, _Skill] = OrderedDict()
        self._confirmations: dict[str, _Confirmation] = {}
        self._events: deque[str] = deque(maxlen=max_events)

    # -- input -------------------------------------------------------------------------

    def feed(self, frame: dict[str, Any], now: float) -> None:
        """Take one frame received at ``now`` (Unix seconds)."""
        kind = frame.get("type")
        if kind == "connected":
            self._connected(frame, now)
            return
        if kind == "replay_gap":
            self._events.append(self._gap_line(frame))
            return
        self._events.append(format_event(frame))
        seq = _count(frame.get("seq"))
        if seq is None:  # a control reply (error): nothing to track
            return
        self.seq = max(self.seq or 0, seq)
        if seq <= self._snapshot_seq:  # already part of the snapshot
            return
        if not isinstance(kind, str):
            return
        if kind == "confirmation_required":
            self._confirmation_required(frame, now)
        elif kind in CONFIRMATION_END_TYPES:
            self._confirmations.pop(str(frame.get("id")), None)
        self._track_skill(kind, frame, now)

    def _connected(self, frame: dict[str, Any], now: float) -> None:
        self._snapshot_seq = _count(frame.get("seq")) or 0
        self.seq = self._snapshot_seq
        self._skills.clear()
        for item in frame.get("running_skills") or []:
            if not isinstance(item, dict):
                continue
            key = skill_key(item)
            if key is None:
                continue
            index = _count(item.get("current_step"))
            started = _parse_time(item.get("started_at"))
            self._skills[key] = _Skill(
                key=key,
                skill_id=name_of(item.get("skill_id")),
                session_id=name_of(item.get("session_id")),
                skill_name=name_of(item.get("skill_name")),
                total_steps=_count(item.get("total_steps")),
                step_index=index,
                step_name=_str(item.get("current_step_name")),
                steps_done=index or 0,
                started=now if started is None else min(started, now),
                last_event=now,
            )
        self._confirmations.clear()
        for item in frame.get("pending_confirmations") or []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            left = item.get("remaining_seconds")
            left = float(left) if isinstance(left, int | float) else 0.0
            self._confirmations[item["id"]] = _Confirmation(
                id=item["id"],
                prompt=_str(item.get("prompt")) or _str(item.get("message")) or "",
                options=[str(o) for o in item.get("options") or []],
                deadline=now + left,
                paused_left=left if item.get("paused") else None,
                skill_name=_str(item.get("skill_name")),
            )

    def _confirmation_required(self, frame: dict[str, Any], now: float) -> None:
        cid = frame.get("id")
        if not isinstance(cid, str):
            return
        timeout = frame.get("timeout_seconds")
        timeout = float(timeout) if isinstance(timeout, int | float) else 0.0
        self._confirmations[cid] = _Confirmation(
            id=cid,
            prompt=_str(frame.get("prompt")) or _str(frame.get("message")) or "",
            options=[str(o) for o in frame.get("options") or []],
            deadline=now + timeout,
            paused_left=None,
            skill_name=_str(frame.get("skill_name")),
        )

    def running_skills(self) -> list[dict[str, Any]]:
        """The skills it tracks, oldest start first, as ``running_skills`` entries of
        the ``connected`` frame (the fields both keep; idle ones included)."""
        return [
            {
                "skill_id": s.skill_id,
                "session_id": s.session_id,
                "skill_name": s.skill_name,
                "total_steps": s.total_steps,
                "current_step": s.step_index,
                "current_step_name": s.step_name,
            }
            for s in self._skills.values()
        ]

    def _find_skill(self, event: dict[str, Any]) -> _Skill | None:
        return find_skill(self._skills.values(), event)

    def _track_skill(self, kind: str, event: dict[str, Any], now: float) -> None:
        if kind == "skill_started":
            key = skill_key(event)
            if key is None:
                return
            self._skills.pop(key, None)
            self._skills[key] = _Skill(
                key=key,
                skill_id=name_of(event.get("skill_id")),
                session_id=name_of(event.get("session_id")),
                skill_name=name_of(event.get("skill_name")),
                total_steps=_count(event.get("total_steps")),
                step_index=None,
                step_name=None,
                steps_done=0,
                started=now,
                last_event=now,
            )
            while len(self._skills) > MAX_SKILLS:
                self._skills.popitem(last=False)
            return
        skill = self._find_skill(event)
        if skill is None:
            return
        skill.last_event = now
        if kind in SKILL_END_TYPES:
            del self._skills[skill.key]
            return
        if kind in HEAL_START_TYPES:
            skill.healing = _str(event.get("tool_name")) or "auto-heal"
        elif kind in HEAL_END_TYPES:
            skill.healing = None
        if kind not in STEP_TYPES:
            return
        if "total_steps" in event and _count(event["total_steps"]) is not None:
            skill.total_steps = _count(event["total_steps"])
        index = _count(event.get("step_index"))
        if index is None:
            return
        if kind == "step_started":
            skill.step_index = index
            skill.step_name = _str(event.get("step_name"))
            skill.failed_step = False
            skill.steps_done = max(skill.steps_done, index)
        elif kind == "step_completed":
            skill.steps_done = max(skill.steps_done, index + 1)
        elif index == skill.step_index:  # step_failed of the current step
            skill.failed_step = True

    @staticmethod
    def _gap_line(frame: dict[str, Any]) -> str:
        if frame.get("reason") == "epoch_changed":
            return "     - replay gap: the journal changed (epoch); showing the current state"
        return (
            f"     - replay gap: events {_value(frame.get('from'))}-{_value(frame.get('to'))}"
            " are no longer kept"
        )

    # -- output ------------------------------------------------------------------------

    def render(self, now: float, width: int, height: int) -> list[str]:
        """At most ``height`` lines of at most ``width`` cells: header, running skills,
        pending confirmations, then as many of the last events as fit."""
        if width <= 0 or height <= 0:
            return []
        skills = [s for s in self._skills.values() if now - s.last_event <= SKILL_IDLE_SECONDS]
        confirmations = list(self._confirmations.values())
        seq = "-" if self.seq is None else str(self.seq)
        lines = [
            f"aaeventd  seq {seq}  {len(skills)} running  {len(confirmations)} pending"
            f"  [{printable(self.status)}]"
        ]
        lines.append(f"Running skills ({len(skills)})" if skills else "Running skills: none")
        lines += [self._skill_line(s, now, width) for s in skills]
        lines.append(
            f"Pending confirmations ({len(confirmations)})"
            if confirmations
            else "Pending confirmations: none"
        )
        lines += [self._confirmation_line(c, now) for c in confirmations]
        room = height - len(lines) - 1
        if room > 0:
            lines.append("Last events")
            lines += list(self._events)[-room:] if self._events else []
        ellipsis = "~" if self.ascii else "…"
        return [fit(line, width, ellipsis=ellipsis) for line in lines[:height]]

    def bar(self, done: int, total: int | None, cells: int) -> str:
        """A progress bar ``cells`` wide: Unicode blocks (eighths), or ``[###...]``."""
        fraction = 0.0 if not total else min(1.0, max(0.0, done / total))
        if self.ascii:
            inner = max(1, cells - 2)
            filled = math.floor(fraction * inner + 0.5)
            return "[" + "#" * filled + "." * (inner - filled) + "]"
        eighths = math.floor(fraction * cells * 8 + 0.5)
        full, part = divmod(eighths, 8)
        partial = " ▏▎▍▌▋▊▉"[part] if part and full < cells else ""
        return "█" * full + partial + "░" * (cells - full - len(partial))

    def _skill_line(self, skill: _Skill, now: float, width: int) -> str:
        name = skill.skill_name or skill.skill_id or skill.session_id or skill.key
        # Narrow terminals get a shorter bar, not a cut one.
        cells = max(6, min(self.BAR_CELLS, width // 5))
        bar = self.bar(skill.steps_done, skill.total_steps, cells)
        total = "?" if skill.total_steps is None else str(skill.total_steps)
        if skill.step_index is None:
            step = f"step -/{total}"
        else:
            step = f"step {skill.step_index + 1}/{total}"
        name_cells = min(24, max(10, width // 3))
        name = pad(fit(printable(name), name_cells), name_cells)
        parts = [f"  {name}", bar, step, format_duration(now - skill.started)]
        if skill.step_name is not None:
            parts.append(printable(skill.step_name) + (" (failed)" if skill.failed_step else ""))
        if skill.healing is not None:
            parts.append(f"[healing: {printable(skill.healing)}]")
        return "  ".join(parts)

    def _confirmation_line(self, item: _Confirmation, now: float) -> str:
        if item.paused_left is not None:
            left = f"paused, {self.countdown(item.paused_left)} left"
        else:
            left = f"{self.countdown(item.deadline - now)} left"
        options = "/".join(printable(o) for o in item.options)
        where = f"  ({printable(item.skill_name)})" if item.skill_name else ""
        return (
            f"  {left:>16}  {printable(item.prompt)}  [{options}]  id {printable(item.id)}{where}"
        )

    @staticmethod
    def countdown(seconds: float) -> str:
        """Whole seconds left, rounded up (``0s`` only once the time is out)."""
        return format_duration(math.ceil(max(0.0, seconds)))
