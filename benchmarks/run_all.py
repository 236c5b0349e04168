"""Run aaeventd's benchmarks and rewrite ``docs/performance.md`` (``make bench``).

What is measured (loopback only, every run bounded in count and time):

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

    .venv/bin/python benchmarks/run_all.py            # everything (~5 min), rewrites the doc
    .venv/bin/python benchmarks/run_all.py --quick    # smaller counts, no doc
    .venv/bin/python benchmarks/run_all.py --only b,c-b --repeat 5   # no doc
    .venv/bin/python benchmarks/run_all.py --only journal,replay,slow   # groups, no doc
    .venv/bin/python benchmarks/run_all.py --only p --profile-out /tmp/daemon.prof

Scenario keys: ``a``/``b`` (daemon, 1/100 clients), ``c-a``/``c-b`` (baseline),
``d-1``/``d-100``/``d-1-c``/``d-100-c`` (latency), ``v-nolog-1``/``v-bare-1``/
``v-nolog``/``v-bare`` (daemon without the log line / also without journal),
``v-wsclient`` (websockets' own client), ``p`` (cProfile of b), ``j-off``/
``j-never``/``j-interval``/``j-always`` (as v-nolog-1 with that fsync policy, or no
journal), ``j-paced-interval``/``j-paced-always`` (1,000 events/s, logging WARNING),
``r`` (replay), ``s-base``/``s-slow`` (slow consumer, without/with the stalled
client).  Groups: ``journal`` (the j-* keys), ``replay``, ``slow``.  The runs of
scenarios compared with each other (the j-* bursts, the j-paced pair, the s pair)
alternate, so that a drift of the box over the minutes does not favour one of them.

The parts: :mod:`scenarios` (the list above and the run order), :mod:`harness` (the
server under test, the load processes, the probes, re-runs on a busy box),
:mod:`report` (the figures the page needs) and ``performance.md.tmpl`` (the page's
text, with a ``{field}`` wherever a figure goes).  This file is the command line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, RetryBudget, fsync_probe, run_quietly
from report import clients_pct, machine, render
from scenarios import GROUPS, Result, all_scenarios, run_order

DOC = REPO / "docs" / "performance.md"


def _progress_extra(r: Result) -> str:
    """The scenario-specific part of a progress line."""
    text = ""
    if r.scenario.latency:
        lat = r.latency_ms
        text += f", p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f} ms"
    x = r.extra
    if "fill_rate" in x:
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
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput scenario")
    parser.add_argument(
        "--only",
        help=f"comma-separated scenario keys or groups ({', '.join(GROUPS)}); implies --no-write",
    )
    parser.add_argument("--profile-out", type=Path, help="keep the daemon's cProfile file there")
    args = parser.parse_args(argv)
    chosen = all_scenarios(args.quick, args.repeat)
    if args.only:
        keys: set[str] = set()
        for name in args.only.split(","):
            keys.update(GROUPS.get(name, (name,)))
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
    for sc, i in run_order(chosen):
        r = run_quietly(sc, args.profile_out, budget)
        results.setdefault(sc.key, []).append(r)
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
        doc.write_text(render(results, command, machine(fsync, loadavg), duration, budget.spent))
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
