"""Desktop notifications that answer confirmations (PROTOCOL §3.6), with real parts.

A private ``dbus-daemon --session`` and a notification server written here on
``dbus-fast`` (it records ``Notify``/``CloseNotification`` and emits
``ActionInvoked`` like a user's click), an in-process daemon whose environment names
that bus, sources on its Unix socket and websockets clients on its port.  The daemon
talks to the bus through ``desktop-notifier`` itself: nothing of it is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusDict, DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, method, signal

from aaeventd.daemon.app import Daemon
from aaeventd.daemon.desktop import DesktopPlan, session_bus_address
from tests.support import (
    FACTOR,
    TIMEOUT,
    Source,
    connected_client,
    http_get,
    make_config,
    recv_until,
    require,
    run,
    running_daemon,
    samples,
    short_tmpdir,
)

HELLO = {"type": "hello", "name": "desktop-tests", "acks": True}
# A countdown no test waits for.
LONG = 30 * TIMEOUT
SHORT_DELAY = 0.3 * FACTOR


# -- the notification server -------------------------------------------------------

StrList = Annotated[list[str], DBusSignature("as")]
Nothing = Annotated[None, DBusSignature("")]


@dataclass
class Shown:
    id: int
    summary: str
    body: str
    actions: list[str]
    hints: dict[str, Any]
    timeout_ms: int


class NotificationServer(ServiceInterface):
    """org.freedesktop.Notifications, recording what it is asked."""

    def __init__(self, capabilities: list[str]) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.capabilities = capabilities
        self.shown: list[Shown] = []
        self.closed: list[int] = []
        self.changed = asyncio.Event()

    @method()
    def GetCapabilities(self) -> StrList:
        return self.capabilities

    @method()
    def Notify(
        self,
        app_name: DBusStr,
        replaces_id: DBusUInt32,
        app_icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: StrList,
        hints: DBusDict,
        expire_timeout: DBusInt32,
    ) -> DBusUInt32:
        nid = len(self.shown) + 1
        self.shown.append(Shown(nid, summary, body, list(actions), dict(hints), expire_timeout))
        self.changed.set()
        return nid

    @method()
    def CloseNotification(self, nid: DBusUInt32) -> Nothing:
        self.closed.append(nid)
        self.changed.set()
        self.NotificationClosed(nid, 3)

    @method()
    def GetServerInformation(self) -> Annotated[list[str], DBusSignature("ssss")]:
        return ["aaeventd-test", "aaeventd", "1", "1.2"]

    @signal()
    def ActionInvoked(self, nid: int, key: str) -> Annotated[list[Any], DBusSignature("us")]:
        return [nid, key]

    @signal()
    def NotificationClosed(
        self, nid: int, reason: int
    ) -> Annotated[list[int], DBusSignature("uu")]:
        return [nid, reason]

    async def wait_for(self, what: str, pred: Callable[[], bool]) -> None:
        """Until ``pred()`` holds (checked on every call recorded), within TIMEOUT."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not pred():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{what}: not within {TIMEOUT}s; shown {self.shown}, closed {self.closed}"
            ) from None


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def bus_address() -> Iterator[str]:
    """A private session bus (``dbus-daemon --session``), stopped after the test."""
    require(shutil.which("dbus-daemon") is not None, "dbus-daemon is missing (Debian package dbus)")
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--print-address", "--nofork"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # "Failed to set fd limit" when not privileged
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("unix:"), f"dbus-daemon printed {address!r}"
        yield address
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.asynccontextmanager
async def notification_server(
    address: str, capabilities: tuple[str, ...] = ("actions", "body")
) -> AsyncIterator[NotificationServer]:
    bus = await MessageBus(bus_address=address).connect()
    server = NotificationServer(list(capabilities))
    bus.export("/org/freedesktop/Notifications", server)
    await bus.request_name("org.freedesktop.Notifications")
    try:
        yield server
    finally:
        bus.disconnect()


@contextlib.asynccontextmanager
async def desktop_daemon(tmp: Path, env: dict[str, str], **desktop: Any) -> AsyncIterator[Daemon]:
    config = make_config(tmp, desktop=desktop)
    async with running_daemon(config, env=env) as d:
        yield d


async def wait_active(d: Daemon) -> None:
    """Until the daemon's first connection attempt (in its task group) has ended: on."""
    async with asyncio.timeout(TIMEOUT):
        await d.desktop.tried.wait()
    assert d.desktop.active, d.desktop.health()


async def ask(src: Source, **fields: Any) -> dict[str, Any]:
    await src.send({"type": "confirmation_required", "message": "Deploy?", **fields})
    ack = await src.recv()
    assert ack["type"] == "ack", ack
    return ack


