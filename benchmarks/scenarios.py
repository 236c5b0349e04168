"""The benchmark's scenarios: what each run measures, and the order the runs go in.

A :class:`Scenario` is one measured configuration (server, clients, events, rate, log
level, journal policy, ...) under the short key ``--only`` takes; a :class:`Result` is
what one run of it measured.  :mod:`harness` runs them, :mod:`report` writes the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The daemon's own default (4 MiB) would close clients that fall behind during a
# 20k-event burst on a shared 2-core box; the benchmark measures throughput, not the
# slow-consumer policy (the baseline has no limit at all).
SLOW_CLIENT_BUFFER = 256 << 20
DAEMON_SLOW_CLIENT_BUFFER = 4 << 20  # the daemon's default, used by the slow-consumer rows
# The "where users live" scenarios (issue 14): several sources, one ``send`` per line of
# ~300 bytes, one probe client that decodes every frame; runs of the daemon and the
# baseline alternate, USERS_REPEAT of each unless ``--repeat`` says otherwise.
USERS_SOURCES = 4
USERS_LINE = 300
USERS_REPEAT = 5
OTHER_REPEAT = 3
# websocket.clients_buffer_budget_bytes for the users' throughput runs: 1,000 clients
# lagging behind a burst would pass the default 64 MiB (the baseline has no limit).
USERS_BUFFER_BUDGET = 1 << 30
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
    # Issue 14's targets, then the other points of the clients plot.
    "users": (
        "u-1",
        "u-1-c",
        "u-10",
        "u-10-c",
        "u-100",
        "u-100-c",
        "u-idle",
        "u-idle-c",
        "u-busy",
        "u-busy-base",
        "u-10max",
        "u-10max-c",
        "u-1000",
        "u-1000-c",
    ),
    "idle": ("u-idle", "u-idle-c"),
    # u-10 on each event loop, alternated (the daemon only).
    "loop": ("u-10-uvloop", "u-10-asyncio", "u-10-nojournal"),
    "busy": ("u-busy", "u-busy-base"),
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
    # one client), restart the daemon, then replay them all to one client (since=0);
    # "users": ``sources`` sources, one send per line, clients plus one probe client;
    # "idle": ``clients`` connect and stay idle, the server's RSS is read before and
    # after; "busy": as "users" at a fixed rate, and with ``replay_events`` the journal
    # is filled with that many events first, which one more client replays (since=0)
    # while the live events flow.
    mode: str = "live"
    sources: int = 1
    line: int = 200  # bytes per source line, about
    probe: bool = False
    replay_events: int = 0
    # websocket.clients_buffer_budget_bytes; None: the daemon's default (64 MiB).
    buffer_budget: int | None = None
    stalled: int = 0  # extra clients that complete the handshake, then never read
    repeat: int = 1
    # Consecutive scenarios with the same non-empty ``alternate`` have their runs
    # interleaved (x1 y1 x2 y2 ...): they are compared with each other.
    alternate: str = ""
    profile: bool = False
    # AAEVENTD_EVENT_LOOP for the daemon ("asyncio", "uvloop"); "": unset, its default.
    event_loop: str = ""

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
        return self.server_cpu_s / max(self.scenario.events, 1) * 1e6

    @property
    def cpu_pct(self) -> float:
        """The server's CPU over the traffic, in percent of one core."""
        return self.server_cpu_s / self.elapsed_s * 100 if self.elapsed_s else 0.0


def all_scenarios(quick: bool, repeat: int | None = None) -> list[Scenario]:
    """The scenario list; ``quick`` shrinks every count (a smoke run, not figures).

    ``repeat``: runs of each throughput and latency scenario (default OTHER_REPEAT,
    USERS_REPEAT for the users' scenarios).
    """
    k = 10 if quick else 1
    r = 1 if quick else repeat or OTHER_REPEAT
    one, many, paced = 50_000 // k, 20_000 // k, 5_000 // k
    fill = 200_000 // k
    # A quick run still makes the stalled client overflow: the kernel holds up to
    # tcp_wmem's maximum (4 MiB here) for it before the daemon's buffer grows at all.
    flood = 20_000 if quick else 50_000
    slow_limit = (256 << 10) if quick else None
    slow_repeat = min(r, 2)  # 10 s a run: two of each keep `make bench` near 5 minutes
    quiet = "WARNING"
    return [
        *users_scenarios(quick, repeat),
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


def users_scenarios(quick: bool, repeat: int | None) -> list[Scenario]:
    """Issue 14's cases, daemon and baseline alternated (x1 y1 x2 y2 ...)."""
    k = 10 if quick else 1
    r = 1 if quick else repeat or USERS_REPEAT
    plot_r = 1 if quick else min(r, 2)  # the plot's extra points: 1,000 clients is slow
    big = 100 if quick else 1000
    plot_big = 300 if quick else 1000  # not 100: that point is u-100's
    common: dict[str, Any] = {
        "mode": "users",
        "sources": USERS_SOURCES,
        "line": USERS_LINE,
        "probe": True,
    }
    burst = {**common, "buffer_budget": USERS_BUFFER_BUDGET}

    def pair(key: str, group: str, clients: int, events: int, **kw: Any) -> list[Scenario]:
        return [
            Scenario(key, "daemon", clients, events, alternate=group, **kw),
            Scenario(f"{key}-c", "baseline", clients, events, alternate=group, **kw),
        ]

    return [
        # 1 client, as fast as the sources go: events/s delivered.
        *pair("u-1", "u-1", 1, 40_000 // k, repeat=r, **burst),
        # 10 clients at a fixed 2,000 events/s in all: server CPU and p99 latency.
        *pair("u-10", "u-10", 10, 10_000 // k, rate=2000, repeat=r, **common),
        # The same on uvloop and on asyncio's own loop, and on asyncio without the
        # journal, alternated: what uvloop wins, what the journal's write costs.
        *(
            Scenario(
                f"u-10-{name}",
                "daemon",
                10,
                10_000 // k,
                rate=2000,
                repeat=r,
                alternate="loop",
                event_loop=loop,
                journal=journal,
                **common,
            )
            for name, loop, journal in (
                ("uvloop", "uvloop", True),
                ("asyncio", "asyncio", True),
                ("nojournal", "asyncio", False),
            )
        ),
        # 100 clients, as fast as the sources go: events/s to each client.
        *pair("u-100", "u-100", 100, 8_000 // k, repeat=r, **burst),
        # RSS per idle client, 1,000 connected.
        *pair("u-idle", "u-idle", big, 0, repeat=r, mode="idle"),
        # A 200k-event journal replay to one client while live events go to three:
        # the live clients' latency with (u-busy) and without (u-busy-base) the replay.
        Scenario(
            "u-busy",
            "daemon",
            3,
            1_600 if quick else 5_000,
            rate=1000,
            repeat=r,
            alternate="u-busy",
            replay_events=200_000 // k,
            log_level="WARNING",  # as in ``r``: the 200k-event fill goes faster
            **{**common, "mode": "busy"},
        ),
        Scenario(
            "u-busy-base",
            "daemon",
            3,
            1_600 if quick else 5_000,
            rate=1000,
            repeat=r,
            alternate="u-busy",
            log_level="WARNING",
            **{**common, "mode": "busy"},
        ),
        # The plot's other points (events/s against clients): 10 and 1,000 clients.
        *pair("u-10max", "u-10max", 10, 20_000 // k, repeat=plot_r, **burst),
        *pair("u-1000", "u-1000", plot_big, 400 // k, repeat=plot_r, **burst),
    ]


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
