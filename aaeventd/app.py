"""The composition root: builds the daemon from a :class:`~aaeventd.config.Config`.

Owns the start and stop order, the one ``asyncio.TaskGroup`` of background tasks
(confirmation deadlines, journal fsync, watchdog, status), signals (SIGTERM/SIGINT
stop, SIGHUP reload), and is the one place that executes the hub's effects: journal
first, then the single INFO log line, the fan-out to clients, and the replies to
sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from aaeventd.errors import ConfigError, StartupError
from aaeventd.handshakes import AcceptExhaustion, HandshakeGuard, HandshakeSettings, raise_fd_limit
from aaeventd.hub import Broadcast, Effect, Hub, HubLimits, Stamped, ToSource
from aaeventd.ingest import IngestServer, IngestSettings, SourceConnection
from aaeventd.journal import Journal, new_epoch
from aaeventd.logsetup import configure_logging, log_batch, redact, redact_set
from aaeventd.notify import Notifier, listen_fds
from aaeventd.protocol.codec import encode_json, ws_text_frame
from aaeventd.protocol.events import ClientMessage, ConfirmationResponse, PauseTimer, ResumeTimer
from aaeventd.protocol.filters import TypeFilter
from aaeventd.tokens import load_or_create_token
from aaeventd.views import DaemonViews
from aaeventd.web import AccessSettings, HttpFront
from aaeventd.wsserver import (
    REPLAY_PIECE_BYTES,
    REPLAY_PIECE_EVENTS,
    ClientSession,
    ReplayPiece,
    StreamSettings,
    StreamStart,
    WsServer,
)

log = logging.getLogger(__name__)
events_log = logging.getLogger("aaeventd.events")
audit_log = logging.getLogger("aaeventd.audit")

STATUS_MIN_INTERVAL = 1.0
JOURNAL_SYNC_INTERVAL = 1.0


@dataclass
class Counters:
    """What ``/metrics`` and ``STATUS=`` report beyond the components' own counters."""

    events_in: int = 0
    last_error: str | None = None
    started_wall: float = field(default_factory=time.time)


