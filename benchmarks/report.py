"""The report: ``docs/performance.md`` rendered from the results of the runs.

The page's text is the template ``performance.md.tmpl`` next to this file (its
``{fields}`` are filled in here, ``{{`` and ``}}`` are literal braces); this module
computes the fields: the tables, the medians and rounds of alternated runs, the
machine's description and the suggestions drawn from the figures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import math
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import ATTEMPTS, METRICS_TIMEOUT, OTHER_LOAD_LIMIT, REPLAY_AT, RETRY_BUDGET
from scenarios import DAEMON_SLOW_CLIENT_BUFFER, SLOW_CLIENT_BUFFER, Result

# The page as the reader sees it, with a {field} wherever a figure goes.
TEMPLATE = (Path(__file__).resolve().parent / "performance.md.tmpl").read_text(encoding="utf-8")


# -- the report -----------------------------------------------------------------------


def machine(fsync: list[float], loadavg: str) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "arch": platform.machine(),
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "websockets": importlib.metadata.version("websockets"),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "fsync_ms": " ".join(f"{ms:.2f}" for ms in fsync),
        "tcp_wmem_max": _tcp_wmem_max(),
        "loadavg": loadavg,
    }


def _tcp_wmem_max() -> str:
    try:
        value = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return "unknown"
    return f"{value / (1 << 20):g} MiB" if value % (1 << 20) == 0 else f"{value:,} bytes"


def _median_run(runs: list[Result]) -> Result:
    """The run whose other figures are reported: median events/s, or median p99."""
    if runs[0].scenario.latency:
        return sorted(runs, key=lambda r: r.latency_ms["p99"])[len(runs) // 2]
    return sorted(runs, key=lambda r: r.events_per_s)[len(runs) // 2]


def _fmt_rate(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:,.0f}"
    return f"{median:,.0f} ({min(values):,.0f} to {max(values):,.0f})"


def clients_pct(r: Result) -> str:
    return f"{r.client_cpu_s / r.elapsed_s * 100:.0f} %"


THROUGHPUT_HEADER = (
    "| scenario | events | events/s from the source | frames/s delivered "
    "| server CPU µs/event | one-core ceiling, events/s | clients' CPU |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)
THROUGHPUT_ROWS = [
    ("a", "(a) daemon, 1 source → 1 client"),
    ("b", "(b) daemon, 1 source → 100 clients"),
    ("c-a", "(c) baseline, 1 source → 1 client"),
    ("c-b", "(c) baseline, 1 source → 100 clients"),
    ("v-nolog-1", "daemon as (a), logging WARNING"),
    ("v-bare-1", "daemon as (a), logging WARNING, journal off"),
    ("v-nolog", "daemon as (b), logging WARNING"),
    ("v-bare", "daemon as (b), logging WARNING, journal off"),
    ("v-wsclient", "daemon as (b), clients on websockets' own client"),
]
LATENCY_ROWS = [
    ("d-1", "(d) daemon → 1 client"),
    ("d-100", "(d) daemon → 100 clients"),
    ("d-1-c", "(d) baseline → 1 client"),
    ("d-100-c", "(d) baseline → 100 clients"),
]


JOURNAL_HEADER = (
    "| `journal.fsync` | events/s | server CPU µs/event | one-core ceiling, events/s "
    "| journal write(2) | fsync(2) | events per fsync |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)
JOURNAL_PACED_HEADER = (
    "| `journal.fsync` | samples | p50 ms | p99 ms | max ms | server CPU µs/event "
    "| fsync(2) | fsyncs per event |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)
SLOW_HEADER = (
    "| run | normal client: events received | p50 ms | p99 ms | max ms "
    "| server CPU µs/event | stalled client | `aaeventd_slow_client_disconnects_total` |\n"
    "|---|---|---:|---:|---:|---:|---|---:|"
)


JOURNAL_ROWS = [
    ("j-off", "off (`enabled: false`)"),
    ("j-never", "`never`"),
    ("j-interval", "`interval` (the default)"),
    ("j-always", "`always`"),
]
JOURNAL_PACED_ROWS = [
    ("j-paced-interval", "`interval`"),
    ("j-paced-always", "`always`"),
]


def _fsync_cell(r: Result) -> str:
    """fsync(2) calls in a run: counted for ``always``, bounded for the others."""
    sc = r.scenario
    if not sc.journal or sc.fsync == "never":
        return "0"
    if sc.fsync == "interval":
        return f"≤ {math.ceil(r.elapsed_s)} (≤ 1/s)"
    # always: at most one per journal write (logging is off in these rows); batches
    # written while an fsync runs share the next one.
    return f"{r.writes:,}"


def _rounds(
    results: dict[str, list[Result]],
    one: str,
    other: str,
    value: Callable[[Result], float],
    fmt: Callable[[float, float], str],
) -> str:
    """``fmt(one, other)`` for each round of two alternated scenarios, joined.

    Their runs alternate (``Scenario.alternate``), so run i of each saw the box in about
    the same state: the per-round comparison is steadier than the medians'.
    """
    return ", ".join(
        fmt(value(x), value(y)) for x, y in zip(results[one], results[other], strict=False)
    )


def _new_sections(
    results: dict[str, list[Result]],
    rate: Callable[[str], float],
    cpu_us: Callable[[str], float],
    med: Callable[[str], Result],
) -> dict[str, str]:
    """The fields of the journal, replay and slow-consumer sections."""
    fields: dict[str, str] = {}

    rows = []
    for key, label in JOURNAL_ROWS:
        r = med(key)
        per_fsync = f"{r.scenario.events / r.writes:,.0f}" if r.scenario.fsync == "always" else "-"
        rows.append(
            f"| {label} | {_fmt_rate([x.events_per_s for x in results[key]])} "
            f"| {cpu_us(key):.1f} | {1e6 / cpu_us(key):,.0f} | {r.writes:,} "
            f"| {_fsync_cell(r)} | {per_fsync} |"
        )
    fields["j_table"] = "\n".join([JOURNAL_HEADER, *rows])
    always = med("j-always")
    fields["j_events"] = f"{always.scenario.events:,}"
    fields["j_fsyncs"] = f"{always.writes:,}"
    fields["j_per_fsync"] = f"{always.scenario.events / max(always.writes, 1):,.0f}"
    fields["j_read_kib"] = (
        f"{always.scenario.events / max(always.writes, 1) * always.line_bytes / 1024:.0f}"
    )
    fields["j_cost"] = (
        f"{cpu_us('j-never') - cpu_us('j-off'):.1f} µs/event of server CPU (`never` against "
        "the journal off, medians; by round of alternated runs: "
        + _rounds(
            results,
            "j-never",
            "j-off",
            lambda y: y.cpu_us_per_event,
            lambda x, y: f"{x - y:+.1f}",
        )
        + ")"
    )
    fields["j_always_verdict"] = (
        f"{rate('j-always'):,.0f} events/s against {rate('j-interval'):,.0f} with "
        f"`interval` ({cpu_us('j-always'):.1f} against {cpu_us('j-interval'):.1f} µs/event "
        "of server CPU); by round of alternated runs `always` reached "
        + _rounds(
            results,
            "j-always",
            "j-interval",
            lambda y: y.events_per_s,
            lambda x, y: f"{x / y * 100:.0f} %",
        )
        + " of `interval`'s events/s"
    )

    rows = []
    for key, label in JOURNAL_PACED_ROWS:
        r = med(key)
        lat = r.latency_ms
        p99s = [x.latency_ms["p99"] for x in results[key]]
        spread = f" ({min(p99s):.2f} to {max(p99s):.2f})" if len(p99s) > 1 else ""
        if r.scenario.fsync == "always":
            per_event = f"{r.writes / r.scenario.events:.3f}"
        else:
            per_event = f"≤ {math.ceil(r.elapsed_s) / r.scenario.events:.4f}"
        rows.append(
            f"| {label} | {lat['n']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f}{spread} "
            f"| {lat['max']:.2f} | {cpu_us(key):.0f} | {_fsync_cell(r)} | {per_event} |"
        )
    fields["jp_table"] = "\n".join([JOURNAL_PACED_HEADER, *rows])
    pi, pa = med("j-paced-interval").latency_ms, med("j-paced-always").latency_ms
    fields["jp_p50_delta"] = f"{pa['p50'] - pi['p50']:.2f}"
    fields["jp_p99_delta"] = f"{pa['p99'] - pi['p99']:.2f}"
    fields["jp_cpu_delta"] = f"{cpu_us('j-paced-always') - cpu_us('j-paced-interval'):.0f}"
    fields["jp_rate"] = f"{med('j-paced-always').scenario.rate or 0:,.0f}"

    replay = med("r")
    x = replay.extra
    fill_rates = [y.extra["fill_rate"] for y in results["r"]]
    fill_cpu = statistics.median(y.extra["fill_cpu_us"] for y in results["r"])
    events = replay.scenario.events
    fields["r_rows"] = "\n".join(
        [
            f"| live: 1 source → 1 client, which fills the journal | {events:,} "
            f"| {_fmt_rate(fill_rates)} | {fill_cpu:.1f} | {1e6 / fill_cpu:,.0f} | - |",
            f"| replay: `?since=0` after a restart, from the journal | {events:,} "
            f"| {_fmt_rate([y.events_per_s for y in results['r']])} | {cpu_us('r'):.1f} "
            f"| {1e6 / cpu_us('r'):,.0f} | {clients_pct(replay)} |",
        ]
    )
    reader = {
        k: statistics.median(y.extra["reader"][k] for y in results["r"])
        for k in ("read", "loads", "backfill")
    }
    fields.update(
        r_events=f"{events:,}",
        r_files=str(x["journal_files"]),
        r_mb=f"{x['journal_bytes'] / 1e6:.1f}",
        r_bpe=f"{x['journal_bytes'] / events:.0f}",
        r_vs_live=f"{rate('r') / statistics.median(fill_rates):.1f}",
        r_cpu=f"{cpu_us('r'):.1f}",
        r_cores=f"{replay.server_cpu_s / replay.elapsed_s:.2f}",
        r_client=clients_pct(replay),
        r_backfill=f"{reader['backfill']:.1f}",
        r_read=f"{reader['read']:.1f}",
        r_loads=f"{reader['loads']:.1f}",
        r_loads_pct=f"{reader['loads'] / reader['backfill'] * 100:.0f}",
        r_rest=f"{max(0.0, cpu_us('r') - reader['backfill']):.1f}",
    )

    rows = []
    for key, label in (("s-base", "without"), ("s-slow", "with")):
        r = med(key)
        lat = r.latency_ms
        p99s = [y.latency_ms["p99"] for y in results[key]]
        spread = f" ({min(p99s):.2f} to {max(p99s):.2f})" if len(p99s) > 1 else ""
        if r.scenario.stalled:
            (close,) = r.extra["stalled"]
            if close["code"] is None:
                stalled = f"no close frame after {close['frames']:,} events"
            else:
                stalled = (
                    f"closed {close['code']} `{close['reason']}` after {close['frames']:,} "
                    f"events ({close['bytes'] / 1e6:.1f} MB)"
                )
        else:
            stalled = "-"
        closes = r.extra.get("slow_closes")
        rows.append(
            f"| {label} | {r.scenario.events:,} of {r.scenario.events:,} | {lat['p50']:.2f} "
            f"| {lat['p99']:.2f}{spread} | {lat['max']:.2f} | {cpu_us(key):.0f} "
            f"| {stalled} | {closes if closes is None else f'{closes:.0f}'} |"
        )
    fields["s_table"] = "\n".join([SLOW_HEADER, *rows])
    base, slow = med("s-base"), med("s-slow")
    slow_runs = results["s-slow"]
    closed_ok = sum(
        1
        for y in slow_runs
        if y.extra["stalled"][0]["code"] == 1013 and y.extra["slow_closes"] == 1
    )
    (close,) = slow.extra["stalled"]
    fields.update(
        s_events=f"{base.scenario.events:,}",
        s_rate=f"{base.scenario.rate or 0:,.0f}",
        s_seconds=f"{base.scenario.events / (base.scenario.rate or 1):g}",
        s_p99_base=f"{base.latency_ms['p99']:.2f}",
        s_p99_slow=f"{slow.latency_ms['p99']:.2f}",
        s_p99_delta=f"{slow.latency_ms['p99'] - base.latency_ms['p99']:+.2f}",
        s_verdict="by round of alternated runs: "
        + _rounds(
            results,
            "s-slow",
            "s-base",
            lambda y: y.latency_ms["p99"],
            lambda x, y: f"{x - y:+.2f}",
        )
        + " ms",
        s_p50_base=f"{base.latency_ms['p50']:.2f}",
        s_p50_slow=f"{slow.latency_ms['p50']:.2f}",
        s_closed=f"{closed_ok} of {len(slow_runs)}",
        s_frames=f"{close['frames']:,}",
        s_mb=f"{close['bytes'] / 1e6:.1f}",
        s_after=f"{close['frames'] / (base.scenario.rate or 1):.1f}",
        s_limit=f"{(slow.scenario.slow_buffer or DAEMON_SLOW_CLIENT_BUFFER) / (1 << 20):g} MiB",
        s_limit_is=(
            "the daemon's default, 4 MiB"
            if slow.scenario.slow_buffer is None
            else f"{slow.scenario.slow_buffer:,} bytes (lowered for a quick run)"
        ),
        s_cpu_base=f"{cpu_us('s-base'):.0f}",
        s_cpu_slow=f"{cpu_us('s-slow'):.0f}",
        s_shown={
            1: "One run.",
            2: "Of 2 runs, the one with the higher p99 is shown, the p99 range in brackets.",
        }.get(
            len(slow_runs),
            f"Of {len(slow_runs)} runs, the one with the median p99 is shown, the p99 range "
            "in brackets.",
        ),
    )
    return fields


def render(
    results: dict[str, list[Result]],
    command: str,
    mach: dict[str, str],
    duration: float,
    retried: float,
    pipe: dict[str, Any],
) -> str:
    """The whole of ``docs/performance.md`` from a full run's results (and
    ``pipeline.py``'s figures, ``pipe``)."""

    def rate(key: str) -> float:
        return statistics.median(r.events_per_s for r in results[key])

    def med(key: str) -> Result:
        return _median_run(results[key])

    def cpu_us(key: str) -> float:
        # The median over the runs: one run's figure carries the kernel's accounting noise.
        return statistics.median(r.cpu_us_per_event for r in results[key])

    def cpu(key: str) -> str:
        return f"{cpu_us(key):.0f}"

    thr_rows = []
    for key, label in THROUGHPUT_ROWS:
        r = med(key)
        sc = r.scenario
        thr_rows.append(
            f"| {label} | {sc.events:,} | {_fmt_rate([x.events_per_s for x in results[key]])} "
            f"| {sc.events * sc.clients / r.elapsed_s:,.0f} | {cpu_us(key):.1f} "
            f"| {1e6 / cpu_us(key):,.0f} | {clients_pct(r)} |"
        )
    lat_rows = []
    for key, label in LATENCY_ROWS:
        r = med(key)
        lat = r.latency_ms
        per_s = r.scenario.rate or 0.0
        p99s = [x.latency_ms["p99"] for x in results[key]]
        spread = f" ({min(p99s):.2f} to {max(p99s):.2f})" if len(p99s) > 1 else ""
        lat_rows.append(
            f"| {label} | {per_s:,.0f} ev/s for {r.scenario.events / per_s:g} s "
            f"| {lat['n']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f}{spread} "
            f"| {lat['max']:.2f} | {cpu_us(key):.0f} | {clients_pct(r)} |"
        )
    prof = med("p").profile
    point_rows = [
        f"| {'&nbsp;' * (len(label) - len(label.lstrip()))}{label.strip()} | {us:.1f} "
        f"| {pct:.0f} % |"
        for label, us, pct in prof["points"]
    ]
    top_rows = [
        f"| `{name}` | {calls:,} | {us:.2f} | {pct:.1f} % |" for name, calls, us, pct in prof["top"]
    ]
    runs = [r for rs in results.values() for r in rs]
    worst = max(runs, key=lambda r: r.other_load)
    disturbed = sorted({r.scenario.key for r in runs if r.other_load > OTHER_LOAD_LIMIT})
    other_load = f"at most {worst.other_load:.2f} cores ({worst.scenario.key})"
    if disturbed:
        other_load += f"; over {OTHER_LOAD_LIMIT} cores in: {', '.join(disturbed)}"
    fsync_small, fsync_big = mach.pop("fsync_ms").split()
    return TEMPLATE.format(
        command=command,
        duration=f"{duration / 60:.1f}",
        retried=f"{retried:.0f}",
        unretried=f"{(duration - retried) / 60:.1f}",
        retry_budget=f"{RETRY_BUDGET:.0f}",
        **users_fields(results),
        **pipeline_fields(results, pipe),
        **_new_sections(results, rate, cpu_us, med),
        repeat=len(results["b"]),
        thr_header=THROUGHPUT_HEADER,
        thr_rows="\n".join(thr_rows),
        lat_rows="\n".join(lat_rows),
        point_rows="\n".join(point_rows),
        top_rows="\n".join(top_rows),
        prof_busy=f"{prof['busy_s']:.2f}",
        prof_process=f"{prof['process_s']:.2f}",
        reads=f"{prof['reads']:,}",
        client_writes=f"{prof['client_writes']:,}",
        pairs=f"{med('p').scenario.events * 100:,}",
        prof_events=f"{med('p').scenario.events:,}",
        slow_buffer=f"{SLOW_CLIENT_BUFFER >> 20}",
        metrics_timeout=f"{METRICS_TIMEOUT:.0f}",
        line=med("b").line_bytes,
        b_vs_cb=f"{rate('b') / rate('c-b'):.1f}",
        a_vs_ca=f"{rate('a') / rate('c-a'):.2f}",
        a_cpu=cpu("a"),
        ca_cpu=cpu("c-a"),
        b_cpu=cpu("b"),
        cb_cpu=cpu("c-b"),
        cb_per_client=f"{cpu_us('c-b') / 100:.1f}",
        cb_pairs=f"{med('c-b').scenario.events * 100:,}",
        a_clients=clients_pct(med("a")),
        ca_clients=clients_pct(med("c-a")),
        cb_ceiling=f"{1e6 / cpu_us('c-b'):,.0f}",
        b_ceiling=f"{1e6 / cpu_us('b'):,.0f}",
        b_clients=clients_pct(med("b")),
        suggestions=suggestions(prof, results, rate, cpu_us),
        ws_vs_raw=f"{rate('b') / rate('v-wsclient'):.1f}",
        ws_rate=f"{rate('v-wsclient'):,.0f}",
        d100c_cpu=cpu("d-100-c"),
        d100_cpu=cpu("d-100"),
        fsync_small=fsync_small,
        other_load=other_load,
        other_limit=OTHER_LOAD_LIMIT,
        attempts=ATTEMPTS,
        fsync_big=fsync_big,
        **mach,
    )


