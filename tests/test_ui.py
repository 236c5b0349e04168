"""Browser tests of the web UI (``GET /``): aaeventd/daemon/static driven in Debian's Chromium.

The daemon runs as a real subprocess, events come from a real source on its Unix
socket, and Playwright for Python drives ``/usr/bin/chromium`` (its own browser
download is not used).  Every test also checks that the page logged no console
error or warning and threw no uncaught exception.

Without Chromium or Playwright these tests are skipped, except in CI
(``AAEVENTD_CI=1``, set by ``.ci/run``), where that is a failure.
``AAEVENTD_UPDATE_SCREENSHOT=1`` rewrites ``docs/ui.png``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from aaeventd.backoff import backoff
from tests.support import (
    REPO,
    TIMEOUT,
    DaemonProcess,
    daemon_process,
)

CHROMIUM = os.environ.get("AAEVENTD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


MISSING = _missing()
if MISSING is not None and os.environ.get("AAEVENTD_CI") == "1":
    pytest.fail(f"the browser tests must run in CI: {MISSING}", pytrace=False)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(MISSING is not None, reason=f"browser tests: {MISSING}"),
]

if MISSING is None:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Page,
        WebSocketRoute,
        expect,
        sync_playwright,
    )

    expect.set_options(timeout=TIMEOUT * 1000)

TOKEN = "ui-token-0123456789"

# -- the daemon as a subprocess ----------------------------------------------------


def daemon(
    tmp: Path, *, port: int = 0, journal: str = "journal", token: bool = False
) -> contextlib.AbstractContextManager[DaemonProcess]:
    """``aaeventd run`` with a config private to one test (:func:`daemon_process`)."""
    auth = {"token_file": str(tmp / "token")} if token else {}
    return daemon_process(
        tmp,
        websocket={"port": port},
        journal={"directory": str(tmp / journal)},
        auth=auth,
    )


class RawSource:
    """A source on the daemon's Unix socket: NDJSON out, replies read with a deadline."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.buffer = b""
        try:
            self.sock.connect(str(path))
            welcome = self.request({"type": "hello", "name": "ui-test", "acks": True})
        except BaseException:
            self.sock.close()
            raise
        assert welcome["type"] == "welcome", welcome

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")
        return self.read()

    def emit(self, event_type: str, **fields: Any) -> int:
        """Send one event; its seq from the ack."""
        ack = self.request({"type": event_type, **fields})
        assert ack["type"] == "ack", ack
        return int(ack["seq"])

    def read(self) -> dict[str, Any]:
        """The next reply line (the socket timeout is the deadline)."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon closed the source connection"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def source(path: Path) -> Iterator[RawSource]:
    src = RawSource(path)
    try:
        yield src
    finally:
        src.close()


# -- the browser -------------------------------------------------------------------


class Ui:
    """One page of the UI and every console problem it reported."""

    def __init__(
        self,
        context: BrowserContext,
        port: int,
        query: str = "",
        *,
        setup: Callable[[Page], None] | None = None,
    ) -> None:
        self.page: Page = context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        if setup is not None:
            setup(self.page)  # before the page loads: routes, init scripts
        self.page.goto(f"http://127.0.0.1:{port}/{query}")
        self.expect_live()

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console.{message.type}: {message.text}")

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def expect_live(self) -> None:
        expect(self.by("conn-status")).to_have_attribute("data-state", "live")

    def log_seqs(self) -> list[int]:
        """The seq of every log entry, newest first (hidden ones included)."""
        seqs = self.by("log-entry").evaluate_all("els => els.map(e => Number(e.dataset.seq))")
        assert isinstance(seqs, list)
        return seqs

    def assert_clean(self, allowed: re.Pattern[str] | None = None) -> None:
        problems = [p for p in self.problems if allowed is None or not allowed.search(p)]
        assert problems == []


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    try:
        yield ctx
    finally:
        ctx.close()


def ago(seconds: float) -> str:
    """An RFC 3339 UTC timestamp ``seconds`` in the past (sources may send their own)."""
    t = time.time() - seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# -- the page itself -----------------------------------------------------------------


def test_inline_bootstrap_matches_the_content_security_policy() -> None:
    """The CSP's script hash is the inline bootstrap's, and nothing points off the daemon."""
    html = (REPO / "aaeventd" / "daemon" / "static" / "index.html").read_text(encoding="utf-8")
    (script,) = re.findall(r'<script type="module">(.*?)</script>', html, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    (csp,) = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "connect-src 'self';" in csp
    for name in ("index.html", "app.js", "style.css"):
        text = (REPO / "aaeventd" / "daemon" / "static" / name).read_text(encoding="utf-8")
        assert re.findall(r"(?:https?|wss?)://|\binnerHTML\b|\bouterHTML\s*=", text) == [], name


# -- skills ------------------------------------------------------------------------


def test_skill_run_shows_progress_to_completion(tmp: Path, context: BrowserContext) -> None:
    """A skill's card follows its steps to completion, then fades into the history."""
    with daemon(tmp) as d, source(d.socket_path) as src:
        ui = Ui(context, d.port)
        card = ui.by("skill-run-1")
        bar, step = card.get_by_test_id("progress"), card.get_by_test_id("step-text")
        src.emit("skill_started", skill_id="run-1", skill_name="start_work", total_steps=3)
        expect(card.get_by_test_id("skill-name")).to_have_text("start_work")
        expect(step).to_have_text("Starting…")
        expect(bar).to_have_attribute("aria-valuemax", "3")
        expect(bar).to_have_attribute("aria-valuenow", "0")
        for index, name in enumerate(["fetch_issue", "create_branch", "push"]):
            src.emit("step_started", skill_id="run-1", step_name=name, step_index=index)
            expect(step).to_have_text(f"Step {index + 1} of 3 · {name}")
            expect(bar).to_have_attribute("aria-valuenow", str(index))
            src.emit("step_completed", skill_id="run-1", step_name=name, step_index=index)
            expect(step).to_have_text(f"Step {index + 1} of 3 · {name} ✓")
            expect(bar).to_have_attribute("aria-valuenow", str(index + 1))
        expect(ui.by("skills-count")).to_have_text("1")
        src.emit("skill_completed", skill_id="run-1", total_duration_ms=1500)
        expect(card).to_have_attribute("data-status", "completed")
        expect(step).to_have_text("Completed in 1.5 s")
        history = ui.by("history-item")
        expect(history).to_have_count(1)
        expect(history).to_have_attribute("data-status", "completed")
        expect(history).to_have_attribute("data-key", "run-1")
        expect(history).to_contain_text("start_work")
        expect(history).to_contain_text("1.5 s")
        expect(ui.by("skills-count")).to_have_text("0")
        expect(card).to_have_count(0)  # faded out
        ui.assert_clean()


