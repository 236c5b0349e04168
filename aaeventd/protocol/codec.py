"""Strict JSON in, compact JSON out, and ready-made WebSocket text frames.

Owns the byte/text level of both wire directions (PROTOCOL.md §1 and §2): strict UTF-8
and strict JSON decoding of one line or one client frame, the ``type`` name check,
compact UTF-8 encoding of what the daemon sends, the RFC 3339 timestamp format, and
unmasked server-to-client WebSocket text frames (identical for every client, so one
event is encoded and framed once however many clients receive it).

It validates no event fields (that is :mod:`aaeventd.protocol.events`) and imports no
I/O library.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from typing import Any

from pydantic_core import from_json

from aaeventd.protocol.errors import ErrorCode, ProtocolError

__all__ = [
    "TYPE_NAME_RE",
    "check_type",
    "decode_client_message",
    "decode_object",
    "encode_json",
    "rfc3339_utc",
    "splice_stamps",
    "ws_text_frame",
]

TYPE_NAME_RE: re.Pattern[str] = re.compile(r"\A[a-z][a-z0-9_.:-]{0,63}\Z")
"""A valid event ``type``: anchored with ``\\A``/``\\Z``, so no trailing newline slips by."""

# The deepest nesting accepted: deeper, and encoding the event again (journal, log)
# could exceed Python's recursion limit.
MAX_DEPTH = 800

# How much of an offending value an error message quotes.
_QUOTE_MAX = 80


class _Rejected(ValueError):
    """Raised from inside the JSON scanner for a value strict JSON refuses."""


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Rejected(f"number out of range: {_quote(text)}")
    return value


# Built once: json.loads() with keyword arguments would build a decoder per call.
_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

# A \uD800-\uDFFF escape somewhere in the raw text: the cheap pre-filter.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Once the text is known to be valid JSON every backslash starts an escape, so scanning
# escapes left to right is exact; a pair is consumed whole, a lone half is caught.
_ESCAPE = re.compile(
    r"\\(?:"
    r"u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # surrogate pair: fine
    r"|(?P<lone>u[dD][89a-fA-F][0-9a-fA-F]{2})"  # lone high or low half
    r"|u[0-9a-fA-F]{4}"
    r"|[^u]"
    r")"
)

_HEADER_7 = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81  # FIN bit + opcode 0x1 (text)


def _quote(value: str) -> str:
    """``repr`` of ``value`` cut to ``_QUOTE_MAX`` characters (safe to put in a reply)."""
    if len(value) > _QUOTE_MAX:
        return repr(value[:_QUOTE_MAX]) + "..."
    return repr(value)


def _loads(text: str) -> Any:
    """Parse strict JSON text; raise ``invalid_json`` for anything strict JSON refuses."""
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, str(exc)) from None
    except _Rejected as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, str(exc)) from None
    except ValueError as exc:
        # int() past sys.get_int_max_str_digits() (4300 digits by default).
        raise ProtocolError(ErrorCode.INVALID_JSON, f"number too long: {exc}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "JSON nested too deeply") from None
    # Deep nesting that parsed could still overflow the stack when the event is encoded
    # again further down: refuse it here.  Counting brackets is a cheap upper bound.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"JSON nested deeper than {MAX_DEPTH} levels")
    # Lone surrogates would make the broadcast invalid UTF-8; they can only come from
    # \uD8xx-\uDFxx escapes (the UTF-8 decoder refuses encoded ones).
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
        for match in _ESCAPE.finditer(text):
            if match.group("lone") is not None:
                raise ProtocolError(ErrorCode.INVALID_JSON, "lone surrogate in string")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_type(obj: dict[str, Any]) -> str:
    """Return the event's ``type`` after checking it is a well-formed type name.

    Raises:
        ProtocolError: ``missing_type`` (absent or not a string) or
            ``invalid_type_name`` (does not match :data:`TYPE_NAME_RE`).
    """
    event_type = obj.get("type")
    if type(event_type) is not str:
        if event_type is None and "type" not in obj:
            raise ProtocolError(ErrorCode.MISSING_TYPE, "missing 'type'")
        raise ProtocolError(
            ErrorCode.MISSING_TYPE, f"'type' must be a string, not {_json_kind(event_type)}"
        )
    if TYPE_NAME_RE.match(event_type) is None:
        raise ProtocolError(
            ErrorCode.INVALID_TYPE_NAME,
            f"invalid type name {_quote(event_type)}: must match {TYPE_NAME_RE.pattern}",
        )
    return event_type


def _finite(obj: dict[str, Any]) -> bool:
    """No float in ``obj`` (at any depth) is an infinity (``1e400`` parses as one)."""
    stack: list[Any] = [obj]
    while stack:
        container = stack.pop()
        for value in container.values() if type(container) is dict else container:
            kind = type(value)
            if kind is float:
                if value - value != 0.0:  # inf - inf is nan (NaN itself never parses)
                    return False
            elif kind is dict or kind is list:
                stack.append(value)
    return True


def decode_object(data: bytes) -> dict[str, Any]:
    """Decode one source line into an event object with a well-formed ``type``.

    Parsed in one pass from the bytes by pydantic-core's JSON parser (jiter; about
    four times faster than :mod:`json` here), which refuses everything the strict
    rules below refuse but infinities (checked after) and accepts nothing else they
    refuse: NaN, lone surrogates, bad UTF-8, a BOM and integers past 4,300 digits are
    errors there too, and it stops at a nesting depth of 200.  Whatever it refuses
    goes through :mod:`json` with the strict rules, which accepts it (deep nesting up
    to :data:`MAX_DEPTH`) or says precisely what is wrong.  tests/test_codec.py checks
    on generated input that both paths agree on what they both accept.

    Args:
        data: the line's content (as :class:`~aaeventd.protocol.framer.Line` gives it).

    Returns:
        The parsed object (a fresh dict; nothing else holds it).

    Raises:
        ProtocolError: ``invalid_utf8``, ``invalid_json``, ``not_an_object``,
            ``missing_type`` or ``invalid_type_name``.
    """
    try:
        fast = from_json(data, allow_inf_nan=False)
    except ValueError:
        pass  # the strict path decides, and explains
    else:
        if type(fast) is dict and _finite(fast):
            check_type(fast)
            return fast
    return _decode_object_strict(data)


def _decode_object_strict(data: bytes) -> dict[str, Any]:
    """:func:`decode_object` with :mod:`json` alone: the reference, and the error messages."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_UTF8, f"invalid UTF-8 at byte offset {exc.start}: {exc.reason}"
        ) from None
    obj = _loads(text)
    if type(obj) is not dict:
        raise ProtocolError(
            ErrorCode.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(obj)}"
        )
    check_type(obj)
    return obj


