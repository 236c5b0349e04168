"""Read-only views of a running daemon: ``/healthz``, ``/clients`` and ``/metrics``.

Implements :class:`~aaeventd.daemon.web.StatusSource` over what :class:`DaemonState`
declares (the seam: :class:`~aaeventd.daemon.app.Daemon` satisfies it, and this module
never imports the app).  It reads counters and state and changes nothing; the HTTP
layer formats nothing but the bytes it is given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aaeventd import SERVER_NAME, __version__
from aaeventd.daemon.journal import JournalHealth
from aaeventd.daemon.metrics import Metric, render_metrics
from aaeventd.protocol.codec import rfc3339_utc

if TYPE_CHECKING:
    from aaeventd.daemon.desktop import DesktopNotifications
    from aaeventd.daemon.handshakes import AcceptExhaustion, HandshakeGuard
    from aaeventd.daemon.hub import Hub
    from aaeventd.daemon.ingest import IngestServer
    from aaeventd.daemon.journal import Journal
    from aaeventd.daemon.web import HttpFront
    from aaeventd.daemon.wsserver import WsServer


class DaemonCounters(Protocol):
    """The daemon's own counters (beyond its components')."""

    @property
    def events_in(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def started_wall(self) -> float: ...


class DaemonState(Protocol):
    """What the views read of a running daemon: its components, read-only."""

    @property
    def hub(self) -> Hub: ...

    @property
    def ingest(self) -> IngestServer: ...

    @property
    def ws(self) -> WsServer: ...

    @property
    def front(self) -> HttpFront: ...

    @property
    def handshakes(self) -> HandshakeGuard: ...

    @property
    def accept_exhaustion(self) -> AcceptExhaustion:
        """The loop exception handler counting accept() failures (installed while running)."""

    @property
    def journal(self) -> Journal | None: ...

    @property
    def socket_path(self) -> Path | None: ...

    @property
    def counters(self) -> DaemonCounters: ...

    @property
    def desktop(self) -> DesktopNotifications: ...

    def now(self) -> float:
        """The event loop's clock."""


