"""The running-skill rules (PROTOCOL §2.1) held by one fixture, for every copy of them.

``tests/fixtures/running_skills.json`` lists event sequences and the running skills
each must leave.  Here the daemon's hub and ``watch --live``'s :class:`LiveView`
(both through :mod:`aaeventd.protocol.skills`) run every case, and so does the hub
rebuilt at start from the journal files; ``tests/test_ui.py`` runs the same cases
through the web UI's JavaScript.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aaeventd.cli.console import LiveView
from aaeventd.daemon.hub import Hub
from aaeventd.daemon.journal import Journal
from aaeventd.daemon.replay import skill_history
from aaeventd.protocol.events import EVENT_ADAPTER
from aaeventd.protocol.skills import skill_key
from tests.support import REPO

FIXTURE = REPO / "tests" / "fixtures" / "running_skills.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
FIELDS = (
    "skill_id",
    "session_id",
    "skill_name",
    "total_steps",
    "current_step",
    "current_step_name",
)
KNOWN_TYPES = {
    "skill_started",
    "step_started",
    "step_completed",
    "step_failed",
    "skill_completed",
    "skill_failed",
    "skill_error",
    "heal_started",
    "heal_completed",
    "persona_changed",
}
WALL = 1_770_201_000.0
IDS = [case["name"] for case in CASES]


def project(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fields the fixture compares, in list order."""
    return [{name: entry.get(name) for name in FIELDS} for entry in entries]


def connected(running: list[dict[str, Any]], seq: int = 0) -> dict[str, Any]:
    return {
        "type": "connected",
        "server": "aaeventd",
        "epoch": "rules",
        "seq": seq,
        "running_skills": running,
        "pending_confirmations": [],
    }


def test_fixture_events_are_valid_events() -> None:
    """Every fixture event passes the daemon's validation, so each case can happen."""
    checked = 0
    for case in CASES:
        for event in case["events"]:
            if event["type"] in KNOWN_TYPES:
                EVENT_ADAPTER.validate_python(event)
                checked += 1
        assert all(skill_key(entry) is not None for entry in case["running"]), case["name"]
    assert checked >= len(CASES), f"only {checked} events validated"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hub_follows_the_fixture(case: dict[str, Any]) -> None:
    """The daemon's running-skills list after each fixture sequence is the fixture's."""
    hub = Hub(epoch="rules")
    for event in case["events"]:
        hub.accept(dict(event), event["type"], source=None, wants_ack=False, wall=WALL, now=0.0)
    got = project(hub.running_skills(0.0))
    assert got == case["running"], f"hub: {got}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_live_view_follows_the_fixture(case: dict[str, Any]) -> None:
    """`watch --live` tracks the same running skills as the daemon for each sequence."""
    view = LiveView()
    view.feed(connected([]), WALL)
    for seq, event in enumerate(case["events"], start=1):
        view.feed({**event, "seq": seq}, WALL)
    got = project(view.running_skills())
    assert got == case["running"], f"LiveView: {got}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_live_view_rebuilds_the_list_from_the_snapshot(case: dict[str, Any]) -> None:
    """After a reconnect, `watch --live` shows the daemon's snapshot of the list as is."""
    hub = Hub(epoch="rules")
    for event in case["events"]:
        hub.accept(dict(event), event["type"], source=None, wants_ack=False, wall=WALL, now=0.0)
    view = LiveView()
    view.feed(connected(hub.running_skills(0.0), hub.last_seq), WALL)
    got = project(view.running_skills())
    assert got == case["running"], f"LiveView from the snapshot: {got}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hub_rebuilt_from_the_journal_follows_the_fixture(case: dict[str, Any], tmp: Path) -> None:
    """After a restart, the list rebuilt from the journal files is the fixture's (§2.1)."""
    live = Hub(epoch="rules")
    stamped = [live.stamp(dict(event), event["type"], WALL, 0.0) for event in case["events"]]
    journal = Journal(tmp, max_file_bytes=4096, max_files=1000, fsync="never")
    journal.open()
    assert journal.append(stamped) == len(stamped)
    journal.close()
    rebuilt = Hub(epoch="rules")
    rebuilt.rebuild_skills(skill_history(journal, WALL + 60), WALL + 60, 60.0)
    got = project(rebuilt.running_skills(60.0))
    assert got == case["running"], f"rebuilt: {got}"