def suggestions(
    prof: dict[str, Any],
    results: dict[str, list[Result]],
    rate: Callable[[str], float],
    cpu_us: Callable[[str], float],
) -> str:
    """The "Suggestions" section, from what this run measured.

    Each item names its figures; an item whose cost the code has already removed
    (under about a microsecond per event, profiled) says so instead of suggesting it.
    """
    small = 1.0  # µs/event (profiled) below which a cost is not worth a change
    us: dict[str, float] = prof["us"]
    items = []

    log_share = us["log"] / us["process"] * 100
    log = [
        f"**The per-event log line** (`aaeventd.events` at INFO, `logsetup`) costs "
        f"{us['log']:.1f} µs/event profiled, {log_share:.0f} % of line processing in (b). "
        f"Switching it off (logging WARNING) takes the daemon from {rate('a'):,.0f} to "
        f"{rate('v-nolog-1'):,.0f} events/s at 1 client ({cpu_us('a'):.1f} to "
        f"{cpu_us('v-nolog-1'):.1f} µs of CPU per event), and from {cpu_us('b'):.1f} to "
        f"{cpu_us('v-nolog'):.1f} µs/event at 100 clients: that difference is the most "
        "a cheaper line can win. §4 requires the line; what is left of its cost:"
    ]
    if us["caller"] >= small:
        log.append(
            f"  * `findCaller`'s stack walk ({us['caller']:.1f} µs/event): set "
            "`logging._srcfile = None` and `logging.logThreads = logging.logProcesses = "
            "logging.logMultiprocessing = False` at start-up (the logging HOWTO's "
            '"Optimization" switches); no formatter shows those fields;'
        )
    else:
        log.append(f"  * caller lookup: already off ({us['caller']:.1f} µs/event), nothing to do;")
    io = us["lwrite"] + us["lflush"]
    flushes, events = prof["stream_flushes"], prof["events"]
    if flushes >= events / 2:
        log.append(
            f"  * one `write(2)` per event ({flushes:,} stream flushes for {events:,} "
            f"events; `write` + `flush`: {io:.1f} µs/event, and `sys.stderr` is "
            "line-buffered): buffer the batch's lines and write them once at the end of "
            "`Daemon.flush()`;"
        )
    else:
        log.append(
            f"  * output: already batched ({flushes:,} stream flushes for {events:,} "
            f"events), nothing to do;"
        )
    if us["record"] < small and us["chain"] < small:
        log.append(
            f"  * LogRecord creation and the handler chain: skipped ({us['record']:.1f} and "
            f"{us['chain']:.1f} µs/event in `makeRecord` and `callHandlers`), nothing to do."
        )
    else:
        log.append(
            f"  * LogRecord creation ({us['record']:.1f} µs/event in `makeRecord`) and the "
            f"handler chain ({us['chain']:.1f} µs/event in `callHandlers`, of which "
            f"{us['format']:.1f} formatting): generic work the events line does not need. "
            "Formatting could cache the per-second part of the timestamp; beyond that, the "
            "events line could skip `Logger.info` altogether: when the handler is the "
            "daemon's own, format the batch's lines directly and hand them to its stream "
            "in one write (still one line per event, same format), keeping the normal path "
            "for every other logger and for foreign handlers."
        )
    items.append("\n".join(log))

    stamp = [
        f"**Stamping**: `Daemon.submit` ({us['submit']:.1f} µs/event profiled: hub "
        f"`accept`/`stamp`, `Stamped.build`) is the next largest entry; JSON encoding "
        f"takes {us['encode']:.1f}, the timestamp {us['ts']:.1f}, running-skill tracking "
        f"{us['track']:.1f} µs/event."
    ]
    stamp.append(
        "`rfc3339_utc` already formats the date-time part once per second and adds only "
        "the milliseconds per event; what is left there is mostly cProfile's own cost "
        "per call."
    )
    stamp.append(f"Validation is already cheap ({us['validate']:.1f} µs/event).")
    items.append(" ".join(stamp))

    fields = _new_sections(results, rate, cpu_us, lambda key: _median_run(results[key]))
    users = users_fields(results)
    items.append(
        "**Journal**: one `write(2)` per batch is cheap (logging WARNING, 1 client): "
        f"{fields['j_cost']}. "
        "No fsync runs on the event loop in steady state: with `interval`, "
        "`Daemon._housekeeping` hands duplicates of the written files' fds "
        "(`Journal.unsynced_fds`) to a worker thread once a second; with `always`, a "
        "group commit (`Daemon._hold`) holds each written batch's fan-out and acks until "
        "an fsync in a worker thread covers it, and the batches written meanwhile share "
        "the next fsync (clients connecting meanwhile are replayed up to the last synced "
        "seq). What is left:\n"
        f"  * `always` in bursts: at most one fsync per {fields['j_per_fsync']} events, "
        f"{fields['j_always_verdict']}. At a steady {fields['jp_rate']} events/s, one "
        "event per read, every event still waits for its own fsync "
        f"(p50 +{fields['jp_p50_delta']} ms, {fields['jp_cpu_delta']} µs more server CPU "
        "per event on this disk, the hand-off to the thread included), while the loop "
        "serves heartbeats, handshakes and other sources;\n"
        "  * one fsync still runs on the loop: `Journal._rotate()` with `interval` fsyncs "
        "the file it closes, once per `max_file_bytes` (64 MiB by default), at most a "
        "second of unsynced data (cheap here). It could join the next housekeeping sync "
        "as the files a rotation closes under `always` join the next group commit."
    )
    items.append(
        f"**Replay from the journal** runs at {rate('r'):,.0f} events/s, "
        f"{fields['r_vs_live']}x the live rate, and the daemon is what limits it "
        f"({fields['r_cores']} of a core over the replay). The worker thread's reader "
        f"takes {fields['r_backfill']} µs/event for an unfiltered client: the seq comes "
        "from `Journal.read_since`'s cheap lookup and a line is parsed only for a client "
        f"with a type filter, which adds `json.loads` ({fields['r_loads_pct']} % of the "
        f"reader's time if it ran for every line). The bare read is "
        f"{fields['r_read']} µs/event. Reading the next chunk could also overlap the "
        "loop's wait on `drain()` (today they alternate). How much a large replay (the "
        "reader thread holds the GIL most of the time) delays live events to the other "
        f"clients: live p99 {users['u_busy_during']} ms during a "
        f"{users['u_busy_replay']}-event replay against {users['u_busy_without']} ms "
        f"without (*Where users live*; by round {users['u_busy_rounds']} ms)."
    )
    items.append(
        f"**Slow consumers**: with the client that stopped reading, the other client's "
        f"p99 went from {fields['s_p99_base']} to {fields['s_p99_slow']} ms "
        f"({fields['s_verdict']}), server CPU from {fields['s_cpu_base']} to "
        f"{fields['s_cpu_slow']} µs/event; the stalled client was closed with "
        f"1013 in {fields['s_closed']} runs. Two remarks: until the close the daemon held "
        f"about {fields['s_mb']} MB for it ({fields['s_limit']} in its transport buffer, the "
        "rest in the "
        "kernel's socket buffers); what many stalled clients can pin together in the "
        "daemon is bounded by `websocket.clients_buffer_budget_bytes` (64 MiB by "
        "default), and `aaeventd_slow_client_disconnects_total` counts a close when "
        "`ClientSession.close_slow()` starts it."
    )
    items.append(
        f'**The "2x `broadcast()`" target**: state it with its setup (client '
        f"implementation, cores). Here the daemon is at {rate('b') / rate('c-b'):.0f}x "
        "at 100 clients with validation, journal and logging on; with websockets' own "
        "client the clients, not the servers, set the figure. At 1 client the baseline, "
        "doing far less per event, is the faster one: cutting the fixed per-event work "
        "(items 1 and 2) is what closes that gap."
    )
    items.append(
        f"**Many clients at a moderate rate** cost one `send(2)` per client per event "
        f"({cpu_us('d-100'):.0f} µs of server CPU per event at 1,000 events/s to 100 "
        "clients, about half a core). Running `Daemon.flush()` from a `loop.call_soon` "
        "callback instead of at the end of each `data_received` would merge the reads "
        "of several sources that land in one loop iteration into one batch, for one "
        "more pass of the loop (microseconds); error replies already call `flush()` "
        "first. A deliberate flush delay of a millisecond or two would trade latency "
        "for CPU, if that is ever wanted."
    )
    return "\n".join(
        f"{n}. " + item.replace("\n", "\n   ") for n, item in enumerate(items, start=1)
    )