def test_failed_skill_shows_errors_and_renders_event_text_literally(
    tmp: Path, context: BrowserContext
) -> None:
    """step_failed and skill_failed show their errors; markup in events stays text."""
    evil = '<img src=x onerror="document.title=1">'
    with daemon(tmp) as d, source(d.socket_path) as src:
        ui = Ui(context, d.port)
        src.emit("skill_started", skill_name=evil, session_id="s-2", total_steps=2)
        card = ui.by("skill-s-2")
        expect(card.get_by_test_id("skill-name")).to_have_text(evil)
        src.emit("step_failed", skill_name=evil, step_name="lint", step_index=0, error="<b>3</b>")
        expect(card).to_have_attribute("data-status", "step-failed")
        expect(card.get_by_test_id("skill-error")).to_have_text("<b>3</b>")
        src.emit("skill_failed", skill_name=evil, error="ruff found 3 problems")
        history = ui.by("history-item")
        expect(history).to_have_attribute("data-status", "failed")
        expect(history).to_contain_text(evil)
        expect(history).to_contain_text("ruff found 3 problems")
        assert ui.page.locator("img, b").count() == 0
        assert ui.page.title() == "aaeventd"
        ui.assert_clean()


def test_page_opened_mid_run_rebuilds_from_the_connected_snapshot(
    tmp: Path, context: BrowserContext
) -> None:
    """A page opened late shows running skills and pending confirmations from `connected`."""
    with daemon(tmp) as d, source(d.socket_path) as src:
        src.emit("skill_started", skill_name="start_work", skill_id="sw", total_steps=5)
        src.emit("step_started", skill_id="sw", step_name="create_branch", step_index=1)
        src.emit("skill_started", skill_name="review_pr")
        ack = src.request(
            {
                "type": "confirmation_required",
                "id": "c-1",
                "message": "Create branch?",
                "timeout_seconds": 300,
            }
        )
        assert (ack["type"], ack["id"]) == ("ack", "c-1")
        ui = Ui(context, d.port)
        expect(ui.by("skills-count")).to_have_text("2")
        sw = ui.by("skill-sw")
        expect(sw.get_by_test_id("step-text")).to_have_text("Step 2 of 5 · create_branch")
        expect(sw.get_by_test_id("progress")).to_have_attribute("aria-valuenow", "1")
        expect(ui.by("skill-review_pr").get_by_test_id("step-text")).to_have_text("Starting…")
        dialog = ui.by("confirm-c-1")
        expect(dialog.get_by_test_id("confirm-prompt")).to_have_text("Create branch?")
        expect(dialog.get_by_role("button")).to_have_text(["yes", "no"])
        expect(dialog.get_by_test_id("countdown")).to_have_text(re.compile(r"^(29\d|300) s left$"))
        expect(ui.by("last-seq")).to_have_text("4")
        assert ui.log_seqs() == []  # the snapshot is state, not log lines
        ui.assert_clean()


