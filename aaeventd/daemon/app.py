"""The composition root: builds the daemon from a :class:`~aaeventd.config.Config`.

Owns the start and stop order, the one ``asyncio.TaskGroup`` of background tasks
(confirmation deadlines, journal fsync, watchdog, status), signals (SIGTERM/SIGINT
stop, SIGHUP reload), and is the one place that executes the hub's effects: journal
first, then the single INFO log line, the fan-out to clients, and the replies to
sources.  With ``journal.fsync: always`` it also runs the group commit (PROTOCOL §4):
a written batch waits, fan-out and acks alike, for an fsync in a worker thread, and
the batches written meanwhile share the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aaeventd import __version__
from aaeventd.config import (
    Config,
    changed_restart_keys,
    load_config,
    resolve_journal_dir,
    resolve_socket_path,
    resolve_token_file,
    with_restart_keys_from,
)
from aaeventd.daemon.desktop import CLIENT_ID as DESKTOP_CLIENT
from aaeventd.daemon.desktop import DesktopNotifications
from aaeventd.daemon.handshakes import (
    AcceptExhaustion,
    ExceptionHandler,
    HandshakeGuard,
    HandshakeSettings,
    raise_fd_limit,
)
from aaeventd.daemon.hub import (
    Broadcast,
    Effect,
    Hub,
    HubLimits,
    Pending,
    SourceId,
    Stamped,
    ToSource,
)
from aaeventd.daemon.ingest import IngestServer, IngestSettings, SourceConnection
from aaeventd.daemon.journal import Journal, fsync_fds, new_epoch
from aaeventd.daemon.logsetup import (
    EVENT_LINE,
    EventArgs,
    configure_logging,
    event_writer,
    log_batch,
    redact,
    redact_set,
)
from aaeventd.daemon.notify import Notifier, listen_fds
from aaeventd.daemon.replay import backfill as journal_backfill
from aaeventd.daemon.replay import gap_frame, skill_history
from aaeventd.daemon.views import DaemonViews
from aaeventd.daemon.web import AccessSettings, HttpFront
from aaeventd.daemon.wsserver import (
    REPLAY_PIECE_BYTES,
    REPLAY_PIECE_EVENTS,
    ClientSession,
    ReplayPiece,
    StreamSettings,
    StreamStart,
    WsServer,
)
from aaeventd.errors import ConfigError, StartupError
from aaeventd.protocol.codec import encode_json, ws_text_frame
from aaeventd.protocol.errors import ProtocolError
from aaeventd.protocol.events import ClientMessage, ConfirmationResponse, PauseTimer, ResumeTimer
from aaeventd.protocol.filters import TypeFilter
from aaeventd.tokens import load_or_create_token

log = logging.getLogger("aaeventd.app")
events_log = logging.getLogger("aaeventd.events")
audit_log = logging.getLogger("aaeventd.audit")

STATUS_MIN_INTERVAL = 1.0
JOURNAL_SYNC_INTERVAL = 1.0
# At stop, how long held batches may wait for their fsync (fsync: always) before they
# are released unsynced: the stop stays within PROTOCOL §5's 5 seconds on a stuck disk.
SHUTDOWN_SYNC_WAIT = 1.5


@dataclass
class Counters:
    """What ``/metrics`` and ``STATUS=`` report beyond the components' own counters."""

    events_in: int = 0
    last_error: str | None = None
    started_wall: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Held:
    """A batch written to the journal and waiting for the fsync that covers it, or (with
    ``reply``) a reply to ``source`` queued behind such a batch's acks.

    ``sources``: the ids this entry counts for in ``Daemon._held_for``; ``clients``:
    the clients whose answer is in ``batch`` (their control replies wait for it).
    """

    batch: list[Broadcast]
    unjournaled: int | None
    sources: tuple[SourceId, ...]
    reply: dict[str, Any] | None = None
    source: SourceConnection | None = None
    clients: list[ClientSession] = field(default_factory=list)
    size: int = 0  # the bytes of the batch's frames


@dataclass(frozen=True, slots=True)
class Listening:
    """What :meth:`Daemon.start` bound: where sources and clients reach the daemon."""

    socket_path: Path
    #: every address clients can connect to, as ``(host, port)``, IPv4 first
    addresses: tuple[tuple[str, int], ...]
    port: int  # the same on every address
    epoch: str
    seq: int  # the journal resumes after it

    @property
    def url(self) -> str:
        """The clients' URL on the first address (``ws://127.0.0.1:PORT/``)."""
        host, port = self.addresses[0]
        return f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"