class Daemon:
    """One running aaeventd.  ``await run()`` until :meth:`request_stop`."""

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
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.counters = Counters()
        self.socket_path: Path | None = None
        self.journal: Journal | None = None
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._batch: list[Broadcast] = []
        self._redact = redact_set(config.logging.redact_fields)
        self._status_text = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.notifier = Notifier(self.env)
        self.hub = Hub(epoch="", limits=_hub_limits(config))
        self.ingest = IngestServer(_ingest_settings(config), self)
        self.access = AccessSettings()
        self._apply_access(config)
        self.front = HttpFront(self.access, DaemonViews(self))
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
        self._loop = loop = asyncio.get_running_loop()
        # Out of descriptors in accept(): one line a minute, not a traceback per try.
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(AcceptExhaustion(previous_handler))
        cfg = self.config
        self._open_journal()
        inherited = listen_fds(self.env)
        try:
            self.socket_path = resolve_socket_path(cfg, self.env)
            await self.ingest.start(path=self.socket_path, sock=inherited.pop("events", None))
            if self.ingest.path is not None:
                self.socket_path = self.ingest.path
            ws_sock = inherited.pop("websocket", None)
            try:
                await self.ws.start(
                    host=cfg.websocket.host,
                    port=cfg.websocket.port,
                    sock=ws_sock,
                    handshakes=self.handshakes,
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {cfg.websocket.host}:{cfg.websocket.port}: "
                    f"{exc.strerror or exc}"
                ) from exc
            self.access.set_port(self.ws.port)
            if cfg.websocket.port == 0 and not log.isEnabledFor(logging.INFO):
                # §7: with port 0 the real port is logged, whatever the level.
                log.warning("listening for clients on port %d (port 0 configured)", self.ws.port)
            for name, sock in inherited.items():
                log.warning("ignoring inherited socket %r (expected events, websocket)", name)
                sock.close()
            if install_signals:
                self._install_signals()
            log.info(
                "aaeventd %s ready: sources on %s, clients on ws://%s:%d/ (epoch %s, seq %d)",
                __version__,
                self.socket_path,
                cfg.websocket.host,
                self.ws.port,
                self.hub.epoch,
                self.hub.last_seq,
            )
            self._notify_ready()
            self.ready.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._deadlines())
                tasks.create_task(self._housekeeping())
                if self.notifier.watchdog_interval:
                    tasks.create_task(self._watchdog(self.notifier.watchdog_interval))
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            await self._shutdown()
            loop.set_exception_handler(previous_handler)

    def _open_journal(self) -> None:
        cfg = self.config.journal
        if not cfg.enabled:
            self.hub.epoch = new_epoch()
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
        self.hub = Hub(epoch=state.epoch, last_seq=state.last_seq, limits=self.hub.limits)
        log.info(
            "journal %s: epoch %s, resuming after seq %d", directory, state.epoch, state.last_seq
        )

    async def _shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        await self.ingest.stop_accepting()
        self._execute(self.hub.shutdown(time.time(), self._now()))
        # Both bounded (ws.close aborts clients that do not read their close frame);
        # together, so the stop takes the longer of the two, not the sum (§5: < 5 s).
        await asyncio.gather(self.ingest.close(), self.ws.close())
        self.handshakes.close()
        if self.journal is not None:
            self.journal.close()
        self.notifier.close()
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
                    fd = journal.dirty_fd()
                    if fd is not None:
                        # Off the event loop: a slow disk must not stall the clients.
                        await asyncio.to_thread(_fsync_and_close, fd)
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
        configure_logging(new.logging.level, new.logging.format)
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
                self._to_source(effect)
        self.flush()

    def _to_source(self, effect: ToSource) -> None:
        source = self.ingest.sources.get(effect.source)
        if source is None:
            return
        source.reply(effect.message)
        if source.half_closed and self.hub.pending_for(source.id) == 0:
            source.close()

    def flush(self) -> None:
        """Journal the batch, log it, hand it to the clients, then ack the sources."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        stamped = [b.stamped for b in batch]
        # The first seq of this batch that is not in the journal (§4.1), if any.
        unjournaled = self._journal_append(stamped) if self.journal is not None else None
        delivered = self.ws.fan_out(stamped)
        sources = self.ingest.sources
        log_info = events_log.isEnabledFor(logging.INFO)
        with log_batch():
            for item, count in zip(batch, delivered, strict=True):
                source = sources.get(item.source) if item.source is not None else None
                if log_info:
                    self._log_event(item.stamped, source, count)
                if item.ack_to is not None and source is not None:
                    ack: dict[str, Any] = {
                        "type": "ack",
                        "seq": item.stamped.seq,
                        "delivered": count,
                    }
                    if item.ack_extra:
                        ack.update(item.ack_extra)
                    if unjournaled is not None and item.stamped.seq >= unjournaled:
                        ack["journaled"] = False
                    source.reply(ack)
        self.counters.events_in += len(batch)

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

    def _log_event(self, stamped: Stamped, source: SourceConnection | None, delivered: int) -> None:
        event = stamped.event
        hidden = self._redact
        skill = event.get("skill_name", event.get("skill_id"))
        step = event.get("step_name")
        if skill is not None and ("skill_name" in hidden or "skill_id" in hidden):
            skill = "***"
        if step is not None and "step_name" in hidden:
            step = "***"
        skill, step = _loggable(skill), _loggable(step)
        events_log.info(
            "event seq=%d type=%s pid=%s skill=%s step=%s delivered=%d",
            stamped.seq,
            stamped.type,
            source.pid if source is not None else "-",
            skill if skill is not None else "-",
            step if step is not None else "-",
            delivered,
        )
        if events_log.isEnabledFor(logging.DEBUG):
            try:
                shown = json.dumps(redact(event, hidden), ensure_ascii=False)
            except RecursionError:
                shown = "<nested too deeply to show>"
            events_log.debug("event seq=%d payload=%s", stamped.seq, shown)

    # -- EventSink (ingest) ------------------------------------------------------

    def submit(self, source: SourceConnection, event: dict[str, Any], event_type: str) -> None:
        effects = self.hub.accept(
            event,
            event_type,
            source=source.id,
            wants_ack=source.wants_ack,
            wall=time.time(),
            now=self._now(),
        )
        self._batch.extend(e for e in effects if isinstance(e, Broadcast))
        if event_type == "confirmation_required":
            self._wakeup.set()

    def last_seq(self) -> int:
        return self.hub.last_seq

    def source_closed(self, source: SourceConnection) -> None:
        self._execute(self.hub.source_gone(source.id, time.time(), self._now()))

    def keep_open_after_eof(self, source: SourceConnection) -> bool:
        return self.hub.pending_for(source.id) > 0

    # -- ClientSink (wsserver) ---------------------------------------------------

    def open_stream(
        self, session: ClientSession, since: int | None, epoch: str | None
    ) -> StreamStart:
        hub = self.hub
        start = StreamStart(head=[ws_text_frame(hub.connected_payload(self._now()))])
        if since is None:
            return start
        if epoch is not None and epoch != hub.epoch:
            start.head.append(_control_frame(_gap("epoch_changed", None, None)))
            return start
        if since < hub.last_seq:
            start.replay = (since, hub.last_seq)
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
            return ReplayPiece(piece.last, [_control_frame(_gap("evicted", *piece.gap))])
        return ReplayPiece(piece.last, backfill=piece.gap)

    async def backfill(
        self, seqs: tuple[int, int], type_filter: TypeFilter
    ) -> AsyncGenerator[tuple[bytes, int], None]:
        """Read ``seqs`` from the journal off the event loop, in chunks of frames.

        Every seq of the range the journal lacks is announced where it falls by a
        ``replay_gap`` (§2.3): ``evicted`` before the oldest journal file,
        ``not_journaled`` after it (a write failed, §4.1) or where this run knows one did.
        """
        first, last = seqs
        journal = self.journal
        assert journal is not None
        holes = _Holes(first, journal.unjournaled_ranges(first, last), journal.oldest_seq)
        lines = journal.read_since(first - 1)
        while True:
            chunk = await asyncio.to_thread(_journal_chunk, lines, last, type_filter, holes)
            if chunk.frames:
                yield b"".join(chunk.frames), len(chunk.frames)
            if chunk.done:
                return

    def client_message(self, session: ClientSession, message: ClientMessage) -> None:
        now = self._now()
        if isinstance(message, ConfirmationResponse):
            pending = next((p for p in self.hub.iter_pending() if p.id == message.id), None)
            effects = self.hub.answer(
                message, client=session.id, user_agent=session.user_agent, wall=time.time(), now=now
            )
            prompt = pending.info.get("prompt") if pending else None
            audit_log.info(
                "confirmation %s answered %r (remember=%s) by client %s (%s) for prompt %r",
                message.id,
                message.response,
                message.remember,
                session.id,
                session.user_agent,
                prompt,
            )
            self._execute(effects)
        elif isinstance(message, PauseTimer):
            self.hub.pause(message.id, now)
        elif isinstance(message, ResumeTimer):
            self.hub.resume(message.id, now)
        else:  # pragma: no cover - the WebSocket side answers heartbeat and subscribe
            raise AssertionError(f"unexpected client message {message!r}")
        self._wakeup.set()

    def client_closed(self, session: ClientSession) -> None:
        """Nothing to clean up in the hub: answers are not tied to a client."""


@dataclass
class _Chunk:
    frames: list[bytes]
    first: int | None
    done: bool


BACKFILL_CHUNK = 2000


@dataclass
class _Holes:
    """A journal backfill's progress through its seq range, to announce what is missing.

    ``expected``: the next seq due; ``known``: this run's unjournaled ranges in the
    range; ``oldest``: the seq the oldest journal file starts at (what lies before it
    was evicted), asked only when there is a hole (it lists the directory).
    """

    expected: int
    known: list[tuple[int, int]]
    oldest: Callable[[], int | None]
    _floor: int | None = None
    _floor_read: bool = False

    def gaps(self, upto: int) -> list[bytes]:
        """``replay_gap`` frames for ``expected..upto``, none of which the journal holds."""
        start, self.expected = self.expected, upto + 1
        spans: list[tuple[str, int, int]] = []
        pos = start
        for a, b in self.known:
            if b < pos or a > upto:
                continue
            if a > pos:
                spans.extend(self._by_floor(pos, a - 1))
            spans.append(("not_journaled", max(a, pos), min(b, upto)))
            pos = min(b, upto) + 1
        if pos <= upto:
            spans.extend(self._by_floor(pos, upto))
        merged: list[tuple[str, int, int]] = []
        for reason, a, b in spans:
            if merged and merged[-1][0] == reason and merged[-1][2] + 1 == a:
                merged[-1] = (reason, merged[-1][1], b)
            else:
                merged.append((reason, a, b))
        return [_control_frame(_gap(reason, a, b)) for reason, a, b in merged]

    def _by_floor(self, a: int, b: int) -> list[tuple[str, int, int]]:
        if not self._floor_read:
            self._floor, self._floor_read = self.oldest(), True
        floor = self._floor if self._floor is not None else b + 1
        spans = []
        if a < floor:
            spans.append(("evicted", a, min(b, floor - 1)))
        if b >= floor:
            spans.append(("not_journaled", max(a, floor), b))
        return spans


def _journal_chunk(
    lines: Iterator[tuple[int, bytes]],
    last: int,
    type_filter: TypeFilter,
    holes: _Holes | None = None,
) -> _Chunk:
    """Up to BACKFILL_CHUNK journal lines with seq <= last, as frames (runs in a thread).

    A line is parsed only when the client filters by type; the seq comes from the
    journal's own cheap lookup.  A chunk stops at about REPLAY_PIECE_BYTES of frames:
    it is what a client that does not read holds (§2.3).  With ``holes``, the seqs the
    journal lacks come as ``replay_gap`` frames where they fall, and a line whose seq
    was already passed is never sent twice.
    """
    frames: list[bytes] = []
    size = 0
    first: int | None = None
    everything = type_filter.matches_all
    for _ in range(BACKFILL_CHUNK):
        item = next(lines, None)
        if item is None or item[0] > last:
            if holes is not None and holes.expected <= last:
                frames.extend(holes.gaps(last))
            return _Chunk(frames, first, True)
        seq, line = item
        if holes is not None:
            if seq < holes.expected:
                continue
            if seq > holes.expected:
                frames.extend(holes.gaps(seq - 1))
            holes.expected = seq + 1
        if first is None:
            first = seq
        if everything or type_filter.matches(str(json.loads(line).get("type"))):
            frames.append(ws_text_frame(bytes(line)))
            size += len(frames[-1])
            if size >= REPLAY_PIECE_BYTES:
                break
    return _Chunk(frames, first, False)


class _Stop(Exception):
    """Raised inside the task group to cancel the background tasks on stop."""


def _control_frame(message: dict[str, Any]) -> bytes:
    return ws_text_frame(encode_json(message))


def _gap(reason: str, first: int | None, last: int | None) -> dict[str, Any]:
    return {"type": "replay_gap", "reason": reason, "from": first, "to": last}


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    configure_logging(config.logging.level, config.logging.format)
    raise_fd_limit()  # PROTOCOL §2.4: every client and pending handshake is a descriptor
    daemon = Daemon(config, config_path=config_path)
    try:
        await daemon.run(install_signals=True)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0