# -- confirmations -----------------------------------------------------------------


def snapshot_paused(port: int, cid: str) -> bool:
    """Whether a fresh client's ``connected`` frame says confirmation ``cid`` is paused."""
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
        connected = json.loads(ws.recv(timeout=TIMEOUT))
    (pending,) = (p for p in connected["pending_confirmations"] if p["id"] == cid)
    return bool(pending["paused"])


def test_confirmation_answer_reaches_the_source_and_closes_everywhere(
    tmp: Path, context: BrowserContext
) -> None:
    """Pointer pauses the countdown; a click answers the source; the other page closes."""
    with daemon(tmp) as d, source(d.socket_path) as src:
        one, two = Ui(context, d.port), Ui(context, d.port)
        ack = src.request(
            {
                "type": "confirmation_required",
                "id": "deploy-1",
                "prompt": "Deploy to stage?",
                "options": ["yes", "no", "later"],
                "default": "no",
                "timeout_seconds": 120,
                "skill_name": "deploy",
                "step_name": "rollout",
                "claude_suggestion": "Yes: all checks passed.",
            }
        )
        assert ack == {"type": "ack", "seq": 1, "delivered": 2, "id": "deploy-1"}
        for ui in (one, two):
            dialog = ui.by("confirm-deploy-1")
            expect(dialog.get_by_test_id("confirm-prompt")).to_have_text("Deploy to stage?")
            expect(dialog.get_by_test_id("confirm-suggestion")).to_contain_text(
                "Yes: all checks passed."
            )
            expect(dialog.get_by_role("button")).to_have_text(["yes", "no", "later"])
            expect(dialog.get_by_test_id("option-no")).to_have_attribute("data-default", "true")
            expect(dialog.get_by_test_id("option-no")).to_be_focused()
            expect(dialog.get_by_test_id("countdown")).to_have_text(re.compile(r"^1[01]\d s left$"))
        dialog = one.by("confirm-deploy-1")
        # data-paused turns true once the daemon has handled pause_timer (a heartbeat
        # barrier), so a client connecting afterwards must see it paused.
        dialog.get_by_test_id("confirm-prompt").hover()
        expect(dialog).to_have_attribute("data-paused", "true")
        expect(dialog.get_by_test_id("countdown")).to_have_text(
            re.compile(r"^Paused · \d+ s left$")
        )
        assert snapshot_paused(d.port, "deploy-1") is True
        one.page.mouse.move(1, 1)
        expect(dialog).to_have_attribute("data-paused", "false")
        assert snapshot_paused(d.port, "deploy-1") is False

        dialog.get_by_test_id("option-yes").click()
        assert src.read() == {
            "type": "confirmation_response",
            "id": "deploy-1",
            "response": "yes",
            "remember": "none",
        }
        one.page.mouse.move(1, 1)
        expect(dialog).to_have_attribute("data-state", "answered")
        expect(dialog.get_by_test_id("confirm-status")).to_have_text("You answered “yes”.")
        other = two.by("confirm-deploy-1")
        expect(other).to_have_attribute("data-state", "answered")
        expect(other.get_by_test_id("confirm-status")).to_contain_text(
            "Answered “yes” in another window"
        )
        expect(other.get_by_role("button")).to_have_count(3)
        for button in other.get_by_role("button").all():
            expect(button).to_be_disabled()
        expect(dialog).to_have_count(0)
        expect(other).to_have_count(0)
        for ui in (one, two):
            expect(ui.by("log-entry").locator(".log-type")).to_have_text(
                ["confirmation_answered", "confirmation_required"]
            )
            ui.assert_clean()