# -- issue 14's targets: where users live ---------------------------------------------

USERS_HEADER = (
    "| target | aaeventd (median) | bare relay (median) | ratio | ratio by round "
    "| goal | met? |\n"
    "|---|---:|---:|---:|---|---|---|"
)
# (daemon key, what is compared, value of a run, format, goal: "min" ratio >= bound or
# "max" ratio <= bound, bound)
USERS_TARGETS: list[tuple[str, str, Callable[[Result], float], str, str, float]] = [
    ("u-1", "1 client, max rate: events/s delivered", lambda r: r.events_per_s, ",.0f", "min", 0.5),
    (
        "u-10",
        "10 clients at a fixed 2,000 events/s: server CPU, % of a core",
        lambda r: r.cpu_pct,
        ".0f",
        "max",
        1.0,
    ),
    (
        "u-10",
        "same: p99 latency source → client, ms",
        lambda r: r.latency_ms["p99"],
        ".2f",
        "max",
        1.0,
    ),
    (
        "u-100",
        "100 clients, max rate: events/s to each client",
        lambda r: r.events_per_s,
        ",.0f",
        "min",
        10.0,
    ),
    (
        "u-idle",
        "RSS per idle client, {idle} connected, KB",
        lambda r: r.extra["rss_per_client_kb"],
        ".1f",
        "max",
        1.0,
    ),
]
# The plot's points: (daemon key, baseline key) by number of clients.
PLOT_KEYS = [
    ("u-1", "u-1-c"),
    ("u-10max", "u-10max-c"),
    ("u-100", "u-100-c"),
    ("u-1000", "u-1000-c"),
]


