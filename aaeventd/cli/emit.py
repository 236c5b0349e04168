"""``aaeventd emit``: send events to the daemon as a source, from the command line.

One event from ``TYPE KEY=VALUE...`` or ``--json OBJ``, or NDJSON on stdin with
``-`` (streamed: each line is sent as it arrives); each is sent with
:class:`aaeventd.client.EventSource` (no reconnect: an absent daemon is reported, not
buffered) and its ack or rejection is printed at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aaeventd.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, err, load
from aaeventd.config import resolve_socket_path


def _parse_fields(items: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            fields[key] = _strict_json(raw)
        except ValueError:
            fields[key] = raw
    return fields


def _strict_json(raw: str) -> Any:
    """``json.loads`` without Python's extensions: ``NaN``, ``Infinity`` and numbers
    that overflow a double raise, so such values stay strings (the daemon would
    refuse them as ``invalid_json``)."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not strict JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} overflows a double")
        return value

    return json.loads(raw, parse_constant=no_constant, parse_float=finite)


def _stdin_lines() -> Iterator[tuple[str, bytes]]:
    """Each non-blank stdin line as it arrives (a producer's pipe is never read ahead)."""
    stdin = sys.stdin.buffer
    number = 0
    while raw := stdin.readline():
        number += 1
        line = raw.rstrip(b"\r\n")
        if line.strip():
            yield f"stdin line {number}: ", line


def cmd_emit(args: argparse.Namespace) -> int:
    from aaeventd.client import EventRejected, EventSource, SourceError

    # (label for error messages, the JSON line); the label names the stdin line.
    lines: Iterable[tuple[str, bytes]]
    if args.type == "-":
        if args.fields or args.json_obj is not None:
            err("'-' reads every event from stdin; give no KEY=VALUE or --json with it")
            return EXIT_USAGE
        lines = _stdin_lines()
    elif args.json_obj is not None:
        if args.type is not None:
            err("give either TYPE KEY=VALUE... or --json OBJ, not both")
            return EXIT_USAGE
        # One event, one line: a pretty-printed object is sent on one line (JSON
        # whitespace), so the daemon's single reply is its reply.
        text = args.json_obj.replace("\r", " ").replace("\n", " ")
        lines = [("", text.encode())]
    elif args.type is not None:
        try:
            event = {"type": args.type, **_parse_fields(args.fields)}
        except ValueError as exc:
            err(str(exc))
            return EXIT_USAGE
        lines = [("", json.dumps(event, ensure_ascii=False).encode())]
    else:
        err("emit needs TYPE [KEY=VALUE...], --json OBJ, or - (NDJSON on stdin)")
        return EXIT_USAGE
    if args.socket:
        socket_path = Path(args.socket)
    else:
        config, _ = load(args)
        socket_path = resolve_socket_path(config, connecting=True)
    status = EXIT_OK
    try:
        # No reconnect: a one-shot command reports an absent daemon instead of buffering.
        with EventSource(socket_path, name="aaeventd-emit", reconnect=False) as source:
            for label, line in lines:
                try:
                    ack = source.send_line(line)
                except EventRejected as exc:
                    status = EXIT_FAILURE
                    err(f"{label}rejected ({exc.code}): {exc.message}")
                    for detail in (exc.details or [])[1:]:
                        loc = ".".join(str(p) for p in detail.get("loc", []))
                        print(f"  {loc}: {detail.get('msg')}", file=sys.stderr)
                    continue
                assert ack is not None  # reconnect=False never buffers
                if not args.quiet:
                    extra = f" id={ack.id}" if ack.id else ""
                    # Flushed: a pipe reader sees each ack as it comes, not at exit.
                    print(f"accepted seq={ack.seq} delivered={ack.delivered}{extra}", flush=True)
    except SourceError as exc:
        err(str(exc))
        return EXIT_FAILURE
    return status