def test_confirmation_expires_and_closes(tmp: Path, context: BrowserContext) -> None:
    """Unanswered, the dialog counts down, says it expired with the default, and closes."""
    with daemon(tmp) as d, source(d.socket_path) as src:
        ui = Ui(context, d.port)
        ack = src.request(
            {
                "type": "confirmation_required",
                "id": "quick",
                "message": "Retry?",
                "options": ["retry", "skip"],
                "default": "skip",
                "timeout_seconds": 1.5,
            }
        )
        assert (ack["type"], ack["delivered"]) == ("ack", 1)
        dialog = ui.by("confirm-quick")
        expect(dialog.get_by_test_id("option-skip")).to_be_focused()
        expect(dialog).to_have_attribute("data-state", "expired")
        assert src.read() == {
            "type": "confirmation_expired",
            "id": "quick",
            "reason": "timeout",
            "response": "skip",
        }
        expect(dialog.get_by_test_id("confirm-status")).to_have_text(
            "Expired: time ran out. The default “skip” applies."
        )
        expect(dialog).to_have_count(0)
        ui.assert_clean()


# -- toasts ------------------------------------------------------------------------


def test_heal_and_persona_events_show_toasts(tmp: Path, context: BrowserContext) -> None:
    """heal_*/auto_heal_* and persona_changed pop toasts; persona and tools reach the header."""
    with daemon(tmp) as d, source(d.socket_path) as src:
        ui = Ui(context, d.port)
        toasts = ui.by("toast")
        src.emit("heal_started", tool_name="k8s_get_pods", error="Unauthorized", fix_action="login")
        expect(toasts).to_have_count(1)
        expect(toasts).to_have_attribute("data-kind", "warning")
        expect(toasts.locator(".toast-title")).to_have_text("Auto-heal started: k8s_get_pods")
        expect(toasts.locator(".toast-text")).to_have_text("Unauthorized → fix: login")
        src.emit("auto_heal_completed", tool_name="k8s_get_pods", fix_action="login", success=True)
        src.emit("auto_heal_triggered", tool_name="jira_get")
        src.emit("heal_completed", tool_name="jira_get", success=False)
        src.emit("persona_changed", persona="developer", previous="researcher")
        src.emit("tools_list_changed", tools=["a", "b", "c"])
        expect(toasts.locator(".toast-title")).to_have_text(
            [
                "Auto-heal started: k8s_get_pods",
                "Auto-heal succeeded",
                "Auto-heal started: jira_get",
                "Auto-heal failed",
                "Persona changed",
            ]
        )
        expect(toasts.nth(1)).to_have_attribute("data-kind", "success")
        expect(toasts.nth(3)).to_have_attribute("data-kind", "error")
        expect(toasts.nth(4).locator(".toast-text")).to_have_text("researcher → developer")
        expect(ui.by("persona")).to_have_text("developer")
        expect(ui.by("tools-count")).to_have_text("3")
        # Dismiss from the keyboard.
        toasts.nth(0).get_by_role("button", name="Dismiss").focus()
        ui.page.keyboard.press("Enter")
        expect(toasts).to_have_count(4)
        expect(toasts.nth(0).locator(".toast-title")).to_have_text("Auto-heal succeeded")
        ui.assert_clean()


