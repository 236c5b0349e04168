"""/metrics in the Prometheus text format, read back with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from aaeventd.config import Config
from aaeventd.daemon.metrics import Metric, render_metrics
from aaeventd.daemon.peers import OwnerUnknown
from tests.support import (
    TIMEOUT,
    Source,
    http_get,
    make_config,
    pause,
    peer_closed,
    recv_json,
    run,
    running_daemon,
    samples,
    short_tmpdir,
    silent_connection,
    ws_connect,
)


def test_render_escapes_label_values_and_types() -> None:
    """Label values are escaped and every family has HELP and TYPE lines."""
    text = render_metrics(
        [
            Metric("x_total", "counter", "Things.", labelled={(("code", 'a"b\\c\n'),): 2}),
            Metric("g", "gauge", "A gauge.", value=1.5),
        ]
    )
    assert "# HELP aaeventd_x_total Things.\n# TYPE aaeventd_x_total counter\n" in text
    parsed = samples(text)
    assert parsed[("aaeventd_x_total", (("code", 'a"b\\c\n'),))] == 2
    assert parsed[("aaeventd_g", ())] == 1.5


def test_metrics_endpoint_counts_events_rejections_and_clients() -> None:
    """The daemon's /metrics parses and its counters follow what happened."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            async with running_daemon(make_config(tmp)) as d:
                ws = await ws_connect(d)
                await recv_json(ws)
                hello = {"type": "hello", "acks": True}
                async with await Source.connect(d.socket_path, hello=hello) as src:
                    for kind in ("skill_started", "persona_changed"):
                        await src.send({"type": kind, "skill_name": "s", "persona": "p"})
                        assert (await src.recv())["type"] == "ack"
                    await src.send_raw(b"nope\n")
                    assert (await src.recv())["code"] == "invalid_json"
                    status, text = await http_get(d.ws_port, "/metrics")
                await ws.close()
        assert status == 200
        parsed = samples(text)
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert families["aaeventd_events_in"] == "counter"
        assert families["aaeventd_clients"] == "gauge"
        assert parsed[("aaeventd_events_in_total", ())] == 2
        assert parsed[("aaeventd_events_out_total", (("type", "persona_changed"),))] == 1
        assert parsed[("aaeventd_events_rejected_total", (("code", "invalid_json"),))] == 1
        assert parsed[("aaeventd_clients", ())] == 1
        assert parsed[("aaeventd_sources", ())] == 1
        assert parsed[("aaeventd_journal_bytes_total", ())] > 0
        assert ("aaeventd_slow_client_disconnects_total", ()) in parsed
        assert ("aaeventd_dropped_replies_total", ()) in parsed

    run(body())


def test_metrics_count_closed_handshakes_failed_accepts_and_unknown_owners() -> None:
    """Handshakes closed (timed out, refused, evicted), pending handshakes, failed accepts
    and owner-unknown 503s show in /metrics as the daemon counts them."""

    async def first_closed(*socks: socket.socket) -> socket.socket:
        """The first of ``socks`` the daemon closes."""
        waits = {asyncio.create_task(peer_closed(s, TIMEOUT)): s for s in socks}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        first = done.pop()
        first.result()  # a timeout fails the test here
        return waits[first]

    def owner_unknown(peer: Any, server: Any) -> int:
        raise OwnerUnknown("out of descriptors (test)")

    async def body() -> tuple[dict[Any, float], dict[str, str], dict[str, int]]:
        with short_tmpdir() as tmp:

            def config(max_pending: int, timeout: float) -> Config:
                return make_config(
                    tmp,
                    websocket={
                        "max_pending_handshakes": max_pending,
                        "handshake_timeout_seconds": timeout,
                    },
                    journal={"enabled": False},
                )

            async with running_daemon(config(1, 0.3)) as d:
                guard, port = d.handshakes, d.ws_port
                with await silent_connection(port) as sock:
                    await peer_closed(sock, TIMEOUT)  # timed out
                d.apply_config(config(1, 30))
                oldest = await silent_connection(port)
                held = [oldest]
                try:
                    # Refused while the pending one is under a second old, then in its place.
                    while True:
                        newer = await silent_connection(port)
                        held.append(newer)
                        if await first_closed(oldest, newer) is oldest:
                            break
                        await pause(0.02)
                    d.apply_config(config(64, 30))  # room for the requests below
                    handler = asyncio.get_running_loop().get_exception_handler()
                    assert handler is not None
                    emfile = OSError(errno.EMFILE, "Too many open files")
                    for _ in range(2):
                        handler(
                            asyncio.get_running_loop(),
                            {
                                "message": "socket.accept() out of system resource",
                                "exception": emfile,
                            },
                        )
                    d.front.owners.uid = owner_unknown  # type: ignore[method-assign]
                    try:
                        status, _ = await http_get(port, "/healthz")
                    finally:
                        del d.front.owners.uid
                    assert status == 503
                    # Until that request's connection is gone: only ``newer`` is pending.
                    async with asyncio.timeout(TIMEOUT):
                        while len(guard.pending) != 1:
                            await pause(0.01)
                    status, text = await http_get(port, "/metrics")
                    assert status == 200
                    counted = {
                        "timed_out": guard.timed_out,
                        "refused": guard.refused,
                        "evicted": guard.evicted,
                    }
                finally:
                    for sock in held:
                        sock.close()
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        return samples(text), families, counted

    parsed, families, counted = run(body())
    for reason in ("timed_out", "refused", "evicted"):
        key = ("aaeventd_handshakes_closed_total", (("reason", reason),))
        assert parsed[key] == counted[reason] >= 1, (reason, parsed.get(key), counted)
    assert counted["timed_out"] == counted["evicted"] == 1, counted
    # The one that took the evicted one's place, and the scrape itself while it is answered.
    assert parsed[("aaeventd_pending_handshakes", ())] == 2
    assert parsed[("aaeventd_accept_exhausted_total", ())] == 2
    assert parsed[("aaeventd_owner_unknown_refusals_total", ())] == 1
    assert parsed[("aaeventd_http_refusals_total", (("status", "503"),))] == 1
    assert families["aaeventd_handshakes_closed"] == "counter"
    assert families["aaeventd_pending_handshakes"] == "gauge"
    assert families["aaeventd_accept_exhausted"] == "counter"
    assert families["aaeventd_owner_unknown_refusals"] == "counter"
