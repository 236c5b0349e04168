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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import pstats
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import loadgen

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
BASELINE = Path(__file__).resolve().parent / "baseline_server.py"
READY_RE = re.compile(r"ready: sources on (\S+), clients on ws://([^:/]+):(\d+)/")
START_TIMEOUT = 20.0  # seconds for a server to log its ready line
RUN_TIMEOUT = 120.0  # seconds for any one scenario's traffic
CLIENT_PROCS = 2  # client processes for multi-client scenarios (one per core)
# The daemon's own default (4 MiB) would close clients that fall behind during a
# 20k-event burst on a shared 2-core box; the benchmark measures throughput, not the
# slow-consumer policy (the baseline has no limit at all).
SLOW_CLIENT_BUFFER = 256 << 20
DAEMON_SLOW_CLIENT_BUFFER = 4 << 20  # the daemon's default, used by the slow-consumer rows
# The box is shared: a run during which other processes used more than this many
# cores is run again (up to ATTEMPTS times, as long as the whole benchmark has spent
# less than RETRY_BUDGET seconds on such re-runs), after waiting up to QUIET_WAIT
# seconds for the box to calm.
OTHER_LOAD_LIMIT = 0.25
ATTEMPTS = 3
RETRY_BUDGET = 60.0
QUIET_WAIT = 15.0
# Slow-consumer scenario: the stalled client reads its close frame after the run
# (the daemon aborts it close_timeout = 10 s after sending it), and /metrics is polled
# until the disconnect is counted.
STALLED_READ_TIMEOUT = 8.0
METRICS_TIMEOUT = 15.0
# --only accepts these names for groups of scenario keys.
GROUPS = {
    "journal": (
        "j-off",
        "j-never",
        "j-interval",
        "j-always",
        "j-paced-interval",
        "j-paced-always",
    ),
    "replay": ("r",),
    "slow": ("s-base", "s-slow"),
}


@dataclass(frozen=True, slots=True)
class Scenario:
    """One measured configuration."""

    key: str
    server: str  # "daemon" or "baseline"
    clients: int
    events: int
    rate: float | None = None  # events/s for a latency run; None: as fast as possible
    client_kind: str = "raw"
    log_level: str = "INFO"
    journal: bool = True
    fsync: str = "interval"
    # websocket.slow_client_buffer_bytes; None: the daemon's default (4 MiB).
    slow_buffer: int | None = SLOW_CLIENT_BUFFER
    # "live": source -> clients; "replay": fill the journal with ``events`` (live, to
    # one client), restart the daemon, then replay them all to one client (since=0).
    mode: str = "live"
    stalled: int = 0  # extra clients that complete the handshake, then never read
    repeat: int = 1
    # Consecutive scenarios with the same non-empty ``alternate`` have their runs
    # interleaved (x1 y1 x2 y2 ...): they are compared with each other.
    alternate: str = ""
    profile: bool = False

    @property
    def latency(self) -> bool:
        return self.rate is not None


@dataclass(slots=True)
class Result:
    """What one run of a scenario measured."""

    scenario: Scenario
    line_bytes: int = 0
    events_per_s: float = 0.0
    elapsed_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_load: float = 0.0  # CPU used by anything but the run's processes, in cores
    writes: int = 0  # write(2) calls by the server over the traffic (/proc/PID/io syscw)
    latency_ms: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    # Scenario-specific figures: the replay's fill run and journal size, the stalled
    # client's close frame, /metrics' slow-client disconnects.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us_per_event(self) -> float:
        return self.server_cpu_s / self.scenario.events * 1e6


def scenarios(quick: bool, repeat: int) -> list[Scenario]:
    """The scenario list; ``quick`` shrinks every count (a smoke run, not figures)."""
    k = 10 if quick else 1
    r = 1 if quick else repeat
    one, many, paced = 50_000 // k, 20_000 // k, 5_000 // k
    fill = 200_000 // k
    # A quick run still makes the stalled client overflow: the kernel holds up to
    # tcp_wmem's maximum (4 MiB here) for it before the daemon's buffer grows at all.
    flood = 20_000 if quick else 50_000
    slow_limit = (256 << 10) if quick else None
    slow_repeat = min(r, 2)  # 10 s a run: two of each keep `make bench` near 5 minutes
    quiet = "WARNING"
    return [
        # (a), (b): the daemon; (c): the baseline.
        Scenario("a", "daemon", 1, one, repeat=r),
        Scenario("b", "daemon", 100, many, repeat=r),
        Scenario("c-a", "baseline", 1, one, repeat=r),
        Scenario("c-b", "baseline", 100, many, repeat=r),
        # (d): latency at a fixed rate.
        Scenario("d-1", "daemon", 1, paced, rate=1000, repeat=r),
        Scenario("d-100", "daemon", 100, paced, rate=1000, repeat=r),
        Scenario("d-1-c", "baseline", 1, paced, rate=1000, repeat=r),
        Scenario("d-100-c", "baseline", 100, paced, rate=1000, repeat=r),
        # What the parts cost: the daemon without its INFO log line, then without journal.
        Scenario("v-nolog-1", "daemon", 1, one, repeat=r, log_level=quiet),
        Scenario("v-bare-1", "daemon", 1, one, repeat=r, journal=False, log_level=quiet),
        Scenario("v-nolog", "daemon", 100, many, repeat=r, log_level=quiet),
        Scenario("v-bare", "daemon", 100, many, repeat=r, journal=False, log_level=quiet),
        # What the client implementation weighs: websockets' own client.
        Scenario("v-wsclient", "daemon", 100, many, client_kind="websockets"),
        # Where the time goes.
        Scenario("p", "daemon", 100, many, profile=True),
        # Journal cost: logging WARNING, so that the journal's is the only write(2) the
        # daemon makes (j-off and j-interval are v-bare-1 and v-nolog-1 again, run
        # alongside the others).
        *(
            Scenario(
                f"j-{policy}",
                "daemon",
                1,
                one,
                repeat=r,
                log_level=quiet,
                journal=policy != "off",
                fsync="interval" if policy == "off" else policy,
                alternate="j",
            )
            for policy in ("off", "never", "interval", "always")
        ),
        *(
            Scenario(
                f"j-paced-{policy}",
                "daemon",
                1,
                paced,
                rate=1000,
                repeat=r,
                log_level=quiet,
                fsync=policy,
                alternate="j-paced",
            )
            for policy in ("interval", "always")
        ),
        # Replay speed: the journal filled with ``fill`` events, replayed after a restart.
        Scenario("r", "daemon", 1, fill, repeat=r, log_level=quiet, mode="replay"),
        # A client that stops reading, at the daemon's default slow_client_buffer_bytes.
        *(
            Scenario(
                f"s-{kind}",
                "daemon",
                1,
                flood,
                rate=5000,
                repeat=slow_repeat,
                slow_buffer=slow_limit,
                stalled=int(kind == "slow"),
                alternate="s",
            )
            for kind in ("base", "slow")
        ),
    ]