# -- the event log -----------------------------------------------------------------


def test_event_log_filter_details_and_pause(tmp: Path, context: BrowserContext) -> None:
    """Type globs filter the log, a click shows the full JSON, pause holds new lines."""
    with daemon(tmp) as d, source(d.socket_path) as src:
        ui = Ui(context, d.port)
        src.emit("skill_started", skill_name="s", skill_id="k")
        src.emit("step_started", skill_id="k", step_name="a", step_index=0)
        src.emit("heal_started", tool_name="t")
        src.emit("persona_changed", persona="p")
        src.emit("custom.thing", note="<script>alert(1)</script>", n=[1, 2])
        shown = ui.page.locator("[data-testid=log-entry]:visible .log-type")
        expect(shown).to_have_text(
            ["custom.thing", "persona_changed", "heal_started", "step_started", "skill_started"]
        )
        expect(ui.by("log-count")).to_have_text("5")

        type_filter = ui.by("type-filter")
        ui.page.keyboard.press("/")  # the keyboard shortcut to the filter
        expect(type_filter).to_be_focused()
        ui.page.keyboard.type("skill_*")
        expect(shown).to_have_text(["skill_started"])
        expect(ui.by("log-count")).to_have_text("1 of 5")
        type_filter.fill("heal_*, persona_*")
        expect(shown).to_have_text(["persona_changed", "heal_started"])
        type_filter.fill("!step_*,!skill_?tarted")
        expect(shown).to_have_text(["custom.thing", "persona_changed", "heal_started"])
        type_filter.fill("custom.*")
        expect(shown).to_have_text(["custom.thing"])

        row = ui.page.locator("[data-testid=log-entry]:visible .log-row")
        row.click()
        expect(row).to_have_attribute("aria-expanded", "true")
        details = ui.by("event-json")
        expect(details).to_be_visible()
        event = json.loads(details.inner_text())
        assert isinstance(event.pop("timestamp"), str)
        assert event == {
            "type": "custom.thing",
            "note": "<script>alert(1)</script>",
            "n": [1, 2],
            "seq": 5,
        }
        row.press("Enter")  # keyboard toggles it closed
        expect(details).to_have_count(0)
        expect(row).to_have_attribute("aria-expanded", "false")

        type_filter.fill("")
        ui.by("log-pause").click()
        expect(ui.by("log-pause")).to_have_attribute("aria-pressed", "true")
        src.emit("tools_list_changed", count=7)
        # The header moves on while the log holds the line back.
        expect(ui.by("last-seq")).to_have_text("6")
        expect(ui.by("tools-count")).to_have_text("7")
        expect(ui.by("log-pause")).to_have_text("Resume (1 new)")
        assert ui.log_seqs() == [5, 4, 3, 2, 1]
        ui.by("log-pause").click()
        expect(shown.first).to_have_text("tools_list_changed")
        assert ui.log_seqs() == [6, 5, 4, 3, 2, 1]
        ui.assert_clean()


# -- connection --------------------------------------------------------------------


def refused_ws(port: int) -> re.Pattern[str]:
    """Chromium's own console line for a refused WebSocket (expected while down)."""
    return re.compile(rf"^console\.error: WebSocket connection to 'ws://127\.0\.0\.1:{port}/ws")


