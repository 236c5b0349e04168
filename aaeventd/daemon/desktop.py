"""Desktop notifications that answer confirmations (PROTOCOL §3.6).

Two parts:

- :class:`DesktopPlan` decides *when*, with no I/O: it is fed the events the daemon
  releases (a ``confirmation_required`` with the number of clients it reached, the
  ``confirmation_answered``/``confirmation_expired`` that end it, the other types that
  ``desktop.notify_types`` names) and the time, and says what to show and to withdraw.
- :class:`DesktopNotifications` is the adapter over ``desktop-notifier`` (freedesktop
  Notifications over the session D-Bus): it connects in a background task (never before
  ``READY=1``), retries at most once a minute, shows and withdraws notifications, and
  turns a click into an answer through the ``answer`` callback the daemon gives it.

Nothing here raises into the daemon: no session bus, no notification server or a D-Bus
error turn the feature off (and :attr:`DesktopNotifications.error` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import math
import os
import webbrowser
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aaeventd.config import DesktopConfig

log = logging.getLogger("aaeventd.desktop")

#: At most one connection attempt a minute while the bus or the server is missing.
RETRY_SECONDS = 60.0
#: Other event types (``desktop.notify_types``): at most one notification a second.
EXTRA_MIN_INTERVAL = 1.0
#: ... and at most this many wait while the bus is unreachable (the rest are dropped).
EXTRAS_WAITING = 10
#: At stop, how long withdrawing what is shown may take (PROTOCOL §5: stop within 5 s).
CLOSE_WAIT = 1.0
#: A bus or notification server that does not answer one call within this long is
#: treated as a D-Bus error (off, and a retry a minute later).
CALL_TIMEOUT = 10.0
APP_NAME = "aaeventd"
_CONFIRMATION_TYPES = frozenset(
    {"confirmation_required", "confirmation_answered", "confirmation_expired"}
)
#: The ``client`` of ``answered_by`` for an answer given by a click (§3.6).
CLIENT_ID = "desktop"


def session_bus_address(env: Mapping[str, str]) -> str | None:
    """The session bus to use: ``$DBUS_SESSION_BUS_ADDRESS``, else ``$XDG_RUNTIME_DIR/bus``
    when that socket exists; ``None`` when there is none."""
    address = env.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return "unix:path=" + os.path.join(runtime, "bus")
    return None


# ---------------------------------------------------------------------------------------
# When (pure)
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Planned:
    """A pending confirmation as the plan sees it."""

    id: str
    event: dict[str, Any]
    due: float
    shown: bool = False


@dataclass(frozen=True, slots=True)
class Show:
    """Show this event of another type (``desktop.notify_types``)."""

    event_type: str
    event: dict[str, Any]


@dataclass(slots=True)
class DesktopPlan:
    """When to show and withdraw; time passed in (monotonic seconds)."""

    notify_after: float
    types: tuple[str, ...] = ()
    pending: dict[str, Planned] = field(default_factory=dict)
    #: Notifications of other types waiting to be shown; one a second at most, the
    #: rest dropped and counted.
    extras: list[Show] = field(default_factory=list)
    extras_dropped: int = 0
    _last_extra: float | None = None

    def observe(
        self, event_type: str, event: dict[str, Any], delivered: int, now: float
    ) -> list[str]:
        """Take one released event; the ids of shown notifications to withdraw."""
        if event_type == "confirmation_required":
            cid = event.get("id")
            if isinstance(cid, str):
                due = now if delivered == 0 else now + self.notify_after
                self.pending[cid] = Planned(cid, event, due)
            return []
        if event_type in ("confirmation_answered", "confirmation_expired"):
            planned = self.pending.pop(str(event.get("id")), None)
            return [planned.id] if planned is not None and planned.shown else []
        if self.types and any(fnmatch.fnmatchcase(event_type, g) for g in self.types):
            recent = self._last_extra is not None and now - self._last_extra < EXTRA_MIN_INTERVAL
            if recent or len(self.extras) >= EXTRAS_WAITING:
                self.extras_dropped += 1
            else:
                self._last_extra = now
                self.extras.append(Show(event_type, event))
        return []

    def take_due(self, now: float) -> list[Planned]:
        """The confirmations to show now (marked shown)."""
        due = [p for p in self.pending.values() if not p.shown and p.due <= now]
        for planned in due:
            planned.shown = True
        return due

    def take_extras(self) -> list[Show]:
        extras, self.extras = self.extras, []
        return extras

    def next_due(self) -> float | None:
        """When :meth:`take_due` next has work (None: only a new event brings some)."""
        return min((p.due for p in self.pending.values() if not p.shown), default=None)

    def clicked(self, cid: str) -> None:
        """The notification of ``cid`` was clicked: the server closed it itself."""
        planned = self.pending.get(cid)
        if planned is not None:
            planned.shown = False
            planned.due = math.inf

    def unshown(self) -> None:
        """The connection was lost: what was shown is gone with it; show it again."""
        for planned in self.pending.values():
            if planned.shown:
                planned.shown = False

    def shown_ids(self) -> Iterator[str]:
        return (p.id for p in self.pending.values() if p.shown)


# ---------------------------------------------------------------------------------------
# The adapter (desktop-notifier)
# ---------------------------------------------------------------------------------------

#: ``answer(confirmation_id, response)``: answer like a client; False when too late.
Answer = Callable[[str, str], bool]


class DesktopNotifications:
    """Shows the plan's notifications over D-Bus; reports clicks to ``answer``."""

    def __init__(
        self,
        config: DesktopConfig,
        env: Mapping[str, str],
        *,
        answer: Answer,
        remaining: Callable[[str], float | None],
        web_url: Callable[[], str],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.env = env
        self.plan = DesktopPlan(config.notify_after_seconds, config.notify_types)
        self._answer = answer
        self._remaining = remaining
        self._web_url = web_url
        self._clock = clock
        self._notifier: Any = None  # desktop_notifier.DesktopNotifier while connected
        self._buttons = False
        self._ids: dict[str, str] = {}  # confirmation id -> notification identifier
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set once the first connection attempt has ended, either way.
        self.tried = asyncio.Event()
        self._logged_unreachable = False
        self.error: str | None = None
        self.shown_total = 0
        self.clicks_total = 0

    # -- what the daemon reads and feeds ------------------------------------------------

    @property
    def active(self) -> bool:
        return self._notifier is not None

    @property
    def degraded(self) -> bool:
        """``always`` and not connected after a try: /healthz says ``degraded``."""
        return self.config.notify == "always" and not self.active and self.error is not None

    def health(self) -> dict[str, Any]:
        return {"active": self.active, "error": self.error}

    def reconfigure(self, config: DesktopConfig) -> None:
        """A reload: new delay and types apply to what comes next."""
        self.config = config
        self.plan.notify_after = config.notify_after_seconds
        self.plan.types = config.notify_types
        self._wakeup.set()

    def observe(self, event_type: str, event: dict[str, Any], delivered: int) -> None:
        """One released event (and how many clients got it)."""
        if self.config.notify == "never":
            return
        if event_type not in _CONFIRMATION_TYPES and not self.plan.types:
            return
        withdraw = self.plan.observe(event_type, event, delivered, self._clock())
        for cid in withdraw:
            self._withdraw_soon(cid)
        self._wakeup.set()

    # -- the background task ------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying once a minute), then show what falls due, until cancelled."""
        while True:
            if self.config.notify == "never":  # until a reload turns it on
                await self._off()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._notifier is None:
                connected = await self._connect()
                self.tried.set()
                if not connected:
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
            self._wakeup.clear()
            # Its own task, shielded: a stop in the middle of a Notify call still
            # learns the notification's id, and close() withdraws it.
            show = self._track(self._show_due())
            try:
                await asyncio.shield(show)
            except Exception as exc:  # a D-Bus error: off, and try again later
                self._lost(exc)
                continue
            due = self.plan.next_due()
            if due is None:
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due):
                        await self._wakeup.wait()

    async def _connect(self) -> bool:
        address = session_bus_address(self.env)
        if address is None:
            self._unreachable(
                "no session bus ($DBUS_SESSION_BUS_ADDRESS and "
                "$XDG_RUNTIME_DIR/bus unset or missing)"
            )
            return False
        from desktop_notifier import Capability, DesktopNotifier

        notifier = DesktopNotifier(app_name=APP_NAME, app_icon=None)
        try:
            # desktop-notifier's D-Bus backend connects to the bus that the process
            # environment names; point it at the daemon's for the time of the connect.
            with _session_address(address):
                async with asyncio.timeout(CALL_TIMEOUT):
                    capabilities = await notifier.get_capabilities()
        except Exception as exc:
            _disconnect(notifier)
            self._unreachable(f"session bus {address}: {_describe(exc)}")
            return False
        self._notifier = notifier
        self._buttons = Capability.BUTTONS in capabilities
        self._ids.clear()
        self.error = None
        self._logged_unreachable = False
        log.info(
            "desktop notifications active on %s (%s)",
            address,
            "buttons" if self._buttons else "no actions: a click opens the web UI",
        )
        return True

    def _unreachable(self, why: str) -> None:
        self.error = why
        if self.config.notify == "always":
            log.warning("desktop notifications off: %s; retrying once a minute", why)
        elif not self._logged_unreachable:
            log.info("desktop notifications off: %s", why)
        self._logged_unreachable = True

    def _lost(self, exc: BaseException) -> None:
        log.warning("desktop notifications off: D-Bus error: %s", _describe(exc))
        self.error = f"D-Bus error: {_describe(exc)}"
        _disconnect(self._notifier)
        self._notifier = None
        self._ids.clear()
        self.plan.unshown()

    async def _show_due(self) -> None:
        notifier = self._notifier
        now = self._clock()
        for planned in self.plan.take_due(now):
            remaining = self._remaining(planned.id)
            if remaining is None:  # answered meanwhile: its end is on its way
                continue
            await self._show_confirmation(notifier, planned, remaining)
        for extra in self.plan.take_extras():
            await self._show_extra(notifier, extra)

    async def _show_confirmation(self, notifier: Any, planned: Planned, remaining: float) -> None:
        from desktop_notifier import Button, Urgency

        event = planned.event
        cid = planned.id
        options = [str(o) for o in event.get("options") or ()]
        buttons = (
            [Button(title=o, on_pressed=functools.partial(self._clicked, cid, o)) for o in options]
            if self._buttons
            else []
        )
        async with asyncio.timeout(CALL_TIMEOUT):
            ident = await notifier.send(
                title=_title(event),
                message=str(event.get("prompt") or event.get("message") or ""),
                urgency=Urgency.Critical,
                buttons=buttons,
                on_clicked=None if self._buttons else self._open_web_ui,
                timeout=max(1, math.ceil(remaining)),
            )
        self._ids[cid] = ident
        self.shown_total += 1
        if cid not in self.plan.pending:  # ended while the call was in flight
            self._withdraw_soon(cid)

    async def _show_extra(self, notifier: Any, extra: Show) -> None:
        from desktop_notifier import Urgency

        event = extra.event
        skill = event.get("skill_name") or event.get("skill_id") or ""
        detail = event.get("error") or event.get("message") or event.get("fix_action") or ""
        async with asyncio.timeout(CALL_TIMEOUT):
            await notifier.send(
                title=f"{extra.event_type}: {skill}" if skill else extra.event_type,
                message=str(detail),
                urgency=Urgency.Normal,
            )
        self.shown_total += 1

    def _clicked(self, cid: str, option: str) -> None:
        self.clicks_total += 1
        self.plan.clicked(cid)
        self._ids.pop(cid, None)
        self._answer(cid, option)

    def _open_web_ui(self) -> None:
        url = self._web_url()
        asyncio.get_running_loop().run_in_executor(None, webbrowser.open, url)

    def _withdraw_soon(self, cid: str) -> None:
        ident = self._ids.pop(cid, None)
        notifier = self._notifier
        if ident is None or notifier is None:
            return
        self._track(self._withdraw(notifier, ident))

    def _track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _withdraw(self, notifier: Any, ident: str) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await notifier.clear(ident)
        except KeyError:  # the server closed it already (a click, its own timeout)
            pass
        except Exception as exc:
            log.warning("desktop notification not withdrawn: %s", _describe(exc))

    async def _off(self) -> None:
        """``never`` (a reload): withdraw, leave the bus, forget the plan."""
        await self.close()
        self.plan.pending.clear()
        self.plan.extras.clear()
        self.error = None

    async def close(self) -> None:
        """At stop: withdraw what is shown (bounded) and leave the bus."""
        notifier = self._notifier
        if notifier is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT):
                while self._tasks:  # shows in flight, and the withdrawals they start
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                for ident in list(self._ids.values()):
                    await self._withdraw(notifier, ident)
        self._notifier = None
        self._ids.clear()
        _disconnect(notifier)


def _title(event: Mapping[str, Any]) -> str:
    skill = event.get("skill_name") or event.get("skill_id") or "aaeventd"
    step = event.get("step_name")
    index = event.get("step_index")
    if step:
        return f"{skill}: {step}"
    if isinstance(index, int):
        return f"{skill}: step {index}"
    return str(skill)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _disconnect(notifier: Any) -> None:
    """Leave the bus desktop-notifier opened (it offers no call for that)."""
    bus = getattr(getattr(notifier, "_backend", None), "bus", None)
    if bus is not None:
        with contextlib.suppress(Exception):
            bus.disconnect()


@contextlib.contextmanager
def _session_address(address: str) -> Iterator[None]:
    old = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = old