# -- the server under test ----------------------------------------------------------


class Server:
    """The daemon or the baseline as a subprocess, its log going to a file."""

    def __init__(self, scenario: Scenario, tmp: Path) -> None:
        self.scenario = scenario
        self.tmp = tmp
        self.log_path = tmp / "server.log"
        self.profile_path = tmp / "daemon.prof"
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket_path = ""
        self.host = ""
        self.port = 0

    def command(self) -> list[str]:
        sc = self.scenario
        socket_path = str(self.tmp / "ev.sock")
        if sc.server == "baseline":
            return [sys.executable, str(BASELINE), "--socket", socket_path]
        websocket: dict[str, Any] = {"port": 0}
        if sc.slow_buffer is not None:
            websocket["slow_client_buffer_bytes"] = sc.slow_buffer
        config = {
            "sources": {"socket_path": socket_path},
            "websocket": websocket,
            "journal": {
                "enabled": sc.journal,
                "directory": str(self.tmp / "journal"),
                "fsync": sc.fsync,
            },
            "logging": {"level": sc.log_level, "format": "text"},
        }
        config_path = self.tmp / "config.yaml"
        config_path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        profile = ["-m", "cProfile", "-o", str(self.profile_path)] if sc.profile else []
        return [sys.executable, *profile, "-m", "aaeventd", "run", "--config", str(config_path)]

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
            and not k.startswith(("WATCHDOG_", "AAEVENTD_"))
        }
        env["XDG_RUNTIME_DIR"] = str(self.tmp)
        env["XDG_STATE_HOME"] = str(self.tmp / "state")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT
        socket_path = self.tmp / "ev.sock"
        while True:
            match = READY_RE.search(self.log_path.read_text(errors="replace"))
            if match is not None:
                self.socket_path, self.host, self.port = match[1], match[2], int(match[3])
                return
            if self.scenario.log_level != "INFO" and socket_path.exists():
                # No ready line below INFO: read the port off the process's sockets.
                port = _listening_port(self.proc.pid)
                if port is not None:
                    self.socket_path, self.host, self.port = str(socket_path), "127.0.0.1", port
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {START_TIMEOUT}s: {self.log_tail()}")
            # Polling a log file (the server's stderr goes there, not to a pipe we would
            # have to drain while it runs); a benchmark harness, not a test.
            time.sleep(0.02)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def write_calls(self) -> int:
        """``write(2)``-family calls the server process has made so far (``syscw``).

        Socket sends (``send``/``sendto``, all asyncio uses) are not counted: this is
        the journal's and the log's writes.
        """
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "syscw":
                return int(value)
        raise RuntimeError("no syscw in /proc/PID/io")  # pragma: no cover

    def metric(self, name: str) -> float | None:
        """One unlabelled sample of the daemon's ``/metrics``, or None if absent."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
        return None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _listening_port(pid: int) -> int | None:
    """The port of a TCP socket of ``pid`` in LISTEN state (from ``/proc``), if any."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                    return int(cols[1].rsplit(":", 1)[1], 16)
    return None


class OtherLoad:
    """CPU used by processes that are not this benchmark's, between two snapshots.

    Sums ``utime + stime + cutime + cstime`` (so children reaped during the window
    count too) of every process but this one, its descendants and kernel threads; the
    kernel's own work for our traffic (softirq) is therefore not "other".
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.before = _foreign_ticks()

    def cores(self) -> float:
        """Cores' worth of CPU the other processes used since the snapshot."""
        # Totals, not per-pid differences: a process that exited meanwhile took its
        # "before" ticks with it, and its parent's cutime gained its whole life.
        ticks = sum(_foreign_ticks().values()) - sum(self.before.values())
        seconds = max(0, ticks) / os.sysconf("SC_CLK_TCK")
        return seconds / max(time.monotonic() - self.start, 1e-3)


def _foreign_ticks() -> dict[int, int]:
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    ours = {os.getpid()}
    changed = True
    while changed:  # descendants of this process
        grown = {pid for pid, (ppid, _) in stats.items() if ppid in ours}
        changed = not grown <= ours
        ours |= grown
    return {
        pid: ticks
        for pid, (ppid, ticks) in stats.items()
        if pid not in ours and pid != 2 and ppid != 2  # 2: kthreadd, parent of kthreads
    }


# -- one run --------------------------------------------------------------------------


def _expect(pipe: Connection, what: str, timeout: float) -> Any:
    """The payload of the next ``(what, payload)`` message from a child."""
    if not pipe.poll(timeout):
        raise TimeoutError(f"no {what!r} from a child within {timeout:.0f}s")
    try:
        kind, payload = pipe.recv()
    except EOFError:
        raise RuntimeError(f"a child exited before sending {what!r}") from None
    if kind == "error":
        raise RuntimeError(payload)
    if kind != what:
        raise RuntimeError(f"expected {what!r}, got {kind!r}")
    return payload