def decode_client_message(text: str | bytes) -> dict[str, Any]:
    """Decode one WebSocket message from a client into an object (``type`` unchecked).

    Args:
        text: a text frame's ``str`` (or a binary frame's ``bytes``, read as UTF-8).

    Raises:
        ProtocolError: ``invalid_json`` (also for bytes that are not UTF-8: the client
            side has no ``invalid_utf8`` code) or ``not_an_object``.
    """
    if not isinstance(text, str):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_JSON, f"invalid UTF-8 at byte offset {exc.start}: {exc.reason}"
            ) from None
    obj = _loads(text)
    if type(obj) is not dict:
        raise ProtocolError(
            ErrorCode.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(obj)}"
        )
    return obj


def encode_json(obj: Any) -> bytes:
    """Encode ``obj`` as compact, strict JSON in UTF-8 (non-ASCII kept as is).

    Raises:
        ValueError: ``obj`` holds NaN or an infinity (our bug: we only send strict JSON).
        TypeError: ``obj`` holds something JSON cannot represent.
    """
    return _ENCODER.encode(obj).encode("utf-8")


_JSON_SPACE = b" \t\r\n"


def splice_stamps(line: bytes, seq: int, timestamp: str | None) -> tuple[bytes, int]:
    """The WebSocket text frame of a source's line with ``seq`` (and ``timestamp``) added.

    ``line`` is the JSON object exactly as the source sent it, which had no ``seq``
    key: the fields are appended before its closing brace, so nothing is encoded
    again, and every field keeps its place and its spelling (PROTOCOL §1.1: nothing
    else is changed or reordered).  Returns the frame and the offset of its payload.
    """
    body = line.strip(_JSON_SPACE)
    tail = b',"seq":%d' % seq
    if timestamp is not None:
        tail += b',"timestamp":"' + timestamp.encode("ascii") + b'"}'
    else:
        tail += b"}"
    header = _text_header(len(body) - 1 + len(tail))
    return b"".join((header, memoryview(body)[:-1], tail)), len(header)


def ws_text_frame(payload: bytes) -> bytes:
    """Return one complete, unmasked, final WebSocket text frame carrying ``payload``.

    Server-to-client frames are never masked (RFC 6455 §5.1), so the result can be
    written as is to every client that should get this payload.
    """
    return _text_header(len(payload)) + payload


def _text_header(length: int) -> bytes:
    """The header of a final, unmasked text frame of ``length`` payload bytes."""
    if length < 126:
        return _HEADER_7.pack(_FIN_TEXT, length)
    if length < 0x10000:
        return _HEADER_16.pack(_FIN_TEXT, 126, length)
    return _HEADER_64.pack(_FIN_TEXT, 127, length)


def rfc3339_utc(epoch_seconds: float) -> str:
    """Format a Unix time as RFC 3339 UTC with milliseconds: ``2026-02-04T10:30:00.123Z``.

    The time is rounded to the nearest millisecond.  The date-and-seconds part is
    cached for the current second: events mostly come many to a second.
    """
    seconds, millis = divmod(round(epoch_seconds * 1000), 1000)
    cached_second, prefix = _SecondCache.last
    if seconds != cached_second:
        t = time.gmtime(seconds)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
        )
        # One tuple, swapped whole: a reader in another thread sees a matching pair.
        _SecondCache.last = (seconds, prefix)
    return f"{prefix}{millis:03d}Z"


class _SecondCache:
    """The (second, ``"YYYY-MM-DDTHH:MM:SS."``) of the last :func:`rfc3339_utc` call."""

    last: tuple[int | None, str] = (None, "")


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's kind, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