def _clients(n: int) -> str:
    return f"{n:,} client{'s' if n != 1 else ''}"


def _rate(r: Result) -> float:
    return r.events_per_s


def _probe_clean(r: Result) -> bool:
    p = r.extra.get("probe", {})
    return bool(p) and not (
        p["seq_gaps"] or p["seq_backwards"] or p["order_errors"] or p["missing"]
    )


def users_fields(results: dict[str, list[Result]]) -> dict[str, str]:
    """The fields of the "Where users live" section (issue 14's targets)."""
    rows = []
    for key, label, value, fmt, goal, bound in USERS_TARGETS:
        ours, bare = results[key], results[f"{key}-c"]
        mine = statistics.median(value(r) for r in ours)
        theirs = statistics.median(value(r) for r in bare)
        ratio = mine / theirs if theirs else math.inf
        rounds = ", ".join(
            f"{value(x) / value(y):.2f}" if value(y) else "∞"
            for x, y in zip(ours, bare, strict=False)
        )
        met = ratio >= bound if goal == "min" else ratio <= bound
        sign = "≥" if goal == "min" else "≤"
        rows.append(
            f"| {label.format(idle=f'{ours[0].scenario.clients:,}')} | {mine:{fmt}} "
            f"| {theirs:{fmt}} | {ratio:.2f}x | {rounds} | {sign} {bound:g}x "
            f"| {'**yes**' if met else '**no**'} |"
        )
    probed = [r for k in results if k.startswith("u-") for r in results[k] if "probe" in r.extra]
    ours = [r for r in probed if r.scenario.server == "daemon"]
    bare = [r for r in probed if r.scenario.server == "baseline"]
    clean_ours, clean_bare = sum(map(_probe_clean, ours)), sum(map(_probe_clean, bare))
    rows.append(
        f"| no loss, no reordering (the probe client, every run above and below) "
        f"| {clean_ours} of {len(ours)} runs | {clean_bare} of {len(bare)} runs | - | - "
        f"| all | {'**yes**' if clean_ours == len(ours) else '**no**'} |"
    )

    def med_of(key: str, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in results[key])

    busy, base = results["u-busy"], results["u-busy-base"]
    during = [r.extra["window_ms"]["p99"] for r in busy]
    without = [r.extra["window_ms"]["p99"] for r in base]
    whole = [r.latency_ms["p99"] for r in busy]
    sc = busy[0].scenario
    u1 = results["u-1"][0].scenario
    return {
        "u_table": "\n".join([USERS_HEADER, *rows]),
        "u_sources": str(u1.sources),
        "u_line": f"{results['u-1'][0].line_bytes}",
        "u_repeat": str(len(results["u-1"])),
        "u_events_1": f"{u1.events:,}",
        "u_events_10": f"{results['u-10'][0].scenario.events:,}",
        "u_seconds_10": f"{results['u-10'][0].scenario.events / 2000:g}",
        "u_events_100": f"{results['u-100'][0].scenario.events:,}",
        "u_budget": f"{(u1.buffer_budget or 0) >> 20:,}",
        "u_probe_p99": f"{med_of('u-10', lambda r: r.extra['probe_ms']['p99']):.2f}",
        "u_probe_p99_c": f"{med_of('u-10-c', lambda r: r.extra['probe_ms']['p99']):.2f}",
        "u_busy_replay": f"{sc.replay_events:,}",
        "u_replay_at": f"{REPLAY_AT:g}",
        "u_busy_rate": f"{sc.rate or 0:,.0f}",
        "u_busy_clients": str(sc.clients),
        "u_busy_seconds": f"{sc.events / (sc.rate or 1):g}",
        "u_busy_during": f"{statistics.median(during):.2f}",
        "u_busy_whole": f"{statistics.median(whole):.2f}",
        "u_busy_without": f"{statistics.median(without):.2f}",
        "u_busy_rounds": ", ".join(f"{x - y:+.2f}" for x, y in zip(during, without, strict=False)),
        "u_busy_replay_s": f"{statistics.median(r.extra['replay_s'] for r in busy):.2f}",
        "u_busy_samples": f"{statistics.median(r.extra['window_ms']['n'] for r in busy):,.0f}",
        "u_busy_fill": f"{statistics.median(r.extra['fill_rate'] for r in busy):,.0f}",
        "u_plot": "; ".join(
            f"{_clients(results[d][0].scenario.clients)}, {med_of(d, _rate):,.0f} against "
            f"{med_of(c, _rate):,.0f}"
            for d, c in PLOT_KEYS
        ),
    }