@contextlib.contextmanager
def _children() -> Iterator[list[BaseProcess]]:
    procs: list[BaseProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():  # pragma: no cover - last resort
                proc.kill()
                proc.join()


def run_once(scenario: Scenario, profile_out: Path | None = None) -> Result:
    """Start a server, the clients and the source; measure; clean everything up."""
    ctx = multiprocessing.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="aaev-bench-", dir="/tmp"))
    server = Server(scenario, tmp)
    result = Result(scenario)
    try:
        if scenario.mode == "replay":
            _replay(ctx, server, result)
        else:
            with _children() as procs:
                server.start()
                _live(ctx, server, procs, result)
            server.stop()
        if scenario.profile:
            result.profile = summarize_profile(server.profile_path, scenario.events)
            if profile_out is not None:
                shutil.copyfile(server.profile_path, profile_out)
    except Exception:
        print(f"--- server log tail ({scenario.key}) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _start_clients(
    ctx: SpawnContext,
    procs: list[BaseProcess],
    server: Server,
    scenario: Scenario,
    *,
    latency: bool,
    path: str = "/",
) -> list[Connection]:
    """Start the client processes (one, or CLIENT_PROCS sharing the connections)."""
    workers = 1 if scenario.clients == 1 else CLIENT_PROCS
    shares = [
        scenario.clients // workers + (i < scenario.clients % workers) for i in range(workers)
    ]
    pipes: list[Connection] = []
    for share in shares:
        plan = loadgen.ClientPlan(
            host=server.host,
            port=server.port,
            connections=share,
            events=scenario.events,
            latency=latency,
            kind=scenario.client_kind,
            timeout=RUN_TIMEOUT,
            path=path,
        )
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=loadgen.client_main, args=(child, plan), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    return pipes


def _live(ctx: SpawnContext, server: Server, procs: list[BaseProcess], result: Result) -> None:
    """Clients (and stalled clients) connect, the source sends; fill in ``result``."""
    scenario = result.scenario
    client_pipes = _start_clients(ctx, procs, server, scenario, latency=scenario.latency)
    for pipe in client_pipes:
        _expect(pipe, "ready", START_TIMEOUT + 10)
    stalled = [loadgen.StalledClient(server.host, server.port) for _ in range(scenario.stalled)]
    try:
        for client in stalled:
            client.connect()
        source_plan = loadgen.SourcePlan(
            socket_path=server.socket_path,
            events=scenario.events,
            rate=scenario.rate,
            hello=scenario.server == "daemon",
            timeout=RUN_TIMEOUT,
        )
        source_pipe, child = ctx.Pipe()
        proc = ctx.Process(target=loadgen.source_main, args=(child, source_plan), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        result.line_bytes = _expect(source_pipe, "ready", START_TIMEOUT + 10)
        cpu_before = server.cpu_seconds()
        writes_before = server.write_calls()
        other = OtherLoad()
        source_pipe.send(("go", None))
        sent = _expect(source_pipe, "done", RUN_TIMEOUT)
        received = [_expect(pipe, "done", RUN_TIMEOUT) for pipe in client_pipes]
        result.server_cpu_s = server.cpu_seconds() - cpu_before
        result.writes = server.write_calls() - writes_before
        result.client_cpu_s = sum(r["cpu_s"] for r in received)
        result.other_load = other.cores()
        _check(scenario, received)
        last = max(max(r["last_ns"]) for r in received)
        result.elapsed_s = (last - sent["t_first"]) / 1e9
        result.events_per_s = scenario.events / result.elapsed_s
        if scenario.latency:
            samples = array("q")
            for r in received:
                samples.frombytes(r["latencies"])
            result.latency_ms = _percentiles(samples)
        if stalled:
            result.extra["stalled"] = [c.read_close(STALLED_READ_TIMEOUT) for c in stalled]
    finally:
        for client in stalled:
            client.close()
    if scenario.key.startswith("s-"):
        result.extra["slow_closes"] = _wait_for_metric(
            server, "aaeventd_slow_client_disconnects_total", scenario.stalled
        )


def _wait_for_metric(server: Server, name: str, expected: float) -> float | None:
    """Poll ``/metrics`` until ``name`` reads ``expected`` (bounded); its last value."""
    deadline = time.monotonic() + METRICS_TIMEOUT
    while True:
        value = server.metric(name)
        if value == expected or time.monotonic() > deadline:
            return value
        # Polling a counter the daemon updates when the connection ends: a benchmark
        # harness reading a result, not a test synchronising.
        time.sleep(0.05)


def _replay(ctx: SpawnContext, server: Server, result: Result) -> None:
    """Fill the journal (live, one client), restart the daemon, replay it all to one client.

    After the restart the replay ring is empty, so ``since=0`` is served entirely from
    the journal files.  Events/s = events / (the ``connected`` frame's arrival -> the
    last replayed event's); server CPU over the same span.
    """
    scenario = result.scenario
    fill = Result(dataclasses.replace(scenario, mode="live"))
    with _children() as procs:
        server.start()
        _live(ctx, server, procs, fill)
    server.stop()
    files = sorted((server.tmp / "journal").glob("events-*.jsonl"))
    sizes = [f.stat().st_size for f in files]
    result.line_bytes = fill.line_bytes
    result.extra.update(
        fill_rate=fill.events_per_s,
        fill_cpu_us=fill.cpu_us_per_event,
        fill_other_load=fill.other_load,
        journal_files=len(files),
        journal_bytes=sum(sizes),
        reader=reader_probe(server.tmp / "journal", scenario.events),
    )
    with _children() as procs:
        server.start()
        cpu_before = server.cpu_seconds()
        other = OtherLoad()
        (pipe,) = _start_clients(ctx, procs, server, scenario, latency=False, path="/?since=0")
        _expect(pipe, "ready", START_TIMEOUT + 10)
        received = _expect(pipe, "done", RUN_TIMEOUT)
        result.server_cpu_s = server.cpu_seconds() - cpu_before
        result.other_load = max(other.cores(), fill.other_load)
    server.stop()
    _check(scenario, [received])
    result.client_cpu_s = received["cpu_s"]
    result.elapsed_s = (received["last_ns"][0] - received["first_ns"][0]) / 1e9
    result.events_per_s = scenario.events / result.elapsed_s


def wait_for_quiet(limit: float, max_wait: float) -> float:
    """Wait (bounded) until other processes use less than ``limit`` cores for a second.

    Returns the last second's figure, in cores.
    """
    deadline = time.monotonic() + max_wait
    while True:
        other = OtherLoad()
        # Sampling the machine's load over a second: a measurement, not a synchronisation.
        time.sleep(1.0)
        load = other.cores()
        if load < limit or time.monotonic() > deadline:
            return load


@dataclass(slots=True)
class RetryBudget:
    """Seconds the whole benchmark may still spend re-running disturbed runs."""

    seconds: float = RETRY_BUDGET

    @property
    def spent(self) -> float:
        return max(0.0, RETRY_BUDGET - self.seconds)


def run_quietly(scenario: Scenario, profile_out: Path | None, budget: RetryBudget) -> Result:
    """``run_once``, run again when something else loaded the box; the calmest run wins.

    A run that fails while another process loaded the box (on a shared box a test
    suite may stop a server or starve a client) is run once more; a second failure,
    or one on a calm box, is raised.
    """
    tries: list[Result] = []
    failed = False
    for attempt in range(ATTEMPTS):
        if attempt and budget.seconds <= 0:
            break
        started = time.monotonic()
        if attempt:
            wait_for_quiet(OTHER_LOAD_LIMIT, QUIET_WAIT)
        other = OtherLoad()
        try:
            result = run_once(scenario, profile_out=profile_out)
        except Exception as exc:
            load = other.cores()
            if failed or load <= OTHER_LOAD_LIMIT:
                raise
            failed = True
            print(
                f"    {scenario.key}: failed ({exc}) while other processes used "
                f"{load:.2f} cores; running it again",
                flush=True,
            )
            wait_for_quiet(OTHER_LOAD_LIMIT, QUIET_WAIT)
            result = run_once(scenario, profile_out=profile_out)
        if attempt:
            budget.seconds -= time.monotonic() - started
        tries.append(result)
        if result.other_load <= OTHER_LOAD_LIMIT:
            break
        again = attempt + 1 < ATTEMPTS and budget.seconds > 0
        print(
            f"    {scenario.key}: other processes used {result.other_load:.2f} cores; "
            + ("running it again" if again else "keeping it"),
            flush=True,
        )
    return min(tries, key=lambda r: r.other_load)


def _check(scenario: Scenario, received: list[dict[str, Any]]) -> None:
    """Every client got every event, and the last one is the last sent, stamped."""
    for r in received:
        if any(n != scenario.events for n in r["frames"]):
            raise RuntimeError(f"a client got {r['frames']} events, not {scenario.events}")
        last = json.loads(r["last_payload"])
        if last.get("step_index") != scenario.events - 1 or last.get("seq") is None:
            raise RuntimeError(f"unexpected last event {last!r}")


def _percentiles(samples: array[int]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)

    def pick(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1e6

    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1] / 1e6, "n": float(n)}