def test_reconnect_after_restart_loses_and_repeats_nothing(
    tmp: Path, context: BrowserContext
) -> None:
    """Across a daemon restart the page reconnects with since/epoch and shows every event once.

    The restarted daemon first wants another token, so the page cannot reconnect
    until events it missed are in the journal; a SIGHUP restoring the token lets it in.
    """
    (tmp / "token").write_text(TOKEN + "\n", encoding="utf-8")
    with daemon(tmp, token=True) as first, source(first.socket_path) as src:
        port = first.port
        ui = Ui(context, port, f"?token={TOKEN}")
        src.emit("skill_started", skill_name="long_job", total_steps=4)
        src.emit("step_started", skill_name="long_job", step_name="one", step_index=0)
        src.emit("persona_changed", persona="a")
        expect(ui.by("log-entry")).to_have_count(3)
        # Sent just before the stop: live or replayed later, each must show once.
        src.emit("step_completed", skill_name="long_job", step_name="one", step_index=0)
        src.emit("tools_list_changed", count=1)
        src.close()
        assert first.stop() == 0
    expect(ui.by("conn-status")).to_have_attribute("data-state", "reconnecting")
    expect(ui.by("reconnect-now")).to_be_visible()

    (tmp / "token").write_text("another-token\n", encoding="utf-8")
    with daemon(tmp, port=port, token=True) as second, source(second.socket_path) as src:
        assert second.port == port
        assert [src.emit("custom.missed", n=n) for n in range(3)] == [6, 7, 8]
        second.stderr.wait_for("refused upgrade /ws")  # the page is knocking
        (tmp / "token").write_text(TOKEN + "\n", encoding="utf-8")
        second.proc.send_signal(signal.SIGHUP)
        second.stderr.wait_for("configuration reloaded")
        second.stderr.wait_for(" since=5")
        ui.expect_live()
        expect(ui.by("reconnect-now")).to_be_hidden()
        expect(ui.by("log-entry")).to_have_count(8)
        assert src.emit("custom.live") == 9
        expect(ui.by("log-entry")).to_have_count(9)
        assert ui.log_seqs() == [9, 8, 7, 6, 5, 4, 3, 2, 1]
        expect(ui.by("last-seq")).to_have_text("9")
        expect(ui.by("gap-banner")).to_be_hidden()
        # The restarted daemon rebuilt long_job from its journal (§2.1): the page shows it,
        # once, at the step it had reached.
        expect(ui.by("skills-count")).to_have_text("1")
        ui.assert_clean(allowed=refused_ws(port))


def test_new_epoch_after_restart_shows_the_gap_banner(tmp: Path, context: BrowserContext) -> None:
    """A daemon back with a new journal (epoch) gets a banner, a rebuilt state and seq 1 again."""
    with daemon(tmp, journal="j1") as first, source(first.socket_path) as src:
        port = first.port
        ui = Ui(context, port)
        src.emit("skill_started", skill_name="job")
        src.emit("custom.before")
        expect(ui.by("log-entry")).to_have_count(2)
        expect(ui.by("skills-count")).to_have_text("1")
        src.close()
        assert first.stop() == 0
    expect(ui.by("conn-status")).to_have_attribute("data-state", "reconnecting")
    with daemon(tmp, port=port, journal="j2") as second, source(second.socket_path) as src:
        second.stderr.wait_for(" since=2")
        ui.expect_live()
        banner = ui.by("gap-banner")
        expect(banner).to_be_visible()
        expect(banner).to_have_attribute("data-reason", "epoch_changed")
        expect(ui.by("gap-text")).to_contain_text("new epoch")
        expect(ui.by("skills-count")).to_have_text("0")
        expect(ui.by("log-separator")).to_have_count(1)
        assert src.emit("custom.after") == 1
        expect(ui.by("log-entry")).to_have_count(3)
        assert ui.log_seqs() == [1, 2, 1]
        ui.by("gap-dismiss").click()
        expect(banner).to_be_hidden()
        ui.assert_clean(allowed=refused_ws(port))


# -- the screenshot ------------------------------------------------------------------


def test_screenshot_mid_run(tmp: Path, browser: Browser) -> None:
    """The UI mid-run (a skill at step 2 of 5, a confirmation, a toast, log lines) renders."""
    update = os.environ.get("AAEVENTD_UPDATE_SCREENSHOT") == "1"
    target = REPO / "docs" / "ui.png" if update else tmp / "ui.png"
    for scheme in ("light", "dark"):
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
        with daemon(tmp) as d, source(d.socket_path) as src:
            try:
                ui = Ui(ctx, d.port)
                run_demo(src, scheme)
                expect(ui.by("history-item")).to_have_count(2)
                expect(ui.page.locator(".skill.is-finishing")).to_have_count(0)
                expect(ui.by("skill-sw-" + scheme).get_by_test_id("step-text")).to_have_text(
                    "Step 2 of 5 · create_branch"
                )
                expect(ui.by("confirm-branch-" + scheme)).to_be_visible()
                expect(ui.by("toast")).to_have_count(2)
                expect(ui.by("log-entry")).to_have_count(16)
                path = target if scheme == "light" else tmp / "ui-dark.png"
                ui.page.screenshot(path=str(path), animations="disabled")
                data = path.read_bytes()
                assert data.startswith(b"\x89PNG\r\n\x1a\n")
                assert len(data) > 20_000
                ui.assert_clean()
            finally:
                ctx.close()