# -- what each change to the pipeline won ------------------------------------------

# pipeline.py's steps: (key, what, old → new); {batch} is its log batch.
PIPELINE_STEPS: list[tuple[str, str, str]] = [
    ("parse", "parse the line", "`json` with the strict rules → `pydantic_core.from_json`"),
    (
        "validate",
        "validate the event",
        "the union's TypeAdapter, `extra=allow` → the type's own validator, `extra=ignore`",
    ),
    (
        "encode",
        "stamp `seq` and `timestamp`, frame",
        "`encode_json` + `ws_text_frame` → `splice_stamps`",
    ),
    (
        "log",
        "the INFO log line",
        "`Logger.info` per event → `write_events`, {batch} events a call",
    ),
]
# The loop pair: (key, label).
LOOP_KEYS = [
    ("u-10-uvloop", "uvloop (`AAEVENTD_EVENT_LOOP=uvloop`)"),
    ("u-10-asyncio", "asyncio's own loop (`AAEVENTD_EVENT_LOOP=asyncio`)"),
    ("u-10-nojournal", "asyncio's own loop, journal off (`journal.enabled: false`)"),
]


def pipeline_table(result: dict[str, Any]) -> list[str]:
    """pipeline.py's figures as a markdown table: each step, then the four together."""
    rows = result["rows"]
    out = [
        "| step | old → new | old, µs/event | new, µs/event | saved, µs/event | new / old |",
        "|---|---|---:|---:|---:|---:|",
    ]
    total_old = total_new = 0.0
    for key, label, change in PIPELINE_STEPS:
        old, new = rows[key]["old_us"], rows[key]["new_us"]
        total_old += old
        total_new += new
        out.append(
            f"| {label} | {change.format(batch=result['log_batch'])} | {old:.2f} | {new:.2f} "
            f"| {old - new:.2f} | {new / old:.2f} |"
        )
    out.append(
        f"| **the four together** | | {total_old:.2f} | {total_new:.2f} "
        f"| {total_old - total_new:.2f} | {total_new / total_old:.2f} |"
    )
    return out