# -- the profile ----------------------------------------------------------------------

_TEXT_WRITE = "<method 'write' of '_io.TextIOWrapper' objects>"
_TEXT_FLUSH = "<method 'flush' of '_io.TextIOWrapper' objects>"
# (key, label, file suffix(es) or "~" for built-ins, function): entry points whose
# cumulative time is reported per event; sub-entries are indented in the label.
PROFILE_POINTS: list[tuple[str, str, str | tuple[str, ...], str]] = [
    ("process", "ingest: all line processing (_process)", "aaeventd/daemon/ingest.py", "_process"),
    ("decode", "  parse + type check (decode_object)", "protocol/codec.py", "decode_object"),
    ("validate", "  validation (validate_event)", "protocol/events.py", "validate_event"),
    ("submit", "  stamp + encode + frame (Daemon.submit)", "aaeventd/daemon/app.py", "submit"),
    ("ts", "    timestamp (rfc3339_utc)", "protocol/codec.py", "rfc3339_utc"),
    ("encode", "    JSON encoding (encode_json)", "protocol/codec.py", "encode_json"),
    ("track", "    running-skill tracking (Hub._track)", "aaeventd/daemon/hub.py", "_track"),
    ("flush", "  flush (journal, fan-out, log)", "aaeventd/daemon/app.py", "flush"),
    ("journal", "    journal append", "aaeventd/daemon/app.py", "_journal_append"),
    (
        "fanout",
        "    fan-out to clients (WsServer.fan_out)",
        "aaeventd/daemon/wsserver.py",
        "fan_out",
    ),
    ("log", "    per-event INFO log line (_log_event)", "aaeventd/daemon/app.py", "_log_event"),
    ("record", "      LogRecord creation (makeRecord)", "logging/__init__.py", "makeRecord"),
    ("caller", "      caller lookup (findCaller)", "logging/__init__.py", "findCaller"),
    ("chain", "      handlers (Logger.callHandlers)", "logging/__init__.py", "callHandlers"),
    ("format", "        formatting (Formatter.format)", "aaeventd/daemon/logsetup.py", "format"),
    ("lwrite", "        stream write (TextIOWrapper.write)", "~", _TEXT_WRITE),
    (
        "lflush",
        "        handler flush (Handler.flush)",
        ("logging/__init__.py", "aaeventd/daemon/logsetup.py"),
        "flush",
    ),
    ("framer", "line framing (LineFramer.feed)", "protocol/framer.py", "feed"),
]


