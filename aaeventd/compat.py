"""A drop-in for the skill engine's old in-process WebSocket server (its emitter API).

The engine switches to aaeventd by changing one import::

    from aaeventd.compat import get_websocket_server, start_websocket_server

    ws = get_websocket_server()
    await ws.skill_started(skill_id, "start_work", 5, inputs={"issue": "AAP-1"})
    answer = await ws.request_confirmation(skill_id, 2, "Create branch?", ["yes", "no"])
    # {"response": "yes", "remember": "none"}; on expiry {"response": "let_claude", ...}

Each method sends one event through :class:`aaeventd.client.AsyncEventSource` and never
raises into the caller: while the daemon is down events are buffered (and sent in
order when it is back), as the library does; a refused event is logged.  This module
imports only :mod:`aaeventd.client`.

:func:`get_websocket_server` returns a module-level singleton.  The house style allows
global singletons only in a compatibility module whose whole job is to mirror an old
API: this is that module, and the old API was a singleton.
"""

from __future__ import annotations

import logging
from typing import Any

from aaeventd.client import AsyncEventSource, SourceError

log = logging.getLogger(__name__)

#: The answer to a confirmation that nobody answered (the old server's fallback).
EXPIRED_ANSWER = {"response": "let_claude", "remember": "none"}
#: ``auto_heal_triggered``'s ``error_snippet`` is cut to this many characters.
SNIPPET_CHARS = 200


