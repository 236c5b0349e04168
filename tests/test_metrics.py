"""/metrics in the Prometheus text format, read back with prometheus_client's parser."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from aaeventd.metrics import Metric, render_metrics
from tests.support import (
    Source,
    make_config,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
    ws_connect,
)


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


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
