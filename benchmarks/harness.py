"""Running the scenarios: the server under test, the load processes, the probes.

:func:`run_quietly` runs one scenario once (again if other work on the shared box
disturbed it, within a budget): the server as a subprocess (:class:`Server`, ready at
its sd_notify ``READY=1``), the sources and the clients in their own processes
(:mod:`loadgen`), every process stopped before the next run.  The scenario's mode
picks the run: :func:`_live` (one source), :func:`_replay`, :func:`_users` (several
sources, one line per send, a probe client; with a journal replay during the traffic
for a busy run) or :func:`_idle` (the server's RSS per idle client).  Also here: the summary of
the daemon's cProfile, and the probes of the journal reader and of the disk's fsync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import multiprocessing
import os
import pstats
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import loadgen
from scenarios import Result, Scenario

REPO = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).resolve().parent / "baseline_server.py"
START_TIMEOUT = 20.0  # seconds for a server to send READY=1
RUN_TIMEOUT = 120.0  # seconds for any one scenario's traffic
CLIENT_PROCS = 2  # client processes for multi-client scenarios (one per core)
# The box is shared: a run during which other processes used more than this many
# cores is run again (up to ATTEMPTS times, as long as the whole benchmark has spent
# less than RETRY_BUDGET seconds on such re-runs), after waiting up to QUIET_WAIT
# seconds for the box to calm.
OTHER_LOAD_LIMIT = 0.25
ATTEMPTS = 3
RETRY_BUDGET = 60.0
QUIET_WAIT = 15.0
# The daemon's event loop (aaeventd.cli's variable), for a scenario that names one.
EVENT_LOOP_ENV = "AAEVENTD_EVENT_LOOP"
# The users' runs: the sources start GO_MARGIN s after the parent says go; in a busy
# run the replay client connects REPLAY_AT s after that.
GO_MARGIN = 0.1
REPLAY_AT = 1.0
# Slow-consumer scenario: the stalled client reads its close frame after the run
# (the daemon aborts it close_timeout = 10 s after sending it), and /metrics is polled
# until the disconnect is counted.
STALLED_READ_TIMEOUT = 8.0
METRICS_TIMEOUT = 15.0


# -- the server under test ----------------------------------------------------------


class Server:
    """The daemon or the baseline as a subprocess, its log going to a file."""

    def __init__(self, scenario: Scenario, tmp: Path) -> None:
        self.scenario = scenario
        self.tmp = tmp
        self.log_path = tmp / "server.log"
        self.profile_path = tmp / "daemon.prof"
        self.proc: subprocess.Popen[bytes] | None = None
        # The NOTIFY_SOCKET the server says READY=1 on; open while it runs, so its later
        # STATUS= datagrams are not failed sends.
        self.notify: socket.socket | None = None
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
        if sc.buffer_budget is not None:
            websocket["clients_buffer_budget_bytes"] = sc.buffer_budget
        if sc.clients + 2 > 256:  # the default max_clients; +2: the probe, a replay
            websocket["max_clients"] = sc.clients + 16
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
        """Start the server and wait for its sd_notify ``READY=1`` (both servers send it,
        whatever the log level); the port is then read off its listening socket."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
            and not k.startswith(("WATCHDOG_", "AAEVENTD_"))
        }
        env["XDG_RUNTIME_DIR"] = str(self.tmp)
        env["XDG_STATE_HOME"] = str(self.tmp / "state")
        if self.scenario.server == "daemon" and self.scenario.event_loop:
            env[EVENT_LOOP_ENV] = self.scenario.event_loop
        notify_path = self.tmp / "notify.sock"
        notify_path.unlink(missing_ok=True)  # left by the previous start (replay restarts)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        env["NOTIFY_SOCKET"] = str(notify_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"server not ready in {START_TIMEOUT}s: {self.log_tail()}")
            # Short waits, to notice a server that exited before it was ready.
            self.notify.settimeout(min(left, 0.2))
            try:
                message = self.notify.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}: {self.log_tail()}"
                    ) from None
                continue
            if b"READY=1" in message.split(b"\n"):
                break
        port = _listening_port(self.proc.pid)
        if port is None:
            raise RuntimeError(f"server ready but not listening on TCP: {self.log_tail()}")
        self.socket_path, self.host, self.port = str(self.tmp / "ev.sock"), "127.0.0.1", port

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

    def rss_kb(self) -> int:
        """The server process's resident set (``VmRSS``, kB) now."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "VmRSS":
                return int(value.split()[0])
        raise RuntimeError("no VmRSS in /proc/PID/status")  # pragma: no cover

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
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.notify is not None:
            self.notify.close()
            self.notify = None


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
    raise_nofile()
    try:
        if scenario.mode == "replay":
            _replay(ctx, server, result)
        elif scenario.mode in ("users", "busy", "idle"):
            if scenario.replay_events:
                fill = _fill_journal(
                    ctx,
                    server,
                    dataclasses.replace(
                        scenario,
                        mode="live",
                        clients=1,
                        events=scenario.replay_events,
                        rate=None,
                        sources=1,
                        probe=False,
                        replay_events=0,
                    ),
                )
                result.extra.update(fill_rate=fill.events_per_s, fill_other_load=fill.other_load)
            with _children() as procs:
                server.start()
                if scenario.mode == "idle":
                    _idle(ctx, server, procs, result)
                else:
                    _users(ctx, server, procs, result)
            server.stop()
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


def raise_nofile() -> None:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (1,000 clients need
    1,000 fds in the server and in the client processes, which inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start_clients(
    ctx: SpawnContext,
    procs: list[BaseProcess],
    server: Server,
    scenario: Scenario,
    *,
    latency: bool,
    path: str = "/",
    times: bool = False,
    kind: str | None = None,
    clients: int | None = None,
    events: int | None = None,
    start_at_ns: int = 0,
) -> list[Connection]:
    """Start the client processes (one, or CLIENT_PROCS sharing the connections).

    ``kind``, ``clients``, ``events``: instead of the scenario's (the probe client,
    the replay client of a busy run).
    """
    clients = scenario.clients if clients is None else clients
    workers = 1 if clients == 1 else CLIENT_PROCS
    shares = [clients // workers + (i < clients % workers) for i in range(workers)]
    pipes: list[Connection] = []
    for share in shares:
        plan = loadgen.ClientPlan(
            host=server.host,
            port=server.port,
            connections=share,
            events=scenario.events if events is None else events,
            latency=latency,
            kind=kind or scenario.client_kind,
            timeout=RUN_TIMEOUT,
            path=path,
            times=times,
            sources=scenario.sources,
            start_at_ns=start_at_ns,
        )
        pipes.append(_start(ctx, loadgen.client_main, plan, procs))
    return pipes


def _start(
    ctx: SpawnContext,
    target: Callable[[Connection, Any], None],
    plan: Any,
    procs: list[BaseProcess],
) -> Connection:
    """Start one load process (``target(pipe, plan)``, :mod:`loadgen`); its pipe end.

    The process joins ``procs``, which the caller stops after the run.
    """
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, plan), daemon=True)
    proc.start()
    child.close()
    procs.append(proc)
    return parent


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
            line_bytes=scenario.line,
        )
        source_pipe = _start(ctx, loadgen.source_main, source_plan, procs)
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


def _fill_journal(ctx: SpawnContext, server: Server, scenario: Scenario) -> Result:
    """Run ``scenario`` (live: one source, one client) to fill the journal; stop."""
    fill = Result(scenario)
    with _children() as procs:
        server.start()
        _live(ctx, server, procs, fill)
    server.stop()
    return fill


def _start_sources(
    ctx: SpawnContext, procs: list[BaseProcess], server: Server, scenario: Scenario
) -> list[Connection]:
    """``scenario.sources`` source processes, each sending its share one line per send.

    Paced, each sends ``rate / sources`` events/s, source k ``k / rate`` s after the
    first, so that their lines interleave evenly.
    """
    pipes = []
    rate = scenario.rate
    for k in range(scenario.sources):
        plan = loadgen.SourcePlan(
            socket_path=server.socket_path,
            events=scenario.events // scenario.sources,
            rate=rate / scenario.sources if rate else None,
            hello=scenario.server == "daemon",
            timeout=RUN_TIMEOUT,
            line_bytes=scenario.line,
            source=k + 1,
            per_line=True,
            offset_s=k / rate if rate else 0.0,
        )
        pipes.append(_start(ctx, loadgen.source_main, plan, procs))
    return pipes


def _users(ctx: SpawnContext, server: Server, procs: list[BaseProcess], result: Result) -> None:
    """Several sources, the counting clients and the probe client; fill in ``result``.

    Events/s = events / (the first source's first send -> the last event received by
    every counting client).  The probe's checks and latency go to ``extra``.  In a busy
    run with ``replay_events``, one more client connects with ``since=0`` REPLAY_AT s
    into the traffic; the live clients' latency is also given for the events sent
    while it was being replayed to (its ``connected`` frame -> its last replayed
    event), and without a replay for those sent from REPLAY_AT s on.
    """
    sc = result.scenario
    busy = sc.mode == "busy"
    pipes = _start_clients(ctx, procs, server, sc, latency=sc.latency, times=busy)
    probe_pipes = (
        _start_clients(ctx, procs, server, sc, latency=True, kind="probe", clients=1)
        if sc.probe
        else []
    )
    for pipe in (*pipes, *probe_pipes):
        _expect(pipe, "ready", START_TIMEOUT + 10)
    source_pipes = _start_sources(ctx, procs, server, sc)
    result.line_bytes = max(_expect(pipe, "ready", START_TIMEOUT + 10) for pipe in source_pipes)
    start_at = time.monotonic_ns() + int(GO_MARGIN * 1e9)
    replay_at = start_at + int(REPLAY_AT * 1e9)
    replay_pipes = (
        _start_clients(
            ctx,
            procs,
            server,
            sc,
            latency=False,
            path="/?since=0",
            kind="raw",
            clients=1,
            events=sc.replay_events,
            start_at_ns=replay_at,
        )
        if sc.replay_events
        else []
    )
    cpu_before = server.cpu_seconds()
    writes_before = server.write_calls()
    other = OtherLoad()
    for pipe in source_pipes:
        pipe.send(("go", start_at))
    sent = [_expect(pipe, "done", RUN_TIMEOUT) for pipe in source_pipes]
    received = [_expect(pipe, "done", RUN_TIMEOUT) for pipe in pipes]
    probed = [_expect(pipe, "done", RUN_TIMEOUT) for pipe in probe_pipes]
    for pipe in replay_pipes:
        _expect(pipe, "ready", RUN_TIMEOUT)
    replayed = [_expect(pipe, "done", RUN_TIMEOUT) for pipe in replay_pipes]
    result.server_cpu_s = server.cpu_seconds() - cpu_before
    result.writes = server.write_calls() - writes_before
    result.client_cpu_s = sum(r["cpu_s"] for r in (*received, *probed))
    result.other_load = other.cores()
    for r in received:
        if any(n != sc.events for n in r["frames"]):
            raise RuntimeError(f"a client got {r['frames']} events, not {sc.events}")
    t_first = min(x["t_first"] for x in sent)
    last = max(max(r["last_ns"]) for r in received)
    result.elapsed_s = (last - t_first) / 1e9
    result.events_per_s = sc.events / result.elapsed_s
    if sc.latency:
        samples = array("q")
        for r in received:
            samples.frombytes(r["latencies"])
        result.latency_ms = _percentiles(samples)
    for r in probed:
        result.extra["probe"] = {**r["probe"], "frames": r["frames"][0]}
        samples = array("q")
        samples.frombytes(r["latencies"])
        result.extra["probe_ms"] = _percentiles(samples)
    if busy:
        lat, sends = array("q"), array("q")
        for r in received:
            lat.frombytes(r["latencies"])
            sends.frombytes(r["sends"])
        if replayed:
            (rp,) = replayed
            # It stops counting at the replayed events; the live ones follow them.
            if rp["frames"][0] < sc.replay_events:
                raise RuntimeError(f"the replay client got {rp['frames']} events")
            window = (rp["first_ns"][0], rp["last_ns"][0])
            result.extra["replay_s"] = (window[1] - window[0]) / 1e9
        else:
            window = (replay_at, 1 << 62)
        inside = array(
            "q", (x for x, t in zip(lat, sends, strict=True) if window[0] <= t <= window[1])
        )
        result.extra["window_ms"] = _percentiles(inside) if inside else {}


def _idle(ctx: SpawnContext, server: Server, procs: list[BaseProcess], result: Result) -> None:
    """``clients`` idle clients connect; the server's RSS per client, from ``VmRSS``.

    (RSS with every client connected and registered, its ``connected`` frame received,
    - RSS before any connected) / clients; one client connected and left first, so
    that what the first connection loads is not counted as the clients'.
    """
    sc = result.scenario
    warm = loadgen.StalledClient(server.host, server.port)
    try:
        warm.connect()
    finally:
        warm.close()
    # Let the server notice the warm-up client's departure: a measurement's settling
    # time, nothing to wait on.
    time.sleep(0.2)
    before = server.rss_kb()
    started = time.monotonic()
    cpu_before = server.cpu_seconds()
    other = OtherLoad()
    pipes = _start_clients(ctx, procs, server, sc, latency=False)
    for pipe in pipes:
        _expect(pipe, "ready", START_TIMEOUT + RUN_TIMEOUT)
    after = server.rss_kb()
    result.elapsed_s = time.monotonic() - started
    result.server_cpu_s = server.cpu_seconds() - cpu_before
    result.other_load = other.cores()
    for pipe in pipes:
        pipe.send(("stop", None))
    received = [_expect(pipe, "done", RUN_TIMEOUT) for pipe in pipes]
    result.client_cpu_s = sum(r["cpu_s"] for r in received)
    result.extra.update(
        rss_before_kb=before, rss_after_kb=after, rss_per_client_kb=(after - before) / sc.clients
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
    fill = _fill_journal(ctx, server, dataclasses.replace(scenario, mode="live"))
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
# (key, label, file suffix(es) or "~" for built-ins, function(s)): entry points whose
# cumulative time is reported per event; sub-entries are indented in the label.  Where
# the hot path was reworked, the old and the new names are both listed (the absent
# ones count nothing).
PROFILE_POINTS: list[tuple[str, str, str | tuple[str, ...], str | tuple[str, ...]]] = [
    ("process", "ingest: all line processing (_process)", "aaeventd/daemon/ingest.py", "_process"),
    ("decode", "  parse + type check (decode_object)", "protocol/codec.py", "decode_object"),
    ("validate", "  validation (validate_event)", "protocol/events.py", "validate_event"),
    ("submit", "  stamp + encode + frame (Daemon.submit)", "aaeventd/daemon/app.py", "submit"),
    ("ts", "    timestamp (rfc3339_utc)", "protocol/codec.py", "rfc3339_utc"),
    (
        "encode",
        "    JSON encoding (encode_json, splice_stamps)",
        "protocol/codec.py",
        ("encode_json", "splice_stamps"),
    ),
    ("track", "    running-skill tracking (Hub._track)", "aaeventd/daemon/hub.py", "_track"),
    ("flush", "  flush (journal, fan-out, log)", "aaeventd/daemon/app.py", "flush"),
    ("journal", "    journal append", "aaeventd/daemon/app.py", "_journal_append"),
    (
        "fanout",
        "    fan-out to clients (WsServer.fan_out)",
        "aaeventd/daemon/wsserver.py",
        "fan_out",
    ),
    (
        "log",
        "    per-event INFO log line",
        ("aaeventd/daemon/app.py", "aaeventd/daemon/logsetup.py"),
        ("_log_event", "_event_args", "write_events"),
    ),
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


def _matches(
    key: tuple[str, int, str], suffix: str | tuple[str, ...], func: str | tuple[str, ...]
) -> bool:
    filename = key[0]
    if key[2] != func and (isinstance(func, str) or key[2] not in func):
        return False
    return filename == suffix if suffix == "~" else filename.endswith(suffix)


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