def pipeline_fields(results: dict[str, list[Result]], pipe: dict[str, Any]) -> dict[str, str]:
    """The fields of "What each change to the pipeline won": pipeline.py, the loops."""
    rows = pipe["rows"]
    loop_rows = [
        "| event loop | server CPU, % of a core | server CPU, µs/event | p99 latency, ms "
        "| probe's p99, ms |",
        "|---|---:|---:|---:|---:|",
    ]

    def med(key: str, value: Callable[[Result], float]) -> float:
        return statistics.median(value(r) for r in results[key])

    def p99(r: Result) -> float:
        return r.latency_ms["p99"]

    def probe_p99(r: Result) -> float:
        return float(r.extra["probe_ms"]["p99"])

    def cpu_us(r: Result) -> float:
        return r.cpu_us_per_event

    def cpu_pct(r: Result) -> float:
        return r.cpu_pct

    for key, label in LOOP_KEYS:
        loop_rows.append(
            f"| {label} | {med(key, cpu_pct):.0f} | {med(key, cpu_us):.1f} "
            f"| {med(key, p99):.2f} | {med(key, probe_p99):.2f} |"
        )
    uv, aio = results[LOOP_KEYS[0][0]], results[LOOP_KEYS[1][0]]

    def by_round(value: Callable[[Result], float]) -> str:
        return ", ".join(f"{value(x) / value(y):.2f}" for x, y in zip(uv, aio, strict=False))

    union = rows["validate-union"]["old_us"]
    allow, direct = rows["validate"]["old_us"], rows["validate"]["new_us"]
    cpu_ratio = med(LOOP_KEYS[0][0], cpu_pct) / med(LOOP_KEYS[1][0], cpu_pct)
    p99_ratio = med(LOOP_KEYS[0][0], p99) / med(LOOP_KEYS[1][0], p99)
    loop_rows.append(
        f"| uvloop / asyncio (by round) | {cpu_ratio:.2f} ({by_round(cpu_pct)}) "
        f"| | {p99_ratio:.2f} ({by_round(p99)}) | |"
    )
    return {
        "p_table": "\n".join(pipeline_table(pipe)),
        "p_line": str(pipe["line_bytes"]),
        "p_number": f"{pipe['number']:,}",
        "p_repeat": str(pipe["repeat"]),
        "p_batch": str(pipe["log_batch"]),
        "p_union": f"{union:.2f}",
        "p_saved": f"{allow - direct:.2f}",
        "p_extra": f"{allow - union:.2f}",
        "p_dispatch": f"{union - direct:.2f}",
        "l_table": "\n".join(loop_rows),
        "l_uv_cpu": f"{med('u-10-uvloop', cpu_pct):.0f}",
        "l_aio_cpu": f"{med('u-10-asyncio', cpu_pct):.0f}",
        "l_nj_cpu": f"{med('u-10-nojournal', cpu_pct):.0f}",
        "l_aio_us": f"{med('u-10-asyncio', cpu_us):.0f}",
        "l_nj_us": f"{med('u-10-nojournal', cpu_us):.0f}",
        "l_aio_writes": f"{statistics.median(r.writes for r in results['u-10-asyncio']):,.0f}",
        "l_journal_text": _journal_text(
            med("u-10-asyncio", cpu_pct),
            med("u-10-nojournal", cpu_pct),
            statistics.median(r.cpu_pct for r in results["u-10-c"]),
        ),
        "l_repeat": str(len(uv)),
        "l_events": f"{uv[0].scenario.events:,}",
    }