class Daemon:
    """One running aaeventd.  ``await run()`` until :meth:`request_stop`; or
    ``await start()`` (what it bound) then ``await serve()``."""

    # Built by start() (_open_journal), once the journal has said where seq and epoch resume.
    hub: Hub

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        self.stopped = asyncio.Event()
        self.counters = Counters()
        self.socket_path: Path | None = None
        self.journal: Journal | None = None
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._batch: list[Broadcast] = []
        self._flush_scheduled = False
        # The group commit (fsync: always): written batches, and replies queued behind
        # their acks, in order, until the fsync covering them returns; how many entries
        # each source has there; the fsync in flight (covering the entries queued when
        # it started), run on one worker thread.
        self._held: deque[_Held] = deque()
        self._held_for: dict[SourceId, int] = {}
        self._held_clients: dict[str, int] = {}  # client id -> held answers
        # What the held batches hold, bounded like the replay ring (events.replay_buffer
        # and replay_buffer_bytes): past either, sources are not read until the disk
        # catches up, the backpressure an fsync on the loop used to give by blocking.
        self._held_events = 0
        self._held_bytes = 0
        self._paused: dict[SourceId, SourceConnection] = {}
        self._sync: asyncio.Future[OSError | None] | None = None
        self._sync_soon = False
        self._fsync_pool: ThreadPoolExecutor | None = None
        self._redact = redact_set(config.logging.redact_fields)
        self._status_text = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notifier = Notifier(self.env)
        self.listening: Listening | None = None  # what start() bound
        # Installed as the loop's exception handler while the daemon runs (start()).
        self.accept_exhaustion = AcceptExhaustion(None)
        self._previous_handler: ExceptionHandler | None = None
        self.ingest = IngestServer(_ingest_settings(config), self)
        self.access = AccessSettings()
        self._apply_access(config)
        self.front = HttpFront(self.access, DaemonViews(self))
        # §3.6: connects in serve()'s task group, never before READY=1.
        self.desktop = DesktopNotifications(
            config.desktop,
            self.env,
            answer=self.desktop_answer,
            remaining=self._remaining,
            web_url=self._web_url,
            clock=self._now,
        )
        ws = config.websocket
        self.handshakes = HandshakeGuard(
            HandshakeSettings(ws.max_pending_handshakes, ws.handshake_timeout_seconds)
        )
        self.ws = WsServer(
            StreamSettings(
                slow_client_buffer_bytes=ws.slow_client_buffer_bytes,
                clients_buffer_budget_bytes=ws.clients_buffer_budget_bytes,
            ),
            self,
            self.front,
            max_message_bytes=ws.max_message_bytes,
            ping_interval=ws.ping_interval_seconds,
            ping_timeout=ws.ping_timeout_seconds,
        )

    # -- lifecycle ---------------------------------------------------------------

    @property
    def ws_port(self) -> int:
        return self.ws.port

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, install_signals: bool = False) -> None:
        """Start, serve until asked to stop, then shut down cleanly.

        Raises:
            StartupError: a socket or the journal cannot be set up.
        """
        await self.start(install_signals=install_signals)
        await self.serve()

    async def start(self, *, install_signals: bool = False) -> Listening:
        """Open the journal, build the hub, bind every socket and say ready; what it bound.

        Ready means the ``ready`` log line, ``READY=1`` to systemd, and connections
        accepted (their handling runs as the loop turns).  Then :meth:`serve` runs the
        background tasks until :meth:`request_stop`.  On failure everything opened is
        closed again before the error is raised.

        Raises:
            StartupError: a socket or the journal cannot be set up.
        """
        self._loop = loop = asyncio.get_running_loop()
        # Out of descriptors in accept(): one line a minute, not a traceback per try.
        self.accept_exhaustion.previous = self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.accept_exhaustion)
        try:
            self._open_journal()
        except BaseException:
            loop.set_exception_handler(self._previous_handler)
            raise
        try:
            await self._listen()
        except BaseException:
            await self._shutdown()
            raise
        if install_signals:
            self._install_signals()
        assert self.socket_path is not None
        listening = self.listening = Listening(
            socket_path=self.socket_path,
            addresses=tuple(self.ws.bound),
            port=self.ws.port,
            epoch=self.hub.epoch,
            seq=self.hub.last_seq,
        )
        log.info(
            "aaeventd %s ready: sources on %s, clients on ws://%s:%d/ (epoch %s, seq %d)",
            __version__,
            listening.socket_path,
            self.config.websocket.host,
            listening.port,
            listening.epoch,
            listening.seq,
        )
        self._notify_ready()
        return listening

    async def serve(self) -> None:
        """After :meth:`start`: run the background tasks until :meth:`request_stop`,
        then shut down cleanly."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._deadlines())
                tasks.create_task(self._housekeeping())
                tasks.create_task(self.desktop.run())
                if self.notifier.watchdog_interval:
                    tasks.create_task(self._watchdog(self.notifier.watchdog_interval))
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            await self._shutdown()

    async def _listen(self) -> None:
        """Bind the sources' socket and the clients' addresses (or adopt systemd's)."""
        cfg = self.config
        inherited = listen_fds(self.env)
        events = inherited.pop("events", [])
        for sock in events[1:]:
            log.warning("ignoring a second inherited events socket (fd %d)", sock.fileno())
            sock.close()
        path = resolve_socket_path(cfg, self.env)
        self.socket_path = path
        await self.ingest.start(path=path, sock=events[0] if events else None)
        if self.ingest.path is not None:
            self.socket_path = self.ingest.path
        try:
            await self.ws.start(
                host=cfg.websocket.host,
                port=cfg.websocket.port,
                socks=inherited.pop("websocket", []),
                handshakes=self.handshakes,
            )
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {cfg.websocket.host}:{cfg.websocket.port}: {exc.strerror or exc}"
            ) from exc
        self.access.set_port(self.ws.port)
        if cfg.websocket.port == 0 and not log.isEnabledFor(logging.INFO):
            # §7: with port 0 the real port is logged, whatever the level.
            log.warning("listening for clients on port %d (port 0 configured)", self.ws.port)
        for name, socks in inherited.items():
            for sock in socks:
                log.warning("ignoring inherited socket %r (expected events, websocket)", name)
                sock.close()

    def _open_journal(self) -> None:
        """Open the journal and build the hub where it says seq and epoch resume.

        The one place the hub is built (no journal: a new epoch from seq 0).
        """
        limits = _hub_limits(self.config)
        cfg = self.config.journal
        if not cfg.enabled:
            self.hub = Hub(epoch=new_epoch(), limits=limits)
            return
        directory = resolve_journal_dir(self.config, self.env)
        self.journal = Journal(
            directory,
            max_file_bytes=cfg.max_file_bytes,
            max_files=cfg.max_files,
            fsync=cfg.fsync,
            keep_free_bytes=cfg.keep_free_bytes,
        )
        try:
            state = self.journal.open()
        except OSError as exc:
            raise StartupError(f"cannot open the journal in {directory}: {exc}") from exc
        self.hub = Hub(epoch=state.epoch, last_seq=state.last_seq, limits=limits)
        log.info(
            "journal %s: epoch %s, resuming after seq %d", directory, state.epoch, state.last_seq
        )
        # §2.1: the skills still running when the daemon stopped, from the journal.
        wall = time.time()
        rebuilt = self.hub.rebuild_skills(skill_history(self.journal, wall), wall, self._now())
        if rebuilt:
            log.info("running skills rebuilt from the journal: %d", rebuilt)

    async def _shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        await self.ingest.stop_accepting()
        self._execute(self.hub.shutdown(time.time(), self._now()))
        # Held batches reach the disk and the clients before the clients are closed.
        sync_deadline = self._now() + SHUTDOWN_SYNC_WAIT
        await self._drain_held(sync_deadline)
        # Connections still in their opening handshake first: the WebSocket server's
        # stop waits for each of them, and a silent one would never end by itself.
        self.handshakes.close()
        # Both bounded (ws.close aborts clients that do not read their close frame,
        # ingest.close sources that do not read their replies); together, so the stop
        # takes the longer of the two, not the sum (§5: < 5 s).
        await asyncio.gather(self.ingest.close(), self.ws.close())
        self.flush()
        await self._drain_held(sync_deadline)  # what sources sent while closing
        await self.desktop.close()  # withdraws what is shown (bounded)
        if self.journal is not None:
            self.journal.close()
        if self._fsync_pool is not None:
            self._fsync_pool.shutdown(wait=False)
        self.notifier.close()
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous_handler)
        self.stopped.set()
        log.info("stopped after %d events", self.counters.events_in)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def now(self) -> float:
        """The event loop's clock (what the hub's deadlines are measured in)."""
        return self._now()

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    # -- background tasks --------------------------------------------------------

    async def _deadlines(self) -> None:
        """Expire confirmations (and end long pauses) when their time comes."""
        while True:
            self._wakeup.clear()
            deadline = self.hub.next_deadline()
            if deadline is None:
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._wakeup.wait()
            self._execute(self.hub.expire_due(time.time(), self._now()))

    async def _housekeeping(self) -> None:
        """Once a second: journal fsync (policy ``interval``) and ``STATUS=``."""
        while True:
            await asyncio.sleep(JOURNAL_SYNC_INTERVAL)
            journal = self.journal
            if journal is not None:
                # Free space (keep_free_bytes), a deleted file: at most once a second.
                journal.tick()
            if journal is not None and journal.fsync == "interval":
                try:
                    fds = journal.unsynced_fds()
                    if fds:
                        seq = self.hub.last_seq
                        # Off the event loop: a slow disk must not stall the clients.
                        error = await asyncio.to_thread(fsync_fds, fds)
                        if error is None:
                            journal.synced(seq)
                        else:
                            journal.sync_failed(error)
                except OSError as exc:
                    journal.sync_failed(exc)
            status = self._status_line()
            if status != self._status_text:
                self._status_text = status
                self.notifier.status(status)

    async def _watchdog(self, interval: float) -> None:
        # Sent from the event loop itself: a blocked loop stops the pings.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _status_line(self) -> str:
        text = (
            f"{len(self.ws.sessions)} clients, {len(self.ingest.sources)} sources, "
            f"{self.counters.events_in} events, seq {self.hub.last_seq}"
        )
        journal = self.journal
        if journal is not None and not journal.ok:
            health = journal.health
            text += f"; journal failing: {health.error}, {health.unjournaled} events not journaled"
        if self.counters.last_error:
            text += f"; last error: {self.counters.last_error}"
        return text

    # -- reload (SIGHUP) ---------------------------------------------------------

    def reload(self) -> None:
        """Read the config again and apply what can change live.

        Nothing changes when the new config is invalid, would leave a public port
        unguarded, or names a token file that cannot be used: the reason goes to the
        log and to ``STATUS=``.  ``READY=1`` follows ``RELOADING=1`` every time (a
        ``systemctl reload`` waits for it).
        """
        self.notifier.reloading()
        try:
            new, _ = load_config(self.config_path, env=self.env)
            restart_keys = changed_restart_keys(self.config, new)
            new = with_restart_keys_from(self.config, new)
            token_file = resolve_token_file(new)
            if token_file is not None:
                load_or_create_token(token_file)  # fails here, before anything changed
        except (ConfigError, OSError) as exc:
            self.counters.last_error = f"reload failed: {exc}"
            log.error("reload failed, keeping the old config: %s", exc)
            self._notify_ready()
            return
        for key in restart_keys:
            log.warning("reload: %s changed; it takes effect only after a restart", key)
        self.apply_config(new)
        if (self.counters.last_error or "").startswith("reload failed"):
            self.counters.last_error = None
        log.info("configuration reloaded")
        self._notify_ready()

    def _notify_ready(self) -> None:
        """``READY=1`` with the current ``STATUS=`` (which housekeeping then need not repeat)."""
        self._status_text = self._status_line()
        self.notifier.ready(self._status_text)

    def apply_config(self, new: Config) -> None:
        """Apply live-reloadable settings (everything but sockets)."""
        self.config = new
        configure_logging(new.logging.level, new.logging.format, target=new.logging.target)
        self._redact = redact_set(new.logging.redact_fields)
        self.hub.set_limits(_hub_limits(new))
        fresh = _ingest_settings(new)
        settings = self.ingest.settings
        for name in fresh.__dataclass_fields__:
            setattr(settings, name, getattr(fresh, name))
        self._apply_access(new)
        self.ws.settings.slow_client_buffer_bytes = new.websocket.slow_client_buffer_bytes
        self.ws.settings.clients_buffer_budget_bytes = new.websocket.clients_buffer_budget_bytes
        self.ws.set_max_message_bytes(new.websocket.max_message_bytes)
        self.handshakes.settings.max_pending = new.websocket.max_pending_handshakes
        self.handshakes.settings.timeout = new.websocket.handshake_timeout_seconds
        self.handshakes.settings_changed()
        self.desktop.reconfigure(new.desktop)
        if self.journal is not None:
            self.journal.max_file_bytes = new.journal.max_file_bytes
            self.journal.max_files = new.journal.max_files
            self.journal.fsync = new.journal.fsync
            self.journal.keep_free_bytes = new.journal.keep_free_bytes
        self._wakeup.set()

    def _apply_access(self, cfg: Config) -> None:
        access = self.access
        access.allowed_origins = tuple(cfg.websocket.allowed_origins)
        access.allow_remote = cfg.websocket.allow_remote
        access.max_clients = cfg.websocket.max_clients
        access.allowed_uids = frozenset({os.getuid(), *cfg.sources.allowed_uids})
        token_file = resolve_token_file(cfg)
        access.token = load_or_create_token(token_file) if token_file is not None else None

    # -- effects -----------------------------------------------------------------

    def _execute(self, effects: list[Effect]) -> None:
        """Broadcasts first (journal, fan-out), then the replies to sources.

        While batches are held for their fsync, those replies wait behind them.
        """
        replies: list[ToSource] = []
        for effect in effects:
            if isinstance(effect, Broadcast):
                if effect.stamped.type == "confirmation_expired":
                    event = effect.stamped.event
                    audit_log.info(
                        "confirmation %s expired (%s); response %r",
                        event.get("id"),
                        event.get("reason"),
                        event.get("response"),
                    )
                self._batch.append(effect)
            else:
                replies.append(effect)
        self.flush()
        hold = bool(self._held)
        for reply in replies:
            self._to_source(reply, hold=hold)

    def _to_source(self, effect: ToSource, *, hold: bool = False) -> None:
        source = self.ingest.sources.get(effect.source)
        if source is None:
            return
        if hold:
            self._queue_reply(source, effect.message)
        else:
            source.reply(effect.message)
        self._close_if_done(source)

    def _close_if_done(self, source: SourceConnection) -> None:
        """Close a source that shut its write side once nothing is left to tell it."""
        if (
            source.half_closed
            and self.hub.pending_for(source.id) == 0
            and source.id not in self._held_for
        ):
            source.close()

    def flush_soon(self) -> None:
        """Flush once at the end of this turn of the loop: the lines every source's
        read brought in this turn become one batch, so each client gets one write per
        turn, not one per source read (and the journal and the log one write each).

        Nothing can see the batch half done meanwhile: a client that connects first
        flushes it (:meth:`open_stream`), and every other path that hands events on
        (answers, expiries, errors to a source, shutdown) calls :meth:`flush` first.
        """
        if not self._flush_scheduled and self._batch:
            self._flush_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Journal the batch, log it, hand it to the clients, then ack the sources.

        With ``fsync: always`` (or while earlier batches are held) everything after the
        journal write waits for the fsync that covers the batch (:meth:`_hold`).
        """
        batch = self._batch
        if not batch:
            return
        self._batch = []
        stamped = [b.stamped for b in batch]
        journal = self.journal
        # The first seq of this batch that is not in the journal (§4.1), if any.
        unjournaled = self._journal_append(stamped) if journal is not None else None
        if self._held or (journal is not None and journal.fsync == "always"):
            self._hold(batch, unjournaled)
        else:
            self._release(batch, unjournaled)

    def _release(self, batch: list[Broadcast], unjournaled: int | None) -> None:
        """Log the journaled batch, hand it to the clients, then ack the sources.

        Per batch, not per event: one write per client (``fan_out``), one to the log
        (:func:`~aaeventd.daemon.logsetup.event_writer`, no LogRecord per line when the
        handler is ours alone) and one per acked source.
        """
        stamped = [b.stamped for b in batch]
        delivered = self.ws.fan_out(stamped)
        sources = self.ingest.sources
        log_info = events_log.isEnabledFor(logging.INFO)
        log_payloads = events_log.isEnabledFor(logging.DEBUG)
        # At DEBUG each line is followed by its payload's: through the logger, in order.
        write_events = event_writer() if log_info and not log_payloads else None
        lines: list[EventArgs] = []
        acks: dict[SourceId, list[bytes]] = {}
        observe = self.desktop.observe
        with log_batch(self._loop.call_later if self._loop is not None else None):
            for item, count in zip(batch, delivered, strict=True):
                event = item.stamped
                source = sources.get(item.source) if item.source is not None else None
                if log_info:
                    args = self._event_args(event, source, count)
                    if write_events is not None:
                        lines.append(args)
                    else:
                        events_log.info(EVENT_LINE, *args)
                    if log_payloads:
                        self._log_payload(event)
                observe(event.type, event.event, count)
                if item.ack_to is not None and source is not None:
                    acks.setdefault(source.id, []).append(self._ack_line(item, count, unjournaled))
            if write_events is not None:
                write_events(lines)
        for sid, ack_lines in acks.items():
            # Not reply(): held replies wait behind these very acks.
            sources[sid].write_lines(ack_lines)
        self.counters.events_in += len(batch)

    # -- group commit (fsync: always) ----------------------------------------------

    def _hold(self, batch: list[Broadcast], unjournaled: int | None) -> None:
        """Keep a written batch from clients and sources until an fsync covers it.

        Until then ``connected.seq`` and replays stop before it (``hub.held_after``),
        and replies to its sources queue behind its acks (:meth:`hold_reply`).
        """
        if self.hub.held_after is None:
            self.hub.held_after = batch[0].stamped.seq - 1
        # The sources this batch acks (what _release replies to).
        ids = tuple(
            {sid for item in batch if item.ack_to is not None and (sid := item.source) is not None}
        )
        held_for = self._held_for
        for sid in ids:
            held_for[sid] = held_for.get(sid, 0) + 1
        size = sum(len(item.stamped.frame) for item in batch)
        self._held.append(_Held(batch, unjournaled, ids, size=size))
        self._held_events += len(batch)
        self._held_bytes += size
        limits = self.hub.limits
        if (
            self._held_events > limits.replay_buffer
            or self._held_bytes > limits.replay_buffer_bytes
        ):
            self._pause_sources()
        if self._sync is None and not self._sync_soon:
            # At the end of this turn of the loop: every batch of the turn shares it.
            self._sync_soon = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._start_sync)

    def hold_reply(self, source: SourceConnection, message: dict[str, Any]) -> bool:
        """Queue a reply behind the source's held acks (replies stay in line order)."""
        if source.id not in self._held_for:
            return False
        self._queue_reply(source, message)
        return True

    def _queue_reply(self, source: SourceConnection, message: dict[str, Any]) -> None:
        """Queue a reply behind everything held (something is: a sync is on its way)."""
        self._held_for[source.id] = self._held_for.get(source.id, 0) + 1
        self._held.append(_Held([], None, (source.id,), message, source))

    def _start_sync(self) -> None:
        """fsync, in the worker thread, everything written so far; it covers every entry
        queued now.  Nothing to sync (nothing written: a failing journal): release now."""
        self._sync_soon = False
        if self._sync is not None or not self._held:
            return
        covered, last_seq = len(self._held), self.hub.last_seq
        journal = self.journal
        fds: list[int] = []
        if journal is not None:
            try:
                fds = journal.unsynced_fds()
            except OSError:
                # Not even a descriptor to spare for the thread: sync here (rare).
                try:
                    journal.sync()
                    journal.synced(last_seq)
                except OSError as exc:
                    self._sync_failed(exc)
        if not fds:
            self._release_held(covered)
            return
        if self._fsync_pool is None:
            self._fsync_pool = ThreadPoolExecutor(1, thread_name_prefix="aaeventd-fsync")
        loop = self._loop or asyncio.get_running_loop()
        future = loop.run_in_executor(self._fsync_pool, fsync_fds, fds)
        self._sync = future
        future.add_done_callback(functools.partial(self._synced, covered, last_seq))

    def _synced(self, covered: int, last_seq: int, future: asyncio.Future[OSError | None]) -> None:
        if future is not self._sync:
            return  # its batches were released without it (a stop that could not wait)
        self._sync = None
        error = future.result()
        if self.journal is not None:
            if error is None:
                self.journal.synced(last_seq)
            else:
                self._sync_failed(error)
        self._release_held(covered)
        if self._held:
            self._start_sync()  # the batches written while this one was in flight

    def _sync_failed(self, error: OSError) -> None:
        """Availability first (§4.1): the batch goes out anyway, the journal is degraded.

        Its lines are in the file (replays serve them, a crash of the daemon loses none),
        so acks do not say ``journaled: false``, as with ``interval``.
        """
        assert self.journal is not None
        self.journal.sync_failed(error)
        self.counters.last_error = f"journal: {self.journal.health.error}"

    def _release_held(self, count: int) -> None:
        """Hand the first ``count`` held entries out, in order."""
        held, held_for, hub = self._held, self._held_for, self.hub
        done: list[SourceId] = []
        for _ in range(count):
            entry = held.popleft()
            for sid in entry.sources:
                left = held_for[sid] - 1
                if left:
                    held_for[sid] = left
                else:
                    del held_for[sid]
                    done.append(sid)
            if entry.source is not None:
                assert entry.reply is not None
                entry.source.write_line(encode_json(entry.reply))
            else:
                hub.held_after = entry.batch[-1].stamped.seq
                self._held_events -= len(entry.batch)
                self._held_bytes -= entry.size
                self._release(entry.batch, entry.unjournaled)
            for session in entry.clients:
                self._release_client(session)
        if not held:
            hub.held_after = None
        if self._paused:
            limits = hub.limits
            if (
                self._held_events <= limits.replay_buffer // 2
                and self._held_bytes <= limits.replay_buffer_bytes // 2
            ):
                self._resume_sources()
        sources = self.ingest.sources
        for sid in done:
            source = sources.get(sid)
            if source is not None:
                self._close_if_done(source)

    def _pause_sources(self) -> None:
        """Stop reading every source (the one that is over included) until released."""
        for sid, source in self.ingest.sources.items():
            if sid not in self._paused and source.transport is not None:
                source.transport.pause_reading()
                self._paused[sid] = source
        log.debug("journal fsync behind (%d events held): sources paused", self._held_events)

    def _resume_sources(self) -> None:
        paused, self._paused = self._paused, {}
        for source in paused.values():
            if source.transport is not None:
                source.transport.resume_reading()

    def _hold_client(self, session: ClientSession) -> None:
        """The client answered while batches are held (its answer's among them, or the
        one it lost to): its control replies (the error, a heartbeat used as a barrier)
        wait until everything held now went out, as they would come after it unheld."""
        self._held[-1].clients.append(session)
        self._held_clients[session.id] = self._held_clients.get(session.id, 0) + 1
        if session.control_held is None:
            session.control_held = []

    def _release_client(self, session: ClientSession) -> None:
        left = self._held_clients[session.id] - 1
        if left:
            self._held_clients[session.id] = left
        else:
            del self._held_clients[session.id]
            session.release_control()

    async def _drain_held(self, deadline: float) -> None:
        """Sync and release every held batch (at stop); unsynced past ``deadline``."""
        while self._held:
            future = self._sync
            if future is None:
                self._start_sync()
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(future)
            except TimeoutError:
                log.warning(
                    "stopping: the journal's fsync did not return in time; releasing %d "
                    "held batches without it",
                    sum(1 for e in self._held if e.source is None),
                )
                self._sync = None
                self._release_held(len(self._held))

    def _journal_append(self, stamped: list[Stamped]) -> int | None:
        """Journal the batch; the first seq that could not be written, or None.

        Availability over durability (§4.1): live clients get the events either way;
        the journal logs and counts the failure and retries with the next batch.
        """
        assert self.journal is not None
        written = self.journal.append(stamped)
        if written == len(stamped):
            return None
        self.counters.last_error = f"journal: {self.journal.health.error}"
        return stamped[written].seq

    @staticmethod
    def _ack_line(item: Broadcast, delivered: int, unjournaled: int | None) -> bytes:
        """The ack of one event (§1.2), as its NDJSON text without the newline."""
        seq = item.stamped.seq
        journaled = unjournaled is None or seq < unjournaled
        if not item.ack_extra and journaled:
            return b'{"type":"ack","seq":%d,"delivered":%d}' % (seq, delivered)
        ack: dict[str, Any] = {"type": "ack", "seq": seq, "delivered": delivered}
        if item.ack_extra:
            ack.update(item.ack_extra)
        if not journaled:
            ack["journaled"] = False
        return encode_json(ack)

    def _event_args(
        self, stamped: Stamped, source: SourceConnection | None, delivered: int
    ) -> EventArgs:
        """The per-event INFO line's arguments (§4), redacted as configured."""
        event = stamped.event
        hidden = self._redact
        skill = event.get("skill_name", event.get("skill_id"))
        step = event.get("step_name")
        if skill is not None and ("skill_name" in hidden or "skill_id" in hidden):
            skill = "***"
        if step is not None and "step_name" in hidden:
            step = "***"
        skill, step = _loggable(skill), _loggable(step)
        return (
            stamped.seq,
            stamped.type,
            source.pid if source is not None else "-",
            skill if skill is not None else "-",
            step if step is not None else "-",
            delivered,
        )

    def _log_payload(self, stamped: Stamped) -> None:
        try:
            shown = json.dumps(redact(stamped.event, self._redact), ensure_ascii=False)
        except RecursionError:
            shown = "<nested too deeply to show>"
        events_log.debug("event seq=%d payload=%s", stamped.seq, shown)

    # -- EventSink (ingest) ------------------------------------------------------

    def submit(
        self, source: SourceConnection, event: dict[str, Any], event_type: str, raw: bytes
    ) -> None:
        effects = self.hub.accept(
            event,
            event_type,
            source=source.id,
            wants_ack=source.wants_ack,
            wall=time.time(),
            now=self._now(),
            raw=raw,
        )
        self._batch.extend(e for e in effects if isinstance(e, Broadcast))
        if event_type == "confirmation_required":
            self._wakeup.set()

    def last_seq(self) -> int:
        return self.hub.released_seq

    def source_closed(self, source: SourceConnection) -> None:
        self._execute(self.hub.source_gone(source.id, time.time(), self._now()))

    def keep_open_after_eof(self, source: SourceConnection) -> bool:
        return self.hub.pending_for(source.id) > 0 or source.id in self._held_for

    # -- ClientSink (wsserver) ---------------------------------------------------

    def open_stream(
        self, session: ClientSession, since: int | None, epoch: str | None
    ) -> StreamStart:
        # Events stamped this turn reach the clients already connected, and are in the
        # snapshot and replay of this one: it is registered after this returns.
        self.flush()
        hub = self.hub
        start = StreamStart(head=[ws_text_frame(hub.connected_payload(self._now()))])
        if since is None:
            return start
        if epoch is not None and epoch != hub.epoch:
            start.head.append(gap_frame("epoch_changed", None, None))
            return start
        # Up to the last released seq: held batches reach this client live, once, after
        # the replay (it is in the sessions before they are released).
        upto = hub.released_seq
        if since < upto:
            start.replay = (since, upto)
        return start

    def replay_piece(self, after: int, upto: int, type_filter: TypeFilter) -> ReplayPiece:
        """From the ring; what left it comes from the journal, or is a ``replay_gap``."""
        piece = self.hub.replay_piece(
            after,
            upto,
            None if type_filter.matches_all else type_filter.matches,
            max_bytes=REPLAY_PIECE_BYTES,
            max_scan=REPLAY_PIECE_EVENTS,
        )
        if piece.gap is None:
            return ReplayPiece(piece.last, piece.frames)
        if self.journal is None:
            return ReplayPiece(piece.last, [gap_frame("evicted", *piece.gap)])
        return ReplayPiece(piece.last, backfill=piece.gap)

    def backfill(
        self, seqs: tuple[int, int], type_filter: TypeFilter
    ) -> AsyncGenerator[tuple[bytes, int], None]:
        """Read ``seqs`` from the journal off the event loop (:mod:`.replay`)."""
        assert self.journal is not None
        return journal_backfill(self.journal, seqs, type_filter)

    def client_message(self, session: ClientSession, message: ClientMessage) -> None:
        now = self._now()
        if isinstance(message, ConfirmationResponse):
            pending = next((p for p in self.hub.iter_pending() if p.id == message.id), None)
            try:
                effects = self.hub.answer(
                    message,
                    client=session.id,
                    user_agent=session.user_agent,
                    wall=time.time(),
                    now=now,
                )
            except ProtocolError:
                if self._held:  # perhaps lost to an answer still held: the error waits
                    self._hold_client(session)
                raise
            self._audit_answer(message, session.id, session.user_agent, pending)
            self._execute(effects)
            if self._held:
                self._hold_client(session)
        elif isinstance(message, PauseTimer):
            self.hub.pause(message.id, now)
        elif isinstance(message, ResumeTimer):
            self.hub.resume(message.id, now)
        else:  # pragma: no cover - the WebSocket side answers heartbeat and subscribe
            raise AssertionError(f"unexpected client message {message!r}")
        self._wakeup.set()

    def _audit_answer(
        self,
        message: ConfirmationResponse,
        client: str,
        user_agent: str | None,
        pending: Pending | None,
    ) -> None:
        prompt = pending.info.get("prompt") if pending else None
        audit_log.info(
            "confirmation %s answered %r (remember=%s) by client %s (%s) for prompt %r",
            message.id,
            message.response,
            message.remember,
            client,
            user_agent,
            prompt,
        )

    def desktop_answer(self, cid: str, response: str) -> bool:
        """A click on a desktop notification (§3.6): an answer like a client's."""
        message = ConfirmationResponse(id=cid, response=response, remember="none")
        pending = next((p for p in self.hub.iter_pending() if p.id == cid), None)
        try:
            effects = self.hub.answer(
                message, client=DESKTOP_CLIENT, user_agent=None, wall=time.time(), now=self._now()
            )
        except ProtocolError as exc:  # answered or expired meanwhile: first answer won
            log.info("desktop answer to confirmation %s not applied: %s", cid, exc)
            return False
        self._audit_answer(message, DESKTOP_CLIENT, None, pending)
        self._execute(effects)
        self._wakeup.set()
        return True

    def _remaining(self, cid: str) -> float | None:
        """Seconds left on a pending confirmation's countdown (None: not pending)."""
        pending = next((p for p in self.hub.iter_pending() if p.id == cid), None)
        return pending.remaining(self._now()) if pending is not None else None

    def _web_url(self) -> str:
        """The web UI's URL on the first bound address, with the token when one is set."""
        host, port = self.listening.addresses[0] if self.listening else ("127.0.0.1", 0)
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        token = self.access.token
        return url + ("?" + urlencode({"token": token}) if token is not None else "")

    def client_closed(self, session: ClientSession) -> None:
        """Nothing to clean up in the hub: answers are not tied to a client."""