async def healthz(d: Daemon) -> dict[str, Any]:
    status, body = await http_get(d.ws_port, "/healthz")
    assert status == 200, (status, body)
    health: dict[str, Any] = json.loads(body)
    return health


# -- the plan (pure) ---------------------------------------------------------------------


def test_plan_shows_unreached_confirmations_at_once_and_others_after_the_delay() -> None:
    """delivered 0: due at once; delivered 1: due notify_after later; an answer withdraws."""
    plan = DesktopPlan(notify_after=10.0)
    plan.observe("confirmation_required", {"id": "a"}, 0, now=100.0)
    plan.observe("confirmation_required", {"id": "b"}, 1, now=100.0)
    assert [p.id for p in plan.take_due(100.0)] == ["a"], plan.pending
    assert plan.next_due() == 110.0, plan.next_due()
    assert [p.id for p in plan.take_due(110.0)] == ["b"], plan.pending
    assert plan.observe("confirmation_answered", {"id": "a"}, 1, now=111.0) == ["a"]
    assert plan.observe("confirmation_expired", {"id": "b"}, 1, now=111.0) == ["b"]
    assert plan.pending == {}, plan.pending


def test_plan_rate_limits_other_types_to_one_a_second() -> None:
    """notify_types: one shown a second, the rest dropped and counted."""
    plan = DesktopPlan(notify_after=10.0, types=("skill_f*",))
    for t in (0.0, 0.2, 0.5, 1.0, 1.1):
        plan.observe("skill_failed", {}, 1, now=t)
    plan.observe("skill_started", {}, 1, now=3.0)
    assert len(plan.take_extras()) == 2, plan.extras
    assert plan.extras_dropped == 3, plan.extras_dropped