class CompatServer:
    """The old server's emitter methods, on top of an :class:`AsyncEventSource`."""

    def __init__(self, source: AsyncEventSource | None = None) -> None:
        self.source = source if source is not None else AsyncEventSource(name="skill-engine")
        self._started = False

    @property
    def is_running(self) -> bool:
        """Started and not stopped (the daemon may be down: events are then buffered)."""
        return self._started

    async def start(self) -> None:
        """Connect (a daemon that is not there yet is not an error)."""
        if not self._started:
            self._started = True
            try:
                await self.source.start()
            except (SourceError, OSError) as exc:
                log.warning("aaeventd unreachable (%s); events are buffered", exc)

    async def stop(self) -> None:
        """Deliver what is buffered (bounded by the source's timeout), then close."""
        if self._started:
            self._started = False
            await self.source.close()

    async def _emit(self, event_type: str, **fields: Any) -> None:
        if not self._started:
            await self.start()
        try:
            await self.source.emit(event_type, **fields)
        except (SourceError, OSError) as exc:
            log.warning("event %s not sent to aaeventd: %s", event_type, exc)

    # -- skills --------------------------------------------------------------------

    async def skill_started(
        self,
        skill_id: str,
        skill_name: str,
        total_steps: int,
        inputs: dict[str, Any] | None = None,
        source: str = "chat",
    ) -> None:
        await self._emit(
            "skill_started",
            skill_id=skill_id,
            skill_name=skill_name,
            total_steps=total_steps,
            inputs=inputs or {},
            source=source,
        )

    async def step_started(
        self, skill_id: str, step_index: int, step_name: str, description: str = ""
    ) -> None:
        await self._emit(
            "step_started",
            skill_id=skill_id,
            step_index=step_index,
            step_name=step_name,
            description=description,
        )

    async def step_completed(
        self, skill_id: str, step_index: int, step_name: str, duration_ms: float
    ) -> None:
        await self._emit(
            "step_completed",
            skill_id=skill_id,
            step_index=step_index,
            step_name=step_name,
            duration_ms=duration_ms,
        )

    async def step_failed(self, skill_id: str, step_index: int, step_name: str, error: Any) -> None:
        await self._emit(
            "step_failed",
            skill_id=skill_id,
            step_index=step_index,
            step_name=step_name,
            error=error,
        )

    async def skill_completed(self, skill_id: str, total_duration_ms: float | None = None) -> None:
        fields: dict[str, Any] = {"skill_id": skill_id}
        if total_duration_ms is not None:
            fields["total_duration_ms"] = total_duration_ms
        await self._emit("skill_completed", **fields)

    async def skill_failed(
        self, skill_id: str, error: Any, total_duration_ms: float | None = None
    ) -> None:
        fields: dict[str, Any] = {"skill_id": skill_id, "error": error}
        if total_duration_ms is not None:
            fields["total_duration_ms"] = total_duration_ms
        await self._emit("skill_failed", **fields)

    # -- heals -----------------------------------------------------------------------

    async def auto_heal_triggered(
        self,
        skill_id: str,
        step_index: int,
        error_type: str,
        fix_action: str,
        error_snippet: str = "",
    ) -> None:
        await self._emit(
            "auto_heal_triggered",
            skill_id=skill_id,
            step_index=step_index,
            error_type=error_type,
            fix_action=fix_action,
            error_snippet=error_snippet[:SNIPPET_CHARS],
        )

    async def auto_heal_completed(
        self, skill_id: str, step_index: int, fix_action: str, success: bool
    ) -> None:
        await self._emit(
            "auto_heal_completed",
            skill_id=skill_id,
            step_index=step_index,
            fix_action=fix_action,
            success=success,
        )

    # -- confirmations ---------------------------------------------------------------

    async def request_confirmation(
        self,
        skill_id: str,
        step_index: int,
        prompt: str,
        options: list[str],
        claude_suggestion: str = "",
        timeout_seconds: float = 30,
    ) -> dict[str, str]:
        """``{"response": R, "remember": M}``; :data:`EXPIRED_ANSWER` when none came.

        Unanswered means expired at the daemon, the daemon unreachable (then at once:
        a question is not buffered, it would be asked after the engine moved on), or
        no answer within ``timeout_seconds`` plus the source's timeout.
        """
        if not self._started:
            await self.start()
        if not self.source.connected:
            log.warning("aaeventd unreachable: confirmation %r not asked", prompt[:80])
            return dict(EXPIRED_ANSWER)
        try:
            answer = await self.source.ask(
                prompt,
                options,
                timeout_seconds,
                wait=timeout_seconds + self.source.timeout,
                skill_id=skill_id,
                step_index=step_index,
                claude_suggestion=claude_suggestion,
            )
        except (SourceError, OSError, TimeoutError) as exc:
            log.warning("confirmation not answered through aaeventd: %s", exc)
            return dict(EXPIRED_ANSWER)
        if answer.response is None:
            return dict(EXPIRED_ANSWER)
        return {"response": answer.response, "remember": answer.remember}

    # -- memory queries --------------------------------------------------------------

    async def memory_query_started(self, query_id: str, query: str, sources: list[str]) -> None:
        await self._emit("memory_query_started", query_id=query_id, query=query, sources=sources)

    async def memory_query_completed(
        self,
        query_id: str,
        intent: str,
        sources_queried: list[str],
        result_count: int,
        latency_ms: float,
    ) -> None:
        await self._emit(
            "memory_query_completed",
            query_id=query_id,
            intent=intent,
            sources_queried=sources_queried,
            result_count=result_count,
            latency_ms=latency_ms,
        )

    async def intent_classified(
        self,
        query_id: str,
        query: str,
        intent: str,
        confidence: float,
        sources_suggested: list[str],
    ) -> None:
        await self._emit(
            "intent_classified",
            query_id=query_id,
            query=query,
            intent=intent,
            confidence=confidence,
            sources_suggested=sources_suggested,
        )


_server: CompatServer | None = None


def get_websocket_server() -> CompatServer:
    """The one :class:`CompatServer` of this process (created on first use)."""
    global _server  # the old API's singleton (see the module docstring)
    if _server is None:
        _server = CompatServer()
    return _server


async def start_websocket_server() -> CompatServer:
    """Start the singleton (connect to aaeventd; down is not an error)."""
    server = get_websocket_server()
    await server.start()
    return server


async def stop_websocket_server() -> None:
    """Stop the singleton (deliver what is buffered, then close); a new one comes next."""
    global _server
    server, _server = _server, None
    if server is not None:
        await server.stop()