def _matches(key: tuple[str, int, str], suffix: str | tuple[str, ...], func: str) -> bool:
    filename = key[0]
    return key[2] == func and (filename == suffix if suffix == "~" else filename.endswith(suffix))


def summarize_profile(path: Path, events: int) -> dict[str, Any]:
    """Per-event cumulative time of the hot path's entry points, and the top functions.

    Shares are of ``_process`` (all the work done on the lines, fan-out included); the
    top functions are those called at least once per 20 events (and 1,000 times), which
    leaves out the start-up (imports, model building) that the profile also holds.
    """
    stats = pstats.Stats(str(path))
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    # cProfile measures wall time: the time blocked in epoll is idle, not work.
    busy = {key: entry for key, entry in table.items() if "epoll" not in key[2]}
    cumulative = {
        name: sum(e[3] for k, e in busy.items() if _matches(k, suffix, func))
        for name, _, suffix, func in PROFILE_POINTS
    }
    calls = {
        name: sum(e[1] for k, e in busy.items() if _matches(k, suffix, func))
        for name, _, suffix, func in PROFILE_POINTS
    }
    process = cumulative["process"] or 1.0
    points = [
        (label, cumulative[name] / events * 1e6, cumulative[name] / process * 100)
        for name, label, _, _ in PROFILE_POINTS
    ]
    frequent = [(k, e) for k, e in busy.items() if e[1] >= max(events / 20, 1000)]
    top = sorted(frequent, key=lambda kv: kv[1][2], reverse=True)[:15]
    rows = [
        (_func_name(key), entry[1], entry[2] / events * 1e6, entry[2] / process * 100)
        for key, entry in top
    ]
    reads = sum(
        e[1] for k, e in busy.items() if _matches(k, "aaeventd/daemon/ingest.py", "data_received")
    )
    writes = sum(
        e[1] for k, e in busy.items() if _matches(k, "aaeventd/daemon/wsserver.py", "send")
    )
    # How often the log stream really went to the OS: once per record, or per batch.
    stream_flushes = sum(e[1] for k, e in busy.items() if _matches(k, "~", _TEXT_FLUSH))
    return {
        "busy_s": sum(e[2] for e in busy.values()),
        "process_s": cumulative["process"],
        "us": {name: cumulative[name] / events * 1e6 for name in cumulative},
        "calls": calls,
        "points": points,
        "top": rows,
        "reads": reads,
        "client_writes": writes,
        "stream_flushes": stream_flushes,
        "events": events,
    }