def run_demo(src: RawSource, tag: str) -> None:
    """Events for the screenshot, on a plausible timeline (sources may send timestamps).

    Two skills finished (one failed), two running (one at step 2 of 5), an auto-heal
    under way and a confirmation waiting.
    """
    tr, li, sw, pr = (f"{name}-{tag}" for name in ("tr", "li", "sw", "pr"))
    timeline: list[tuple[float, str, dict[str, Any]]] = [
        (300, "persona_changed", {"persona": "developer", "previous": "researcher"}),
        (299, "tools_list_changed", {"count": 42}),
        (250, "skill_started", {"skill_name": "triage_alerts", "skill_id": tr, "total_steps": 3}),
        (202, "skill_completed", {"skill_id": tr, "total_duration_ms": 48_200}),
        (190, "skill_started", {"skill_name": "lint_all", "skill_id": li, "total_steps": 2}),
        (178, "skill_failed", {"skill_id": li, "error": "ruff: 3 problems in aaeventd/hub.py"}),
        (95, "skill_started", {"skill_name": "start_work", "skill_id": sw, "total_steps": 5}),
        (94, "step_started", {"skill_id": sw, "step_name": "fetch_issue", "step_index": 0}),
        (60, "step_completed", {"skill_id": sw, "step_name": "fetch_issue", "step_index": 0}),
        (59, "step_started", {"skill_id": sw, "step_name": "create_branch", "step_index": 1}),
        (31, "skill_started", {"skill_name": "review_pr", "skill_id": pr, "total_steps": 4}),
        (30, "step_started", {"skill_id": pr, "step_name": "fetch_diff", "step_index": 0}),
        (21, "step_completed", {"skill_id": pr, "step_name": "fetch_diff", "step_index": 0}),
        (20, "step_started", {"skill_id": pr, "step_name": "run_tests", "step_index": 1}),
        (
            4,
            "heal_started",
            {
                "tool_name": "k8s_get_pods",
                "error": "Unauthorized",
                "fix_action": "kube_login",
                "skill_id": pr,
            },
        ),
    ]
    for seconds, event_type, fields in timeline:
        src.emit(event_type, timestamp=ago(seconds), **fields)
    ack = src.request(
        {
            "type": "confirmation_required",
            "id": f"branch-{tag}",
            "message": "Create branch aap-12345-fix-auth from main?",
            "options": ["yes", "no", "skip"],
            "default": "yes",
            "timeout_seconds": 120,
            "skill_id": sw,
            "skill_name": "start_work",
            "step_name": "create_branch",
            "claude_suggestion": "Yes: the issue is assigned to you and no branch exists yet.",
        }
    )
    assert ack["type"] == "ack", ack


# -- the rules the page shares with the daemon -------------------------------------

SKILL_RULES = REPO / "tests" / "fixtures" / "running_skills.json"
APP_JS = REPO / "aaeventd" / "daemon" / "static" / "app.js"

# What a skill card shows: its key, its label, its step line (the ✓ is status, not a
# rule) and the bar's total.
CARDS_JS = """els => els
  .filter(e => !e.classList.contains("is-finishing"))
  .map(e => ({
    key: e.dataset.testid.slice("skill-".length),
    label: e.querySelector('[data-testid="skill-name"]').textContent,
    step: e.querySelector('[data-testid="step-text"]').textContent.replace(/ ✓$/, ""),
    total: e.querySelector('[data-testid="progress"]').getAttribute("aria-valuemax"),
  }))"""


