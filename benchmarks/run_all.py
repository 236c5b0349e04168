"""Run aaeventd's benchmarks and rewrite ``docs/performance.md`` (``make bench``).

What is measured (loopback only, every run bounded in count and time):

* where users live (issue 14's targets), each case alternating the daemon and the
  baseline, 5 runs of each: 4 source processes writing ~300-byte lines, one ``send``
  per line, as fast as the server takes them or paced; counting clients plus one
  probe client that decodes every frame and checks ``seq`` and each source's order
  (no loss, no reordering): 1 client at max rate (events/s), 10 clients at 2,000
  events/s in all (server CPU, p99 latency), 100 clients at max rate (events/s per
  client), the server's RSS per idle client with 1,000 connected; a 200,000-event
  journal replay to one client while live events go to three (their p99 with and
  without the replay); 10 and 1,000 clients at max rate for the plot
  (``docs/performance-clients.svg``, events/s against clients);
* what each change to the per-event pipeline won (issue 14): ``pipeline.py``, in a
  process of its own, times the old and the new way of parsing, validating, stamping
  and logging one ~300-byte line with the package's own functions; and the
  10-client, 2,000 events/s case on uvloop and on asyncio's loop, alternated;
* throughput: one source writes N events (~200 bytes each, ``hello`` with acks off)
  as fast as the Unix socket takes them; events/s = N / (first byte sent -> last event
  received by *every* client), to 1 client and to 100 clients;
* latency: one source at a fixed rate, each event carrying ``t_send``
  (``time.monotonic_ns()``, one clock for every process on the host); p50/p99/max of
  receive time - ``t_send`` over every (event, client) pair;
* the same against a baseline (``baseline_server.py``: ``json.loads``, ``seq``,
  ``json.dumps``, ``websockets.asyncio.server.broadcast``), and the daemon with parts
  switched off, to show what each part costs;
* a cProfile of the daemon in the 100-client throughput scenario;
* the journal's cost: the 1-client burst with each ``journal.fsync`` policy (and the
  journal off), the ``write(2)`` calls counted from ``/proc/PID/io``, and latency at
  1,000 events/s, one per ``sendall``, with ``interval`` and ``always``;
* replay speed: the journal filled with 200,000 events, the daemon restarted (replay
  ring empty), every event replayed to one client with ``since=0``;
* a slow consumer: one source at 5,000 events/s for 10 s to one client measuring
  latency, without and with a second client that never reads (it must be closed with
  1013, ``/metrics`` must count it, and the first client must get every event).

The server under test runs as a subprocess (``python -m aaeventd run --config X``,
its log at INFO going to a file, the journal on with ``fsync: interval``, unless the
scenario says otherwise); the source and the clients run in their own processes
(:mod:`loadgen`).  On two cores they still compete with the server: the figures are
for this machine, not absolute.

Usage::

    .venv/bin/python benchmarks/run_all.py            # everything (~12 min), rewrites the doc
    .venv/bin/python benchmarks/run_all.py --quick    # smaller counts, no doc
    .venv/bin/python benchmarks/run_all.py --only b,c-b --repeat 5   # no doc
    .venv/bin/python benchmarks/run_all.py --only journal,replay,slow   # groups, no doc
    .venv/bin/python benchmarks/run_all.py --only users   # issue 14's targets, no doc
    .venv/bin/python benchmarks/run_all.py --only pipeline,loop   # each change's gain
    .venv/bin/python benchmarks/run_all.py --only p --profile-out /tmp/daemon.prof

Scenario keys: ``u-1``/``u-10``/``u-100``/``u-idle`` (issue 14's targets, the
daemon; ``-c`` appended: the baseline), ``u-busy``/``u-busy-base`` (live latency with
and without a journal replay), ``u-10max``/``u-1000`` (and ``-c``: the plot's other
points), ``u-10-uvloop``/``u-10-asyncio`` (u-10 on each event loop), ``pipeline``
(the in-process micro-benchmark, no server), ``a``/``b`` (daemon, 1/100 clients),
``c-a``/``c-b`` (baseline), ``d-1``/``d-100``/``d-1-c``/``d-100-c`` (latency),
``v-nolog-1``/``v-bare-1``/``v-nolog``/``v-bare`` (daemon without the log line / also
without journal), ``v-wsclient`` (websockets' own client), ``p`` (cProfile of b),
``j-off``/``j-never``/``j-interval``/``j-always`` (as v-nolog-1 with that fsync policy, or no
journal), ``j-paced-interval``/``j-paced-always`` (1,000 events/s, logging WARNING),
``r`` (replay), ``s-base``/``s-slow`` (slow consumer, without/with the stalled
client).  Groups: ``users`` (issue 14's u-* keys), ``idle``, ``busy``, ``loop``, ``journal`` (the
j-* keys), ``replay``, ``slow``.  The runs of scenarios compared with each other (each
u-* pair, the two loops, the j-* bursts, the j-paced pair, the s pair) alternate, so that a drift
of the box over the minutes does not favour one of them.

The parts: :mod:`scenarios` (the list above and the run order), :mod:`harness` (the
server under test, the load processes, the probes, re-runs on a busy box),
:mod:`report` (the figures the page needs) and ``performance.md.tmpl`` (the page's
text, with a ``{field}`` wherever a figure goes).  This file is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import REPO, RetryBudget, fsync_probe, run_quietly
from report import clients_pct, clients_svg, machine, pipeline_table, render
from scenarios import GROUPS, Result, all_scenarios, run_order

DOC = REPO / "docs" / "performance.md"
PLOT = "performance-clients.svg"  # written next to the doc, which embeds it
PIPELINE = "pipeline"  # --only's key for the in-process micro-benchmark (pipeline.py)


def run_pipeline(quick: bool) -> dict[str, Any]:
    """``pipeline.py``'s figures, measured in a process of its own (its logging set-up
    and its imports stay out of this one)."""
    command = [sys.executable, str(Path(__file__).with_name("pipeline.py")), "--json"]
    out = subprocess.run(
        [*command, *(["--quick"] if quick else [])],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _progress_extra(r: Result) -> str:
    """The scenario-specific part of a progress line."""
    text = ""
    if r.scenario.latency:
        lat = r.latency_ms
        text += f", p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f} ms"
    x = r.extra
    if r.scenario.mode in ("users", "busy"):
        text += f", server CPU {r.cpu_pct:.0f} % of a core"
    if "probe" in x:
        p = x["probe"]
        bad = p["seq_gaps"] + p["seq_backwards"] + p["order_errors"] + p["missing"]
        text += f", probe {p['frames']:,} events decoded, " + (
            "in order, none missing" if not bad else f"DISORDER/LOSS {p}"
        )
        if r.scenario.latency:  # at max rate the lines' t_send is when they were built
            text += f", probe p99 {x['probe_ms']['p99']:.2f} ms"
    if x.get("window_ms"):
        w = x["window_ms"]
        text += f", live p99 {w['p99']:.2f} ms over {w['n']:,.0f} samples"
        if "replay_s" in x:
            text += f" during the {r.scenario.replay_events:,}-event replay ({x['replay_s']:.2f} s)"
        else:
            text += " (no replay)"
    if "rss_per_client_kb" in x:
        text += (
            f", VmRSS {x['rss_before_kb']:,} -> {x['rss_after_kb']:,} kB: "
            f"{x['rss_per_client_kb']:.1f} kB per idle client"
        )
    if "fill_rate" in x and "journal_files" in x:
        text += (
            f", live fill {x['fill_rate']:,.0f} ev/s ({x['fill_cpu_us']:.1f} us/event), "
            f"journal {x['journal_files']} file(s) {x['journal_bytes']:,} bytes"
        )
    for stalled in x.get("stalled", []):
        text += (
            f", stalled client: close {stalled['code']} {stalled['reason']!r} after "
            f"{stalled['frames']} frames"
        )
    if "slow_closes" in x:
        text += f", slow_client_disconnects_total {x['slow_closes']}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small counts; no doc unless --doc is given"
    )
    parser.add_argument("--doc", type=Path, help=f"write the report here (default {DOC})")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite the doc")
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per throughput or latency scenario (default 3, 5 for the users' ones)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated scenario keys or groups ({', '.join(GROUPS)}); implies --no-write",
    )
    parser.add_argument("--profile-out", type=Path, help="keep the daemon's cProfile file there")
    args = parser.parse_args(argv)
    chosen = all_scenarios(args.quick, args.repeat)
    pipeline = True
    if args.only:
        keys: set[str] = set()
        for name in args.only.split(","):
            keys.update(GROUPS.get(name, (name,)))
        pipeline = PIPELINE in keys
        keys.discard(PIPELINE)
        unknown = keys - {s.key for s in chosen}
        if unknown:
            parser.error(f"unknown scenario keys: {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.key in keys]
    write = args.doc is not None or not (args.quick or args.no_write or args.only)
    command = shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv])
    results: dict[str, list[Result]] = {}
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    budget = RetryBudget()
    pipe: dict[str, Any] = {}
    if pipeline:
        pipe = run_pipeline(args.quick)
        print(
            f"[{time.monotonic() - started:6.1f}s] {PIPELINE}: the per-event steps, old -> new "
            f"(us/event, fastest of {pipe['repeat']} x {pipe['number']:,} events):",
            flush=True,
        )
        for row in pipeline_table(pipe)[2:]:
            print(f"    {row}", flush=True)
        union = pipe["rows"]["validate-union"]["old_us"]
        print(f"    validation by the union at extra=ignore: {union:.2f} us/event", flush=True)
    for sc, i in run_order(chosen):
        r = run_quietly(sc, args.profile_out, budget)
        results.setdefault(sc.key, []).append(r)
        if sc.mode == "idle":
            print(
                f"[{time.monotonic() - started:6.1f}s] {sc.key:10} {sc.server:8} "
                f"{sc.clients:4} idle clients run {i + 1}/{sc.repeat}: connected in "
                f"{r.elapsed_s:.1f} s, other load {r.other_load * 100:.0f} %" + _progress_extra(r),
                flush=True,
            )
            continue
        print(
            f"[{time.monotonic() - started:6.1f}s] {sc.key:10} {sc.server:8} "
            f"{sc.clients:3} clients {sc.events:6} events run {i + 1}/{sc.repeat}: "
            f"{r.events_per_s:8,.0f} ev/s, server CPU {r.cpu_us_per_event:5.1f} us/event, "
            f"clients' CPU {clients_pct(r)}, other load {r.other_load * 100:.0f} %, "
            f"write(2) {r.writes}" + _progress_extra(r),
            flush=True,
        )
        if r.profile:
            for label, us, pct in r.profile["points"]:
                print(f"    {label:45} {us:8.1f} us/event {pct:5.1f} %")
    if write:
        doc = args.doc or DOC
        line = results["b"][0].line_bytes
        with tempfile.TemporaryDirectory(dir="/tmp") as probe_dir:
            fsync = fsync_probe(Path(probe_dir), (line * 1000, 5 << 20))
        duration = time.monotonic() - started
        doc.write_text(
            render(results, command, machine(fsync, loadavg), duration, budget.spent, pipe)
        )
        plot = doc.with_name(PLOT)
        plot.write_text(clients_svg(results))
        print(f"wrote {doc} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
