"""What each change to the per-event pipeline won (issue 14): old and new, in process.

One ~300-byte ``step_completed`` source line (:func:`loadgen.event_line`, the size the
users' scenarios send) through each step the issue changed, the way the daemon did it
before and does it now, with the package's own functions (nothing copied):

* ``parse``: :mod:`json` with the strict rules (``codec._decode_object_strict``, the
  reference and fallback) against ``codec.decode_object`` (pydantic-core's
  ``from_json`` first);
* ``validate``: the discriminated union's TypeAdapter of the models at
  ``extra="allow"`` (what the daemon had: built here from subclasses of the models
  with that one setting changed) against the model's own validator at
  ``extra="ignore"`` (``events._VALIDATORS[type]``); the union at ``extra="ignore"``
  (``events.EVENT_ADAPTER``) is shown apart, to split the two changes;
* ``encode``: ``ws_text_frame(encode_json(event))`` of the stamped event against
  ``codec.splice_stamps`` of the line;
* ``log``: ``logging.getLogger("aaeventd.events").info(EVENT_LINE, *args)`` per event
  against ``BatchingHandler.write_events`` (``logsetup.event_writer()``), both inside
  one ``log_batch()`` per LOG_BATCH events, into the handler ``configure_logging``
  sets up on a stream opened on ``/dev/null`` as the daemon opens stderr (64 KiB
  buffer, UTF-8, ``backslashreplace``).

Each figure is the fastest of ``repeat`` timings of ``number`` events (old and new
timed in turn within each repeat, so that a drift of the box hits both), in µs per
event.  Usage: ``.venv/bin/python benchmarks/pipeline.py [--quick] [--json]``;
``run_all.py`` runs it as a subprocess (key ``pipeline``), so that its logging set-up
stays out of the runner.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import timeit
from collections.abc import Callable
from functools import reduce
from operator import or_
from typing import Annotated, Any, TextIO, get_args

import loadgen
from pydantic import ConfigDict, Field, TypeAdapter
from report import pipeline_table
from scenarios import USERS_LINE

from aaeventd.daemon import logsetup
from aaeventd.protocol import codec, events

# Events per log batch: about what one turn of the loop brings with the users'
# four sources writing one line per send.
LOG_BATCH = 4
NUMBER, REPEAT = 5_000, 21
QUICK_NUMBER, QUICK_REPEAT = 1_000, 5
SEQ = 1_234_567
TIMESTAMP = "2026-02-04T10:30:00.123Z"


def sample_line() -> bytes:
    """The measured source line, as the daemon gets it from the framer (no ``\\n``)."""
    pad = loadgen._padding(USERS_LINE)
    return loadgen.event_line(12_345, time.monotonic_ns(), pad, source=1).rstrip(b"\n")


def allow_adapter() -> TypeAdapter[Any]:
    """The validator the daemon had: the discriminated union at ``extra="allow"``."""
    models = get_args(get_args(events.KnownEvent)[0])
    allowing = [
        type(model.__name__, (model,), {"model_config": ConfigDict(extra="allow")})
        for model in models
    ]
    union: Any = reduce(or_, allowing)
    return TypeAdapter(Annotated[union, Field(discriminator="type")])


def _null_stream() -> TextIO:
    # As configure_logging opens the daemon's stderr, on /dev/null.
    return open("/dev/null", "w", buffering=1 << 16, encoding="utf-8", errors="backslashreplace")


def candidates() -> dict[str, tuple[Callable[[], object], Callable[[], object], int]]:
    """Per step: (old, new, events per call)."""
    line = sample_line()
    obj = codec.decode_object(line)
    event_type = obj["type"]
    assert codec._decode_object_strict(line) == obj
    old_validator = allow_adapter()
    new_validator = events._VALIDATORS[event_type]
    assert old_validator.validate_python(obj).model_extra  # extras kept: the old cost
    stamped = {**obj, "seq": SEQ, "timestamp": TIMESTAMP}
    old_frame = codec.ws_text_frame(codec.encode_json(stamped))
    new_frame, _ = codec.splice_stamps(line, SEQ, TIMESTAMP)
    assert json.loads(old_frame[4:]) == json.loads(new_frame[4:]) == stamped

    logsetup.configure_logging("INFO", "text", stream=_null_stream())
    events_log = logging.getLogger(logsetup.EVENTS_LOGGER)
    write_events = logsetup.event_writer()
    assert write_events is not None, "the handler is not alone on the path"
    batch: list[logsetup.EventArgs] = [
        (SEQ + i, event_type, 4242, obj["skill_name"], obj["step_name"], 10)
        for i in range(LOG_BATCH)
    ]
    line_fmt = logsetup.EVENT_LINE

    def log_old() -> None:
        with logsetup.log_batch():
            for args in batch:
                events_log.info(line_fmt, *args)

    def log_new() -> None:
        with logsetup.log_batch():
            write_events(batch)

    return {
        "parse": (
            lambda: codec._decode_object_strict(line),
            lambda: codec.decode_object(line),
            1,
        ),
        "validate": (
            lambda: old_validator.validate_python(obj),
            lambda: new_validator.validate_python(obj),
            1,
        ),
        "validate-union": (
            lambda: events.EVENT_ADAPTER.validate_python(obj),
            lambda: new_validator.validate_python(obj),
            1,
        ),
        "encode": (
            lambda: codec.ws_text_frame(codec.encode_json(stamped)),
            lambda: codec.splice_stamps(line, SEQ, TIMESTAMP),
            1,
        ),
        "log": (log_old, log_new, LOG_BATCH),
    }


def measure(quick: bool = False) -> dict[str, Any]:
    """µs per event, old and new, for every step; and what was measured."""
    number, repeat = (QUICK_NUMBER, QUICK_REPEAT) if quick else (NUMBER, REPEAT)
    rows: dict[str, dict[str, float]] = {}
    for key, (old, new, per_call) in candidates().items():
        calls = max(1, number // per_call)
        timeit.timeit(old, number=calls // 10 + 1)  # warm-up: caches, lazy set-ups
        timeit.timeit(new, number=calls // 10 + 1)
        old_t, new_t = [], []
        for _ in range(repeat):
            old_t.append(timeit.timeit(old, number=calls))
            new_t.append(timeit.timeit(new, number=calls))
        scale = 1e6 / (calls * per_call)
        rows[key] = {"old_us": min(old_t) * scale, "new_us": min(new_t) * scale}
    return {
        "line_bytes": len(sample_line()) + 1,
        "number": number,
        "repeat": repeat,
        "log_batch": LOG_BATCH,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = measure(args.quick)
    if args.json:
        print(json.dumps(result))
        return 0
    print("\n".join(pipeline_table(result)))
    union = result["rows"]["validate-union"]
    print(f"validation, the union at extra=ignore (EVENT_ADAPTER): {union['old_us']:.2f} µs/event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