def card_of(entry: dict[str, Any]) -> dict[str, Any]:
    """What the card of a ``running_skills`` entry must show (the page's renderSkill)."""
    key = next(entry[k] for k in ("skill_id", "session_id", "skill_name") if entry[k])
    label = entry["skill_name"] or entry["skill_id"] or entry["session_id"] or key
    total, current, name = entry["total_steps"], entry["current_step"], entry["current_step_name"]
    if current is None:
        step = "Starting…"
    else:
        step = f"Step {current + 1}" + (f" of {total}" if total is not None else "")
        step += f" · {name}" if name else ""
    return {"key": key, "label": label, "step": step, "total": str(total) if total else None}


def test_page_follows_the_running_skill_fixture(tmp: Path, context: BrowserContext) -> None:
    """Each fixture sequence, fed to the page as the daemon's frames, leaves the cards of
    the fixture's running skills; so does the same list sent as a snapshot."""
    cases = json.loads(SKILL_RULES.read_text(encoding="utf-8"))["cases"]
    sockets: list[WebSocketRoute] = []

    def play_daemon(page: Page) -> None:
        # The page's WebSocket talks to this test instead of the daemon.
        page.route_web_socket(re.compile(r"/ws(\?|$)"), on_socket)

    def on_socket(ws: WebSocketRoute) -> None:
        sockets.append(ws)
        ws.send(json.dumps(frame("start", 0, [])))

    def frame(epoch: str, seq: int, running: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "type": "connected",
            "server": "aaeventd",
            "epoch": epoch,
            "seq": seq,
            "running_skills": running,
            "pending_confirmations": [],
        }

    with daemon(tmp) as d:
        ui = Ui(context, d.port, setup=play_daemon)
        (ws,) = sockets
        cards = ui.by("skills").locator("li.skill")
        mismatches = []
        for number, case in enumerate(cases):
            base = 1000 * (number + 1)
            # A new epoch resets the page (skills, seq); then the case's events.
            ws.send(json.dumps(frame(f"live-{number}", base, [])))
            for offset, event in enumerate(case["events"], start=1):
                ws.send(json.dumps({**event, "seq": base + offset}))
            expect(ui.by("last-seq")).to_have_text(str(base + len(case["events"])))
            live = cards.evaluate_all(CARDS_JS)
            ws.send(json.dumps(frame(f"clear-{number}", base + 400, [])))
            snapshot = [{**e, "status": "running"} for e in case["running"]]
            ws.send(json.dumps(frame(f"snapshot-{number}", base + 500, snapshot)))
            expect(ui.by("last-seq")).to_have_text(str(base + 500))
            rebuilt = cards.evaluate_all(CARDS_JS)
            expected = [card_of(entry) for entry in case["running"]]
            if (live, rebuilt) != (expected, expected):
                mismatches.append((case["name"], live, rebuilt, expected))
        ui.assert_clean()
    assert mismatches == [], f"{len(mismatches)} of {len(cases)} cases differ: {mismatches}"


def test_page_backoff_is_the_watch_policy(context: BrowserContext) -> None:
    """app.js's backoff() (run in Chromium) gives aaeventd.backoff's WATCH pauses, in ms."""
    text = APP_JS.read_text(encoding="utf-8")
    policy = re.search(r"^const BACKOFF = \{.*?\};$", text, re.M)
    generator = re.search(r"^function\* backoff\(.*?^\}$", text, re.M | re.S)
    assert policy is not None
    assert generator is not None
    randoms = [0.9, 0.0, 0.3, 0.5, 0.999, 0.1, 0.7, 0.25, 0.6, 0.05, 0.45, 0.8]
    script = f"""randoms => {{
      {policy[0]}
      {generator[0]}
      let i = 0;
      const pauses = backoff(BACKOFF, () => randoms[i++]);
      return randoms.map(() => pauses.next().value);
    }}"""
    page = context.new_page()  # about:blank: nothing else runs
    try:
        got = page.evaluate(script, randoms)
    finally:
        page.close()
    shared = itertools.islice(backoff(random=iter(randoms).__next__), len(randoms))
    expected = [1000 * pause for pause in shared]
    assert got == pytest.approx(expected), f"app.js {got} vs aaeventd.backoff {expected}"