class _Stop(Exception):
    """Raised inside the task group to cancel the background tasks on stop."""


def _loggable(value: Any) -> Any:
    """A source's string as it may appear in one log line: control characters escaped."""
    if isinstance(value, str) and not value.isprintable():
        return value.encode("unicode_escape").decode("ascii")
    return value


def _hub_limits(cfg: Config) -> HubLimits:
    return HubLimits(
        replay_buffer=cfg.events.replay_buffer,
        replay_buffer_bytes=cfg.events.replay_buffer_bytes,
        default_timeout_seconds=cfg.confirmations.default_timeout_seconds,
        max_pause_seconds=cfg.confirmations.max_pause_seconds,
        max_pending=cfg.confirmations.max_pending,
        max_pending_per_source=cfg.confirmations.max_pending_per_source,
    )


def _ingest_settings(cfg: Config) -> IngestSettings:
    return IngestSettings(
        max_line_bytes=cfg.sources.max_line_bytes,
        max_connections=cfg.sources.max_connections,
        allowed_uids=frozenset(cfg.sources.allowed_uids),
        allow_unknown_types=cfg.events.allow_unknown_types,
        max_timeout_seconds=cfg.confirmations.max_timeout_seconds,
        line_timeout_seconds=cfg.sources.line_timeout_seconds,
    )


async def serve(config: Config, *, config_path: str | None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code for the CLI."""
    configure_logging(config.logging.level, config.logging.format, target=config.logging.target)
    loop = type(asyncio.get_running_loop())
    log.info("event loop: %s.%s", loop.__module__.partition(".")[0], loop.__qualname__)
    raise_fd_limit()  # PROTOCOL §2.4: every client and pending handshake is a descriptor
    daemon = Daemon(config, config_path=config_path)
    try:
        await daemon.run(install_signals=True)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0