def _journal_text(with_journal: float, without: float, relay: float) -> str:
    """What the journal's write explains of the gap to the relay at 10 clients."""
    gap = with_journal - relay
    if gap <= 0:
        return "the daemon is at or below the relay here with the journal too"
    saved = with_journal - without
    if without <= relay:
        return (
            f"without the journal the daemon is at or below the relay ({without:.0f} % "
            f"against {relay:.0f} %): the journal's write is what is left between them"
        )
    return (
        f"the journal's write accounts for {saved:.0f} of the {gap:.0f} points between "
        f"the daemon and the relay ({relay:.0f} %); the rest is the turn of the loop"
    )


def _marker(shape: str, cx: float, cy: float, colour: str) -> str:
    if shape == "circle":
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>'
    return f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="{colour}"/>'


def clients_svg(results: dict[str, list[Result]]) -> str:
    """The plot of events/s delivered (to each client) against clients, log-log, as SVG."""
    width, height = 640, 400
    left, right, top, bottom = 80, 60, 40, 60
    series = [
        ("aaeventd", "#1f77b4", "circle", [d for d, _ in PLOT_KEYS]),
        ("bare broadcast() relay", "#d62728", "square", [c for _, c in PLOT_KEYS]),
    ]
    points = {
        name: [
            (results[k][0].scenario.clients, statistics.median(r.events_per_s for r in results[k]))
            for k in keys
        ]
        for name, _, _, keys in series
    }
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    x_lo, x_hi = 0, max(1, math.ceil(math.log10(max(xs))))
    y_lo = math.floor(math.log10(min(ys)))
    y_hi = max(y_lo + 1, math.ceil(math.log10(max(ys))))
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (math.log10(x) - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (math.log10(y) - y_lo) / (y_hi - y_lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
        "Events/s delivered to each client, against the number of clients</text>",
    ]
    for e in range(x_lo, x_hi + 1):
        x = px(10**e)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{10**e:,}</text>'
        )
    for e in range(y_lo, y_hi + 1):
        y = py(10**e)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{10**e:,}</text>')
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="black"/>'
    )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 15}" text-anchor="middle">'
        "clients (log scale)</text>"
    )
    out.append(
        f'<text x="18" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + plot_h / 2})">events/s (log scale)</text>'
    )
    for i, (name, colour, marker, _) in enumerate(series):
        pts = points[name]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            cx, cy = px(x), py(y)
            out.append(_marker(marker, cx, cy, colour))
            # The daemon's values above its points, the relay's below: they may be close.
            ty = cy - 7 if i == 0 else cy + 17
            out.append(f'<text x="{cx + 6:.1f}" y="{ty:.1f}" fill="{colour}">{y:,.0f}</text>')
        ly = top + 16 + i * 18
        lx = left + plot_w - 190
        out.append(
            f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{colour}" '
            'stroke-width="2"/>'
        )
        out.append(_marker(marker, lx + 12, ly - 4, colour))
        out.append(f'<text x="{lx + 30}" y="{ly}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