def _func_name(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    for marker in ("site-packages/", f"python{sys.version_info[0]}.{sys.version_info[1]}/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    else:
        with contextlib.suppress(ValueError):
            filename = str(Path(filename).relative_to(REPO))
    return f"{filename}:{line}({func})"


def reader_probe(directory: Path, events: int) -> dict[str, float]:
    """µs/event of the replay's journal reader, run in this process on a filled journal.

    ``read``: ``Journal.read_since`` alone (file iteration and each line's seq);
    ``backfill``: what ``replay.backfill`` runs in its worker thread for an unfiltered
    client (``read_since``, then ``replay.journal_chunk``: the frame of each line);
    ``loads``: ``json.loads`` of the same lines alone (what a filtered client adds).
    """
    # Imported here: every spawned client and source process re-imports this module.
    from aaeventd.daemon.journal import Journal
    from aaeventd.daemon.replay import journal_chunk
    from aaeventd.protocol.filters import TypeFilter

    journal = Journal(directory, max_file_bytes=1 << 40, max_files=1 << 10, fsync="never")
    everything = TypeFilter.from_query(None)
    start = time.perf_counter()
    lines = list(journal.read_since(0))
    read = time.perf_counter() - start
    start = time.perf_counter()
    for _, line in lines:
        json.loads(line)
    loads = time.perf_counter() - start
    del lines
    start = time.perf_counter()
    source = journal.read_since(0)
    frames = 0
    while True:
        chunk = journal_chunk(source, events, everything)
        frames += len(chunk.frames)
        if chunk.done:
            break
    backfill = time.perf_counter() - start
    if frames != events:
        raise RuntimeError(f"the journal reader found {frames} events, not {events}")
    return {
        k: v / events * 1e6 for k, v in (("read", read), ("loads", loads), ("backfill", backfill))
    }


def fsync_probe(directory: Path, sizes: tuple[int, ...]) -> list[float]:
    """Milliseconds to fsync a file after appending each of ``sizes`` bytes (this disk)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    results = []
    try:
        for size in sizes:
            times = []
            for _ in range(5):
                os.write(fd, b"x" * size)
                start = time.perf_counter()
                os.fsync(fd)
                times.append((time.perf_counter() - start) * 1e3)
            results.append(statistics.median(times))
    finally:
        os.close(fd)
        path.unlink()
    return results


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


def _clients_pct(r: Result) -> str:
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
    return f"{r.writes:,}"  # always: one per journal write (logging is off in these rows)


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
            f"| {1e6 / cpu_us('r'):,.0f} | {_clients_pct(replay)} |",
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
        r_client=_clients_pct(replay),
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
) -> str:
    """The whole of ``docs/performance.md`` from a full run's results."""

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
            f"| {1e6 / cpu_us(key):,.0f} | {_clients_pct(r)} |"
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
            f"| {lat['max']:.2f} | {cpu_us(key):.0f} | {_clients_pct(r)} |"
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
        a_clients=_clients_pct(med("a")),
        ca_clients=_clients_pct(med("c-a")),
        cb_ceiling=f"{1e6 / cpu_us('c-b'):,.0f}",
        b_ceiling=f"{1e6 / cpu_us('b'):,.0f}",
        b_clients=_clients_pct(med("b")),
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
        f"**The per-event log line** (`Daemon._log_event`, `logsetup`) costs "
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
    log.append(
        f"  * LogRecord creation ({us['record']:.1f} µs/event in `makeRecord`) and the "
        f"handler chain ({us['chain']:.1f} µs/event in `callHandlers`, of which "
        f"{us['format']:.1f} formatting): generic work the events line does not need. "
        "Formatting could cache the per-second part of the timestamp; beyond that, the "
        "events line could skip `Logger.info` altogether: when the handler is the "
        "daemon's own, format the batch's lines directly and hand them to its stream in "
        "one write (still one line per event, same format), keeping the normal path for "
        "every other logger and for foreign handlers."
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
    items.append(
        "**Journal**: one `write(2)` per batch is cheap (logging WARNING, 1 client): "
        f"{fields['j_cost']}. "
        "The `interval` fsync already runs in a worker thread on a `dup` of the fd "
        "(`Journal.dirty_fd`, `Daemon._housekeeping`). Two fsyncs still run on the event "
        "loop:\n"
        f"  * `always`, once per batch before it is broadcast. In bursts that is one fsync "
        f"per {fields['j_per_fsync']} events: {fields['j_always_verdict']}. At a steady "
        f"{fields['jp_rate']} events/s, one event per read, every event waits for its own "
        f"fsync (p50 +{fields['jp_p50_delta']} ms, {fields['jp_cpu_delta']} µs more "
        "server CPU per event on this disk), and nothing else runs meanwhile: no "
        'heartbeat, handshake or other source. A group commit would keep "fsync before '
        'broadcast" without blocking the loop: `flush()` writes the batch, hands the '
        "fsync of a `dup`'d fd to a thread and holds that batch's fan-out and acks until "
        "it returns; batches written meanwhile share the next fsync. Careful: the events "
        "are in the hub's replay ring as soon as they are stamped, so a client connecting "
        "while a batch is held would get it both from the ring and from the fan-out; "
        "`open_stream` would have to replay only up to the last synced seq;\n"
        "  * `Journal._rotate()` fsyncs the file it closes (policies `interval` and "
        "`always`), once per `max_file_bytes` (64 MiB by default): at most a second of "
        "unsynced data with `interval` (cheap here), and redundant with `always`. It "
        "could hand the old fd to the housekeeping thread instead."
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
        "loop's wait on `drain()` (today they alternate). Not measured here: how a "
        "large replay (the reader thread holds the GIL most of the time) delays live "
        "events to the other clients."
    )
    items.append(
        f"**Slow consumers**: with the client that stopped reading, the other client's "
        f"p99 went from {fields['s_p99_base']} to {fields['s_p99_slow']} ms "
        f"({fields['s_verdict']}), server CPU from {fields['s_cpu_base']} to "
        f"{fields['s_cpu_slow']} µs/event; the stalled client was closed with "
        f"1013 in {fields['s_closed']} runs. Two remarks: until the close the daemon held "
        f"about {fields['s_mb']} MB for it ({fields['s_limit']} in its transport buffer, the "
        "rest in the "
        "kernel's socket buffers), so 256 clients (`max_clients`) stalling at once could "
        "pin a gigabyte; a global budget across clients would bound that. And "
        "`aaeventd_slow_client_disconnects_total` grows when the connection ends, which "
        "for a client that never reads is `close_timeout` (10 s) after the 1013 close "
        "frame was queued; counting in `ClientSession.close_slow()` would make it "
        "immediate."
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


TEMPLATE = """\
# Performance

Generated by `benchmarks/run_all.py` (`make bench`) from the run described under
*Machine*. Re-run it to refresh the page; the figures are not to be edited by hand
(the prose is the script's template).

## How to reproduce

```sh
make bench                     # = .venv/bin/python benchmarks/run_all.py
.venv/bin/python benchmarks/run_all.py --quick              # smoke run, small counts, ~1 min
.venv/bin/python benchmarks/run_all.py --only b,c-b --repeat 5   # some scenarios, no doc
.venv/bin/python benchmarks/run_all.py --only journal,replay,slow  # groups of scenarios
.venv/bin/python benchmarks/run_all.py --only p --profile-out /tmp/daemon.prof
```

This page came from `{command}`, which took {duration} minutes: {unretried} minutes for
the runs themselves and {retried} s re-running runs that other work on the box disturbed
(a re-run starts only while less than {retry_budget} s have gone to them, see
*Machine*). Only loopback and
Unix sockets are used; every run is bounded in events and time (120 s at most per
scenario), and every process it starts (server, source, clients) is stopped before
the next scenario.

## Machine

| | |
|---|---|
| `uname -m` | {arch} |
| CPU | {cpu} |
| `nproc` | {nproc} |
| kernel | {kernel} |
| Python | {python} |
| websockets | {websockets} |
| date | {date} |
| load average before the run | {loadavg} |
| other processes' CPU during the reported runs | {other_load} |

Two shared cores: the server under test, the source and the client processes all
run on them, so throughput and latency are properties of this box as a whole, not of
the server alone. Other work on the box is measured too (the CPU time of every other
process, from `/proc/*/stat`); a run during which it exceeded
{other_limit} of a core is run again, up to {attempts} times (as long as the whole
benchmark has spent less than {retry_budget} s on such re-runs), and the calmest is kept.
Two columns help read them: **server CPU µs/event** (user + system
time of the server process during the traffic, from `/proc/PID/stat`, divided by the
events; the steadiest figure) and **clients' CPU** (the client processes' CPU time
over the same window, in percent of one core).

## Setup

* **Daemon** (the server under test): a subprocess, `python -m aaeventd run --config
  X` on port 0 (the real port read from its `ready` log line), with **validation on**
  (the events are `step_completed`, a known type, so each goes through its model), the
  **journal on** (`fsync: interval`, on ext4) and **logging at INFO**, text format,
  one line per event, to a file, unless a row says otherwise.
  `websocket.slow_client_buffer_bytes` is raised to {slow_buffer} MiB (except in
  *Slow consumer*, which uses the default): a client process starved of CPU during a
  burst would otherwise be closed as a slow consumer, and that policy is not what is
  measured (the baseline has none).
* **Baseline**: `benchmarks/baseline_server.py`, a minimal websockets server: NDJSON
  from a Unix socket, `json.loads` per line, `seq` added, `json.dumps`, then
  `websockets.asyncio.server.broadcast(connections, text)`. No validation, journal,
  logging, timestamps, replay ring, filters or slow-consumer policy. Compression is off
  in both servers.
* **Source**: one process, blocking Unix socket, `hello` with `acks: false`, then
  {line}-byte lines, all in one `sendall` (throughput) or one `sendall` per event at a
  fixed rate (latency).
* **Clients**: separate processes, asyncio; one process for 1 client, two processes
  of 50 connections for 100 clients. Unless a row says otherwise they use a minimal
  RFC 6455 client (`benchmarks/loadgen.py`: real handshake, pings answered, frame
  headers parsed, payload not decoded), because websockets' own client costs several
  times more per frame and would make the clients what is measured (see its row).
* **Throughput** = N / (first byte sent by the source → last event received by the
  last client), all on CLOCK_MONOTONIC. Each client checks it got exactly N events and
  that the last one is the last sent, with a `seq`. Median of {repeat} runs, range in
  brackets; the other columns are from the median run.
* **Latency** = arrival in the client process - `t_send` (read just before the
  source's `sendall`), over every (event, client) pair.

## Throughput

{thr_header}
{thr_rows}

The daemon, with validation, journal and INFO logging on, moves **{b_vs_cb}x** the
events/s of websockets' `broadcast()` at 100 clients. At 1 client it reaches
{a_vs_ca}x the baseline: with one client there is nothing to share, and the baseline
does far less per event ({ca_cpu} µs of CPU against {a_cpu}). The *one-core ceiling*
(10⁶ / server CPU µs per event) is what the server could sustain with a core to
itself: about {b_ceiling} events/s for the daemon at 100 clients, {cb_ceiling} for
the baseline.

At 1 client the daemon is what limits the run (its CPU is about one core, the
client's a few percent), so the (a) rows show what each part costs in events/s. At
100 clients the box is full (the two client processes take {b_clients} of a core,
the daemon most of the rest), so (b) and its variants land close together and are
best compared on server CPU.

## Latency (fixed rate)

| scenario | load | samples | p50 ms | p99 ms | max ms | server CPU µs/event | clients' CPU |
|---|---|---:|---:|---:|---:|---:|---:|
{lat_rows}

Of {repeat} runs, the one with the median p99 is shown, with the p99 range of all
runs in brackets. Tails at 100 clients vary a lot from run to run: they measure the box
(three busy processes on two cores, and whatever else runs on it) as much as either
server.

## Journal cost

Scenario (a)'s burst (one source sends {j_events} events in one `sendall`, one
client) with each `journal.fsync` policy, and with the journal off as the reference.
Logging is at WARNING in these rows, so that the journal's is the only `write(2)` the
daemon makes: the **journal write(2)** column is `syscw` from `/proc/PID/io` over the
traffic (socket sends are not counted there), one per batch (a batch is what one read
of the source's socket brings). `always` fsyncs once per batch, on the event loop,
before the batch is broadcast, so its **fsync(2)** figure is that count; `interval`
fsyncs at most once a second, in a worker thread; `never` leaves it to the kernel.

{j_table}

Writing the journal costs {j_cost}. In a burst a read of the Unix socket brings
about {j_read_kib} KiB, about {j_per_fsync} events, so `always` makes {j_fsyncs}
fsyncs for {j_events} events: {j_always_verdict}. While an fsync blocks the loop,
the source's next lines pile up in the socket and the next batch is larger: a fast
source pays per batch, not per event.

One event per `sendall` at {jp_rate} events/s (as (d), one client, logging WARNING):
each read holds one event, so with `always` every event waits for its own fsync
before any client sees it.

{jp_table}

The fsync adds {jp_p50_delta} ms to the median latency ({jp_p99_delta} ms to the p99)
and {jp_cpu_delta} µs of server CPU per event (part of an fsync's work, starting the
writeback, is done in the calling thread and counted as the daemon's system time) on
this disk, whose small fsyncs take {fsync_small} ms (*Reading the figures*). That is
the price of `always` for a source that sends one event at a time: one fsync's
latency per event, and an event loop that serves nothing else (heartbeats,
handshakes, other sources) while the fsync runs. On a disk whose fsync takes 10 ms,
every event would wait 10 ms and the loop would spend most of its time blocked.

## Replay from the journal

Scenario `r`: the daemon (logging WARNING, `fsync: interval`) takes {r_events} events
live from one source to one client, which fills the journal; it is then stopped and
started again, so its replay ring is empty and one minimal client that connects with
`?since=0` gets every event from the journal files (`Daemon.backfill`: a worker
thread reads chunks of 2,000 lines, the event loop writes each chunk and waits for
`drain()`). Replay events/s = events / (arrival of `connected` → arrival of the last
replayed event); server CPU over the same span. The journal held {r_files} file(s),
{r_mb} MB, {r_bpe} bytes per event.

| run | events | events/s | server CPU µs/event | one-core ceiling, events/s | client's CPU |
|---|---:|---:|---:|---:|---:|
{r_rows}

Replay runs at **{r_vs_live}x** the live rate of the same daemon: it skips parsing,
validation, stamping, encoding and the journal write, and sends large chunks. The
daemon is still what limits it: it used {r_cores} of a core over the replay, the
client {r_client}. The reader in the worker thread takes {r_backfill} µs/event for
an unfiltered client (timed by the script in its own process on the same files):
{r_read} for `Journal.read_since` (file iteration, each line's seq by a regex), the
rest for the frames. A client with a type filter adds a `json.loads` per line
({r_loads} µs/event, measured alone) to read the type.

## Slow consumer

Scenario `s`: one source at {s_rate} events/s for {s_seconds} s ({s_events} events,
one `sendall` each, logging INFO, `fsync: interval`) to one minimal client that
measures latency, run without and with a second client that completes the handshake
and then never reads (`SO_RCVBUF` of 4 KiB, set before connecting).
`websocket.slow_client_buffer_bytes` is {s_limit_is}. After the run the
stalled client reads what was queued for it, up to the close frame (code and reason
below), and answers it; then `/metrics` is read (polled until the count is the
expected one, at most {metrics_timeout} s).

{s_table}

{s_shown} The normal client
received all {s_events} events both ways (the script checks the count and the last
event), with a p50 of {s_p50_base} ms without the stalled client and {s_p50_slow} ms
with it, a p99 of {s_p99_base} and {s_p99_slow} ms ({s_p99_delta} ms; {s_verdict}). The stalled
client was closed with 1013 in {s_closed} runs; it had been sent {s_frames} events
before the close frame ({s_mb} MB, about {s_after} s of traffic): {s_limit} in the
daemon's transport buffer, the rest in the kernel's socket buffers (the daemon's TCP
send buffer grows up to `net.ipv4.tcp_wmem`'s maximum, {tcp_wmem_max} here, before
its transport buffer grows at all). Server CPU was {s_cpu_base} µs/event without and
{s_cpu_slow} with the stalled client: a write to a client whose kernel buffer is full
only appends to its transport's buffer, and past the limit nothing is written.

## Where the time goes

cProfile of the daemon in scenario (b), {prof_events} events to 100 clients
(`--only p`). cProfile adds a fixed cost to every Python call, so read the shares
more than the absolute values. Of {prof_busy} s of profiled work (time blocked in
`epoll` left out; start-up and the 100 handshakes included), {prof_process} s went to
the lines themselves: `SourceConnection._process`, from framing to fan-out.
Cumulative time of the hot path's entry points, per event, and their share of
`_process`:

| entry point | µs/event (profiled) | share of line processing |
|---|---:|---:|
{point_rows}

Top functions by self time (among those called at least once per 20 events, which
leaves out start-up), share of line processing:

| function | calls | µs/event | share |
|---|---:|---:|---:|
{top_rows}

## Reading the figures

* **Fan-out cost is per batch, not per event.** At 100 clients the daemon spends
  {b_cpu} µs of CPU per event, the baseline {cb_cpu} µs: `broadcast()` serialises a
  frame in Python and calls `send_data()`, hence `send(2)`, for every (event, client)
  pair, about {cb_per_client} µs each. Beyond its own CPU, the baseline's {cb_pairs}
  small writes per run load the kernel and the clients with as many small segments
  (`vmstat` during scenario (c) at 100 clients showed the two cores about two thirds
  in system time when this page was first written). Batching spares the clients too:
  at 1 client, the client process needs {a_clients} of a core with the daemon (a few
  large segments per read) and {ca_clients} with the baseline (one segment per
  event).
* **What the daemon pays per event is fixed work**: parsing, validation, stamping
  (seq, timestamp, the replay ring, running-skill tracking), one JSON encoding, the
  journal, and the log line (next section).
* **At a low, steady rate there is no batch to share**: each read holds one event, so
  the fan-out is one `transport.write`, hence one `send(2)`, per client per event,
  like `broadcast()` (server CPU {d100_cpu} against {d100c_cpu} µs/event at 100
  clients). Latency then depends mostly on how busy the box is: p99 and max move with
  the clients' own CPU and the scheduler on two shared cores, more than with the
  server. The journal's `fsync` (with `fsync: interval`, once a second in a worker
  thread) is cheap on this disk: {fsync_small} ms after appending one second of
  events at 1,000 events/s, {fsync_big} ms after 5 MB (measured by the script in its
  temporary directory, median of 5).
* **The client side weighs.** With websockets' own client the (b) run reaches
  {ws_rate} events/s, {ws_vs_raw}x less than with the minimal client, because the two
  client processes then saturate the box, not the daemon.

## What the design does for the hot path

* **Parse once, serialise once, frame once.** A line is decoded once
  (`protocol.codec.decode_object`), validated, stamped, and encoded once
  (`hub.Stamped.build`). The WebSocket text frame is built once
  (`codec.ws_text_frame`): server frames are unmasked, so the bytes are the same for
  every client. The journal line is a `memoryview` of that frame's payload: no second
  `json.dumps`, no copy.
* **One batch per read.** Everything one `data_received` brings is one batch: one
  journal `write` for the batch and, per client, one `b"".join` of the frames it
  wants and **one `transport.write` per client per batch** (clients without a type
  filter share a single joined buffer). In the profiled run of (b) the source's
  {prof_events} events arrived in {reads} reads and the fan-out made {client_writes}
  client writes in all, where `broadcast()` makes one per (event, client) pair:
  {pairs}.
* **websockets stays off the send path.** It does the handshake, pings, incoming
  frames and the closing handshake; the fan-out writes the prepared bytes straight to
  each transport and applies the slow-consumer limit with `get_write_buffer_size()`.

## Suggestions for the lead

{suggestions}
"""


# -- main -----------------------------------------------------------------------------


def run_order(chosen: list[Scenario]) -> list[tuple[Scenario, int]]:
    """(scenario, run index) in the order to run them; ``alternate`` groups interleaved."""
    order: list[tuple[Scenario, int]] = []
    i = 0
    while i < len(chosen):
        group = [chosen[i]]
        while (
            chosen[i].alternate
            and i + len(group) < len(chosen)
            and chosen[i + len(group)].alternate == chosen[i].alternate
        ):
            group.append(chosen[i + len(group)])
        for n in range(max(sc.repeat for sc in group)):
            order.extend((sc, n) for sc in group if n < sc.repeat)
        i += len(group)
    return order


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
    chosen = scenarios(args.quick, args.repeat)
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
            f"clients' CPU {_clients_pct(r)}, other load {r.other_load * 100:.0f} %, "
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
