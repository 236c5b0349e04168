"""Type filters with ``!`` exclusions (PROTOCOL §2): the daemon's TypeFilter, the web UI's
filter box (app.js, run in Node) and ``aaeventd watch --types`` against a real daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import types
from pathlib import Path

from aaeventd.protocol.filters import TypeFilter
from tests.support import (
    TIMEOUT,
    DaemonProcess,
    StderrLines,
    aaeventd_cmd,
    daemon_process,
    reap,
    require,
    short_tmpdir,
    subprocess_env,
)

REPO = Path(__file__).resolve().parent.parent
CASES = json.loads((REPO / "tests" / "fixtures" / "type_filters.json").read_text("utf-8"))["cases"]
APP_JS = REPO / "aaeventd" / "daemon" / "static" / "app.js"


def wrong_answers(matches: dict[str, dict[str, bool]]) -> list[tuple[str, str, bool]]:
    """The (filter, type, answer) triples that contradict the fixture."""
    wrong = []
    for case in CASES:
        got = matches[case["filter"]]
        for kind, want in (("pass", True), ("block", False)):
            wrong += [(case["filter"], t, got[t]) for t in case[kind] if got[t] is not want]
    return wrong


def test_daemon_filter_follows_the_fixture() -> None:
    """TypeFilter.from_query answers every case of tests/fixtures/type_filters.json."""
    matches = {}
    for case in CASES:
        type_filter = TypeFilter.from_query(case["filter"])
        matches[case["filter"]] = {t: type_filter.matches(t) for t in case["pass"] + case["block"]}
    wrong = wrong_answers(matches)
    assert wrong == [], f"{len(wrong)} wrong answers: {wrong}"


def test_exclusion_only_filter_is_not_match_all() -> None:
    """``!step_*`` alone is not "every type" (replays must filter), ``*`` and ``!`` are."""
    assert not TypeFilter(["!step_*"]).matches_all
    assert not TypeFilter(["*", "!step_*"]).matches_all
    assert TypeFilter(["*", "!"]).matches_all


def test_web_ui_filter_follows_the_fixture() -> None:
    """app.js's compileFilter (run in Node) answers every case the daemon does."""
    node = shutil.which("node")
    require(node is not None, "node is needed to run app.js's filter")
    assert node is not None
    text = APP_JS.read_text(encoding="utf-8")
    parts = [
        re.search(r"^function globToRegExp\(.*?^\}$", text, re.M | re.S),
        re.search(r"^const NEVER = .*?;$", text, re.M),
        re.search(r"^function compileFilter\(.*?^\}$", text, re.M | re.S),
    ]
    assert all(parts), "app.js no longer has globToRegExp, NEVER and compileFilter"
    script = (
        "\n".join(p[0] for p in parts if p)
        + """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = {};
for (const c of cases) {
  const f = compileFilter(c.filter);
  out[c.filter] = Object.fromEntries([...c.pass, ...c.block].map((t) => [t, f(t)]));
}
process.stdout.write(JSON.stringify(out));
"""
    )
    done = subprocess.run(
        [node, "-e", script],
        input=json.dumps(CASES),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wrong = wrong_answers(json.loads(done.stdout))
    assert wrong == [], f"{len(wrong)} wrong answers in app.js: {wrong}"


def wait_for_one_client(d: DaemonProcess) -> None:
    """Until /healthz counts one client (each check a real request), on a deadline."""
    deadline = time.monotonic() + TIMEOUT
    while (count := d.client_count()) < 1:
        assert time.monotonic() < deadline, f"{count} clients after {TIMEOUT}s"


def test_watch_types_excludes_steps() -> None:
    """``aaeventd watch --types '!step_*'`` against a real daemon prints all but steps."""
    sent = ["skill_started", "step_started", "step_completed", "heal_applied", "skill_completed"]
    with daemon_process() as d, short_tmpdir() as tmp:
        watch = subprocess.Popen(
            aaeventd_cmd("watch", "--url", d.url, "--types", "!step_*", "--json"),
            env=subprocess_env(tmp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # stdout read line by line by a thread: a wait with a deadline, never a hang.
        out = StderrLines(types.SimpleNamespace(stderr=watch.stdout))  # type: ignore[arg-type]
        try:
            wait_for_one_client(d)
            lines = "".join(
                json.dumps({"type": kind, "skill_name": "s", "step_name": "x", "step_index": 0})
                + "\n"
                for kind in sent
            )
            emit = subprocess.run(
                aaeventd_cmd("emit", "-"),
                input=lines,
                env=subprocess_env(tmp, AAEVENTD_SOCKET=str(d.socket_path)),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert emit.returncode == 0, emit.stderr
            out.wait_for("skill_completed")
            seen = [json.loads(line)["type"] for line in out.lines]
        finally:
            reap(watch)
            out.join()
            assert watch.stdout is not None
            watch.stdout.close()
    assert seen == ["skill_started", "heal_applied", "skill_completed"], seen