def test_session_bus_address_falls_back_to_the_runtime_dir(tmp_path: Path) -> None:
    """$DBUS_SESSION_BUS_ADDRESS first, else $XDG_RUNTIME_DIR/bus when it exists."""
    assert session_bus_address({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}) == "unix:path=/x"
    assert session_bus_address({"XDG_RUNTIME_DIR": str(tmp_path)}) is None
    (tmp_path / "bus").touch()
    got = session_bus_address({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert got == f"unix:path={tmp_path}/bus", got


# -- end to end ---------------------------------------------------------------------------


def test_click_answers_at_the_source_and_an_answer_elsewhere_withdraws(
    bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Shown at once (delivered 0), buttons per option, click answers; other path withdraws."""
    caplog.set_level(logging.INFO, logger="aaeventd.audit")

    async def body() -> None:
        with short_tmpdir() as tmp:
            env = {"DBUS_SESSION_BUS_ADDRESS": bus_address}
            async with (
                notification_server(bus_address) as server,
                desktop_daemon(tmp, env, notify_after_seconds=LONG) as d,
                await Source.connect(d.socket_path, hello=HELLO) as src,
            ):
                await wait_active(d)
                ack = await ask(
                    src,
                    options=["approve", "reject"],
                    skill_name="deploy",
                    step_name="push",
                    timeout_seconds=120,
                )
                assert ack["delivered"] == 0, ack
                await server.wait_for("shown at once", lambda: len(server.shown) == 1)
                shown = server.shown[0]
                assert shown.summary == "deploy: push", shown
                assert shown.body == "Deploy?", shown
                pairs = dict(zip(shown.actions[1::2], shown.actions[::2], strict=True))
                buttons = [label for label, key in pairs.items() if key != "default"]
                assert buttons == ["approve", "reject"], shown.actions
                assert shown.hints["urgency"].value == 2, shown.hints
                assert 110_000 <= shown.timeout_ms <= 120_000, shown.timeout_ms
                # A second one, which a WebSocket client will answer.
                second = await ask(src, options=["yes", "no"], timeout_seconds=120)
                await server.wait_for("second shown", lambda: len(server.shown) == 2)
                async with connected_client(d) as (ws, first):
                    pending = [p["id"] for p in first["pending_confirmations"]]
                    assert pending == [ack["id"], second["id"]], first
                    server.ActionInvoked(shown.id, pairs["reject"])  # the user's click
                    response = await src.recv_type("confirmation_response")
                    assert response == {
                        "type": "confirmation_response",
                        "id": ack["id"],
                        "response": "reject",
                        "remember": "none",
                    }, response
                    answered = await recv_until(ws, lambda m: m["type"] == "confirmation_answered")
                    assert answered["answered_by"]["client"] == "desktop", answered
                    assert answered["id"] == ack["id"], answered
                    await ws.send(
                        json.dumps(
                            {"type": "confirmation_response", "id": second["id"], "response": "no"}
                        )
                    )
                    nid = server.shown[1].id
                    await server.wait_for("withdrawn", lambda: nid in server.closed)
                    # The clicked one was closed by the server itself, not withdrawn.
                    assert server.closed == [nid], server.closed
                health = await healthz(d)
                assert health["desktop"] == {"active": True, "error": None}, health
        audit = [r.getMessage() for r in caplog.records if r.name == "aaeventd.audit"]
        assert any("by client desktop" in line and "'reject'" in line for line in audit), audit

    run(body())


def test_shown_after_notify_after_seconds_when_a_client_got_it(bus_address: str) -> None:
    """delivered 1: not shown at once; shown after notify_after_seconds; withdrawn at stop."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            env = {"DBUS_SESSION_BUS_ADDRESS": bus_address}
            async with notification_server(bus_address) as server:
                async with (
                    desktop_daemon(tmp, env, notify_after_seconds=SHORT_DELAY) as d,
                    await Source.connect(d.socket_path, hello=HELLO) as src,
                    connected_client(d),
                ):
                    await wait_active(d)
                    loop = asyncio.get_running_loop()
                    asked = loop.time()
                    ack = await ask(src, timeout_seconds=LONG)
                    assert ack["delivered"] == 1, ack
                    await server.wait_for("shown after the delay", lambda: len(server.shown) == 1)
                    waited = loop.time() - asked
                    assert waited >= SHORT_DELAY * 0.9, f"shown after {waited:.3f}s"
                nid = server.shown[0].id
                await server.wait_for("withdrawn at stop", lambda: nid in server.closed)

    run(body())


def test_no_session_bus_leaves_the_daemon_fine(caplog: pytest.LogCaptureFixture) -> None:
    """No bus: /healthz desktop.active false with the error, status ok (auto), INFO once."""
    caplog.set_level(logging.INFO, logger="aaeventd.desktop")

    async def body() -> None:
        with short_tmpdir() as tmp:
            env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp}/no-bus"}
            async with (
                desktop_daemon(tmp, env) as d,
                await Source.connect(d.socket_path, hello=HELLO) as src,
            ):
                async with asyncio.timeout(TIMEOUT):
                    await d.desktop.tried.wait()
                health = await healthz(d)
                assert health["desktop"]["active"] is False, health
                assert "no-bus" in health["desktop"]["error"], health
                assert health["status"] == "ok", health
                ack = await ask(src, timeout_seconds=LONG)
                assert ack["delivered"] == 0, ack
        lines = [r for r in caplog.records if r.name == "aaeventd.desktop"]
        assert [r.levelname for r in lines] == ["INFO"], [r.getMessage() for r in lines]

    run(body())


def test_always_without_a_bus_is_degraded(caplog: pytest.LogCaptureFixture) -> None:
    """notify: always and no bus: a WARNING and /healthz status degraded."""
    caplog.set_level(logging.INFO, logger="aaeventd.desktop")

    async def body() -> None:
        with short_tmpdir() as tmp:
            async with desktop_daemon(tmp, {}, notify="always") as d:
                async with asyncio.timeout(TIMEOUT):
                    await d.desktop.tried.wait()
                health = await healthz(d)
                assert health["status"] == "degraded", health
                assert health["desktop"]["active"] is False, health
        levels = [r.levelname for r in caplog.records if r.name == "aaeventd.desktop"]
        assert levels == ["WARNING"], levels

    run(body())


def test_server_without_actions_and_notify_types(bus_address: str) -> None:
    """No "actions" capability: no option buttons; notify_types: one a second, rest counted."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            env = {"DBUS_SESSION_BUS_ADDRESS": bus_address}
            async with (
                notification_server(bus_address, capabilities=("body",)) as server,
                desktop_daemon(tmp, env, notify_types=["skill_f*"]) as d,
                await Source.connect(d.socket_path, hello=HELLO) as src,
            ):
                await wait_active(d)
                await ask(src, options=["approve", "reject"], timeout_seconds=LONG)
                await server.wait_for("shown", lambda: len(server.shown) == 1)
                labels = server.shown[0].actions[1::2]
                assert "approve" not in labels, server.shown[0]
                assert "reject" not in labels, server.shown[0]
                for n in range(2):
                    await src.send({"type": "skill_failed", "skill_id": f"s{n}", "error": "boom"})
                    assert (await src.recv())["type"] == "ack"
                await server.wait_for("skill_failed shown", lambda: len(server.shown) == 2)
                assert server.shown[1].summary == "skill_failed: s0", server.shown[1]
                _, text = await http_get(d.ws_port, "/metrics")
                dropped = samples(text)[("aaeventd_desktop_notifications_dropped_total", ())]
                assert dropped == 1, f"dropped {dropped}"
            assert len(server.shown) == 2, server.shown

    run(body())