class DaemonViews:
    """What the HTTP endpoints show of ``daemon``."""

    def __init__(self, daemon: DaemonState) -> None:
        self._d = daemon

    def client_count(self) -> int:
        return len(self._d.ws.sessions)

    def health(self) -> dict[str, Any]:
        journal = self.journal_health()
        desktop = self._d.desktop
        return {
            "status": "ok" if journal["ok"] and not desktop.degraded else "degraded",
            "server": SERVER_NAME,
            "version": __version__,
            "uptime_seconds": round(time.time() - self._d.counters.started_wall, 3),
            "epoch": self._d.hub.epoch,
            "seq": self._d.hub.last_seq,
            "clients": len(self._d.ws.sessions),
            "sources": len(self._d.ingest.sources),
            "pending_confirmations": self._d.hub.pending_count,
            "running_skills": len(self._d.hub.running_skills(self._d.now())),
            "port": self._d.ws.port,
            "addresses": self._d.ws.addresses,
            "socket_path": str(self._d.socket_path) if self._d.socket_path else None,
            "journal": journal,
            "desktop": desktop.health(),
            "last_error": self._d.counters.last_error,
        }

    def journal_health(self) -> dict[str, Any]:
        """``/healthz``'s ``journal`` object (§4.1); ok with no journal configured."""
        journal = self._d.journal
        if journal is None:
            return {"ok": True, "error": None, "since": None, "unjournaled": 0, "directory": None}
        health = journal.health
        return {
            "ok": health.ok,
            "error": health.error,
            "since": rfc3339_utc(health.since) if health.since is not None else None,
            "unjournaled": health.unjournaled,
            "directory": str(journal.directory),
        }

    def clients_view(self) -> dict[str, Any]:
        now = self._d.now()
        wall = time.time()
        clients = [
            {
                "id": s.id,
                "address": s.address,
                "user_agent": s.user_agent,
                "filter": list(s.filter.globs),
                "connected_since": rfc3339_utc(wall - (now - s.connected_at)),
                "frames_sent": s.frames_sent,
                "backlog_bytes": s.unsent,
            }
            for s in self._d.ws.sessions.values()
        ]
        sources = [
            {
                "id": src.id,
                "pid": src.pid,
                "uid": src.uid,
                "executable": _proc_exe(src.pid),
                "unit": _proc_unit(src.pid),
                "name": src.name,
                "connected_since": rfc3339_utc(wall - (now - src.connected_at)),
                "events_accepted": src.events_accepted,
                "errors": src.errors,
                "dropped_replies": src.dropped_replies,
            }
            for src in self._d.ingest.sources.values()
        ]
        return {"clients": clients, "sources": sources}

    def metrics_text(self) -> str:
        return render_metrics(self.metric_samples())

    def metric_samples(self) -> list[Metric]:
        hub, ingest, ws = self._d.hub, self._d.ingest, self._d.ws
        journal = self._d.journal.health if self._d.journal else JournalHealth()
        guard = self._d.handshakes
        exhaustion = self._d.accept_exhaustion
        return [
            Metric(
                "events_in_total",
                "counter",
                "Events accepted from sources.",
                value=self._d.counters.events_in,
            ),
            Metric(
                "events_out_total",
                "counter",
                "Events broadcast, by type (known types by name, at most 100 others, "
                "the rest as other).",
                # Bounded where counted (HubStats.count_type): a scrape stays small.
                labelled={(("type", t),): n for t, n in hub.stats.by_type.items()},
            ),
            Metric(
                "events_rejected_total",
                "counter",
                "Source lines rejected, by error code.",
                labelled={(("code", c),): n for c, n in ingest.rejected.items()},
            ),
            Metric("clients", "gauge", "Connected WebSocket clients.", value=len(ws.sessions)),
            Metric("sources", "gauge", "Connected sources.", value=len(ingest.sources)),
            Metric(
                "source_refusals_total",
                "counter",
                "Source connections refused.",
                labelled={
                    (("reason", "forbidden"),): ingest.refused_forbidden,
                    (("reason", "overloaded"),): ingest.refused_overloaded,
                },
            ),
            Metric(
                "http_refusals_total",
                "counter",
                "HTTP requests refused, by status.",
                labelled={(("status", str(k)),): v for k, v in self._d.front.refused.items()},
            ),
            Metric(
                "owner_unknown_refusals_total",
                "counter",
                "HTTP requests refused 503 because the connection's owner could not be "
                "determined (PROTOCOL 2.4; also in http_refusals_total).",
                value=self._d.front.owner_unknown_refusals,
            ),
            Metric(
                "pending_handshakes",
                "gauge",
                "TCP connections still in their opening handshake "
                "(bounded by websocket.max_pending_handshakes).",
                value=len(guard.pending),
            ),
            Metric(
                "handshakes_closed_total",
                "counter",
                "Connections closed before completing their opening handshake, by reason: "
                "evicted (the oldest, for a newer one, at websocket.max_pending_handshakes), "
                "refused (a new one, every pending one being under a second old), "
                "timed_out (websocket.handshake_timeout_seconds).",
                labelled={
                    (("reason", "evicted"),): guard.evicted,
                    (("reason", "refused"),): guard.refused,
                    (("reason", "timed_out"),): guard.timed_out,
                },
            ),
            Metric(
                "accept_exhausted_total",
                "counter",
                "Failed accept() attempts for lack of descriptors or memory "
                "(EMFILE, ENFILE, ENOBUFS, ENOMEM); asyncio retries once a second.",
                value=exhaustion.throttle.total,
            ),
            Metric(
                "dropped_replies_total",
                "counter",
                "Replies dropped for sources that do not read them.",
                value=ingest.dropped_replies,
            ),
            Metric(
                "slow_client_disconnects_total",
                "counter",
                "Clients closed with 1013 slow consumer.",
                value=ws.slow_closes,
            ),
            Metric(
                "clients_unsent_bytes",
                "gauge",
                "Bytes all clients have not read yet, as of the last fan-out "
                "(bounded by websocket.clients_buffer_budget_bytes).",
                value=ws.unsent_bytes,
            ),
            Metric(
                "replay_ring_bytes",
                "gauge",
                "Bytes of frames in the replay ring (bounded by events.replay_buffer_bytes).",
                value=hub.ring_bytes,
            ),
            Metric(
                "client_messages_total",
                "counter",
                "Messages received from clients.",
                value=ws.messages_in,
            ),
            Metric(
                "pending_confirmations",
                "gauge",
                "Confirmations awaiting an answer.",
                value=hub.pending_count,
            ),
            Metric(
                "confirmations_answered_total",
                "counter",
                "Confirmations answered.",
                value=hub.stats.confirmations_answered,
            ),
            Metric(
                "confirmations_expired_total",
                "counter",
                "Confirmations expired.",
                value=hub.stats.confirmations_expired,
            ),
            Metric(
                "snapshot_entries_left_out_total",
                "counter",
                "Entries left out of connected frames to keep them within 1 MiB.",
                value=hub.stats.snapshot_entries_left_out,
            ),
            Metric(
                "journal_bytes_total",
                "counter",
                "Bytes appended to the journal.",
                value=self._d.journal.bytes_written if self._d.journal else 0,
            ),
            Metric(
                "journal_errors_total",
                "counter",
                "Journal writes (and fsyncs) that failed.",
                value=journal.failed_writes,
            ),
            Metric(
                "journal_ok",
                "gauge",
                "1 while the journal is written, 0 while it fails (PROTOCOL 4.1).",
                value=int(journal.ok),
            ),
            Metric(
                "journal_unjournaled_events_total",
                "counter",
                "Events broadcast but not written to the journal.",
                value=journal.unjournaled,
            ),
            Metric(
                "journal_skipped_lines_total",
                "counter",
                "Unreadable journal lines skipped by replays.",
                value=journal.skipped_lines,
            ),
            Metric(
                "journal_files_removed_total",
                "counter",
                "Journal files removed to keep journal.keep_free_bytes free.",
                value=journal.files_removed_for_space,
            ),
            Metric(
                "desktop_active",
                "gauge",
                "1 while desktop notifications are on (PROTOCOL 3.6), else 0.",
                value=int(self._d.desktop.active),
            ),
            Metric(
                "desktop_notifications_total",
                "counter",
                "Desktop notifications shown.",
                value=self._d.desktop.shown_total,
            ),
            Metric(
                "desktop_answers_total",
                "counter",
                "Confirmations answered by a click on a desktop notification.",
                value=self._d.desktop.clicks_total,
            ),
            Metric(
                "desktop_notifications_dropped_total",
                "counter",
                "Events of desktop.notify_types not shown (more than one a second).",
                value=self._d.desktop.plan.extras_dropped,
            ),
            Metric("seq", "gauge", "The last seq broadcast.", value=hub.last_seq),
            Metric(
                "uptime_seconds",
                "gauge",
                "Seconds since the daemon started.",
                value=round(time.time() - self._d.counters.started_wall, 3),
            ),
        ]


def _proc_exe(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _proc_unit(pid: int | None) -> str | None:
    """The systemd unit of a process, from the last path element of its cgroup."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.rpartition(":")[2]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return None
