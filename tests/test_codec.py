"""Tests for strict JSON decoding/encoding and WebSocket framing (aaeventd.protocol.codec)."""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import from_json
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from aaeventd.protocol.codec import (
    TYPE_NAME_RE,
    _decode_object_strict,
    check_type,
    decode_client_message,
    decode_object,
    encode_json,
    rfc3339_utc,
    splice_stamps,
    ws_text_frame,
)
from aaeventd.protocol.errors import ErrorCode, ProtocolError


def code_of(data: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_object(data)
    return info.value.code


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"x","v":NaN}',
        b'{"type":"x","v":Infinity}',
        b'{"type":"x","v":-Infinity}',
        b'{"type":"x","v":1e999}',
        b'{"type":"x","v":-1e999}',
        b'{"type":"x","v":' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b'{"type":"x","v":"\\ud800"}',
        b'{"type":"x","v":"\\uDFFF"}',
        b'{"type":"x","v":"a\\udc00b"}',
        b'{"type":"x","v":"\\ud83d"}',
        b'{"type":"x","v":"\\ud83d\\u0041"}',
        b'{"type":"x","\\ud800":1}',
        b'{"type":"x"',
        b'{"type":"x"} {}',
        b"{'type':'x'}",
        b'{"type":"x","v":"tab\there"}',
        b"\xef\xbb\xbf{}",
        b"",
    ],
)
def test_invalid_json(data: bytes) -> None:
    """Syntax errors, non-finite numbers, huge ints, deep nesting and lone surrogates."""
    assert code_of(data) is ErrorCode.INVALID_JSON


def test_invalid_json_messages() -> None:
    """Errors name the position, the constant, or the surrogate."""
    with pytest.raises(ProtocolError, match=r"char 11"):
        decode_object(b'{"type":"x"')
    with pytest.raises(ProtocolError, match="NaN"):
        decode_object(b'{"type":"x","v":NaN}')
    with pytest.raises(ProtocolError, match=r"^invalid_json: lone surrogate in string$"):
        decode_object(b'{"type":"x","v":"\\ud800"}')


def test_surrogate_pair_escape_is_accepted() -> None:
    """A proper \\uD83D\\uDE00 pair decodes to one character and stays valid."""
    obj = decode_object(b'{"type":"x","v":"\\ud83d\\ude00 \\uD83D\\uDE00"}')
    assert obj["v"] == "\U0001f600 \U0001f600"
    assert encode_json(obj).decode("utf-8") == '{"type":"x","v":"\U0001f600 \U0001f600"}'


def test_escaped_backslash_before_u_is_not_a_surrogate() -> None:
    """A literal backslash followed by "ud800" is ordinary text, not an escape."""
    obj = decode_object(b'{"type":"x","v":"\\\\ud800"}')
    assert obj["v"] == "\\ud800"


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b'{"type":"x","v":"\xff"}', 17),
        (b'{"type":"\xc0\x80"}', 9),  # overlong encoding of NUL
        (b'{"type":"\xe0\x80\xaf"}', 9),  # overlong encoding of "/"
        (b'{"type":"\xed\xa0\x80"}', 9),  # UTF-8-encoded surrogate
        (b'{"type":"x","v":"\xe2\x82"}', 17),  # truncated sequence
    ],
)
def test_invalid_utf8_names_byte_offset(data: bytes, offset: int) -> None:
    """Bytes that are not strict UTF-8 give invalid_utf8 with the byte offset."""
    with pytest.raises(ProtocolError) as info:
        decode_object(data)
    assert info.value.code is ErrorCode.INVALID_UTF8
    assert f"byte offset {offset}" in info.value.message


@pytest.mark.parametrize("data", [b"[]", b"1", b'"x"', b"null", b"true", b"  [1]  "])
def test_not_an_object(data: bytes) -> None:
    """Valid JSON that is not an object is not_an_object."""
    assert code_of(data) is ErrorCode.NOT_AN_OBJECT


@pytest.mark.parametrize("data", [b"{}", b'{"type":1}', b'{"type":null}', b'{"type":["a"]}'])
def test_missing_type(data: bytes) -> None:
    """An absent or non-string type is missing_type."""
    assert code_of(data) is ErrorCode.MISSING_TYPE


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":""}',
        b'{"type":"Bad"}',
        b'{"type":"a\\n"}',
        b'{"type":"1abc"}',
        b'{"type":"a b"}',
        b'{"type":"caf\\u00e9"}',
        b'{"type":"a' + b"b" * 64 + b'"}',
    ],
)
def test_invalid_type_name(data: bytes) -> None:
    """A type string that does not match the pattern as a whole is invalid_type_name."""
    assert code_of(data) is ErrorCode.INVALID_TYPE_NAME


def test_invalid_type_name_message_quotes_truncated_value() -> None:
    """The message quotes the offending type, cut to 80 characters."""
    with pytest.raises(ProtocolError) as info:
        check_type({"type": "X" * 500})
    assert "'" + "X" * 80 + "'..." in info.value.message
    assert "X" * 81 not in info.value.message


def test_type_name_pattern_bounds() -> None:
    """64 characters is the longest type; the allowed punctuation is accepted."""
    assert TYPE_NAME_RE.match("a" * 64)
    assert not TYPE_NAME_RE.match("a" * 65)
    assert check_type({"type": "a.b:c-d_e9"}) == "a.b:c-d_e9"
    assert TYPE_NAME_RE.match("abc\n") is None
    assert TYPE_NAME_RE.search("abc\n") is None


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"step_completed","skill_id":"s1","step_index":0,"x":[1,2.5,null,true]}',
        '{"type":"x","nested":{"a":{"b":[{}]}},"unicode":"caf\u00e9 \u2603"}',
        '{"type":"x","big":' + "9" * 4300 + "}",
        '{"type":"x","f":1.7976931348623157e308,"tiny":5e-324}',
    ],
)
def test_valid_round_trip(text: str) -> None:
    """Valid objects decode to dicts and encode back to the same compact JSON."""
    obj = decode_object(text.encode("utf-8"))
    assert obj == json.loads(text)
    assert encode_json(obj) == json.dumps(
        json.loads(text), ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def test_whitespace_around_object_is_fine() -> None:
    """JSON whitespace around the object is allowed."""
    assert decode_object(b' \t{"type":"x"} \r') == {"type": "x"}


def test_duplicate_keys_last_wins() -> None:
    """A duplicated key keeps its last value."""
    assert decode_object(b'{"type":"Bad","type":"ok"}') == {"type": "ok"}


def test_encode_json_is_compact_utf8_and_strict() -> None:
    """encode_json writes compact UTF-8 and refuses NaN and infinities."""
    assert encode_json({"a": [1, "\u00e9"], "b": None}) == '{"a":[1,"\u00e9"],"b":null}'.encode()
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="JSON"):
            encode_json({"v": bad})


def test_decode_client_message() -> None:
    """Client frames (str or bytes) decode to objects with the same strictness."""
    assert decode_client_message('{"type":"heartbeat"}') == {"type": "heartbeat"}
    assert decode_client_message(b'{"type":"heartbeat"}') == {"type": "heartbeat"}
    assert decode_client_message('{"no_type":1}') == {"no_type": 1}
    for bad in ("{", '{"a":NaN}', '{"a":1e999}', '{"a":"\\udfff"}', b"\xff"):
        with pytest.raises(ProtocolError) as info:
            decode_client_message(bad)
        assert info.value.code is ErrorCode.INVALID_JSON
    with pytest.raises(ProtocolError) as info:
        decode_client_message("[1]")
    assert info.value.code is ErrorCode.NOT_AN_OBJECT


def _parse_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser: Generator[None, None, Frame] = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as stop:
        frame: Frame = stop.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
def test_ws_text_frame_parses_back_with_websockets(size: int) -> None:
    """websockets' own parser reads our frame as one final text frame with our payload."""
    payload = bytes(i % 251 for i in range(size))
    encoded = ws_text_frame(payload)
    frame = _parse_frame(encoded)
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert bytes(frame.data) == payload
    assert encoded == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_ws_text_frame_header_sizes() -> None:
    """The header uses the 7-bit, 16-bit and 64-bit length forms at the RFC boundaries."""
    assert ws_text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert ws_text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert ws_text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1770201000.123, "2026-02-04T10:30:00.123Z"),
        (1770201000, "2026-02-04T10:30:00.000Z"),
        (1770201000.0004, "2026-02-04T10:30:00.000Z"),
        (1770201059.9996, "2026-02-04T10:31:00.000Z"),
    ],
)
def test_rfc3339_utc(epoch: float, expected: str) -> None:
    """Timestamps are UTC, millisecond precision (rounded), always three digits, Z."""
    assert rfc3339_utc(epoch) == expected


def test_rfc3339_utc_now_shape() -> None:
    """The current time formats as YYYY-MM-DDTHH:MM:SS.mmmZ."""
    value = rfc3339_utc(time.time())
    assert len(value) == 24
    assert value[10] == "T"
    assert value[19] == "."
    assert value.endswith("Z")


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
            lambda kids: (
                st.lists(kids, max_size=4)
                | st.dictionaries(st.sampled_from(["type", "a", "b"]), kids, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode("utf-8")),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["x", "step_started", "Bad", "", "a\n", "a" * 65])},
            optional={"v": st.text(max_size=10), "n": st.integers() | st.floats()},
        ).map(lambda v: json.dumps(v).encode("utf-8")),
        st.lists(
            st.sampled_from(["\\ud800", "\\udc00", "\\\\", "\\u0041", "a", "\\n"]),
            max_size=8,
        ).map(lambda parts: ('{"type":"x","v":"' + "".join(parts) + '"}').encode()),
    )
)
def test_decode_object_raises_only_protocol_error(data: bytes) -> None:
    """Arbitrary bytes either decode to an object with a valid type or raise ProtocolError."""
    try:
        obj = decode_object(data)
    except ProtocolError:
        return
    assert isinstance(obj, dict)
    assert TYPE_NAME_RE.match(obj["type"])
    encode_json(obj).decode("utf-8")  # broadcastable: strict JSON, valid UTF-8


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(
            ["\\ud83d", "\\ude00", "\\uD800", "\\uDFFF", "\\\\", "\\u0041", "u", "d800", "\\n"]
        ),
        max_size=10,
    )
)
def test_lone_surrogate_check_matches_python_parse(parts: list[str]) -> None:
    """A string is refused exactly when its parsed value holds an unpaired surrogate."""
    text = '{"type":"x","v":"' + "".join(parts) + '"}'
    expected_ok = _encodable(json.loads(text)["v"])
    if expected_ok:
        assert decode_object(text.encode())["v"] == json.loads(text)["v"]
    else:
        with pytest.raises(ProtocolError, match=r"^invalid_json: lone surrogate in string$"):
            decode_object(text.encode())


def test_nesting_past_max_depth_is_invalid_json() -> None:
    """Nesting deeper than MAX_DEPTH is refused; exactly MAX_DEPTH is fine."""
    from aaeventd.protocol.codec import MAX_DEPTH

    def nested(depth: int) -> bytes:
        inner = "[" * (depth - 1) + "]" * (depth - 1)
        return ('{"type":"x","v":' + inner + "}").encode()

    assert decode_object(nested(MAX_DEPTH))["type"] == "x"
    with pytest.raises(ProtocolError) as info:
        decode_object(nested(MAX_DEPTH + 1))
    assert info.value.code is ErrorCode.INVALID_JSON
    assert str(MAX_DEPTH) in info.value.message


# -- the fast path: pydantic-core's parser, then the strict rules -------------------------

_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.text(max_size=12),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=25,
)
# Spellings json.dumps never writes, that strict JSON allows or refuses.
_ODD_TOKENS = [
    "1e400",
    "-1e400",
    "1E+308",
    "9" * 320 + ".0",
    "1" * 4300,
    "1" * 4301,
    "-0",
    "0.0e0",
    "01",
    "1.",
    ".5",
    "NaN",
    "-Infinity",
    '"\\ud800"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    '"\t"',
    "[" * 250 + "]" * 250,
    "true",
    "nul",
    '"\\/"',
    "1e-400",
]


def _strict(data: bytes) -> dict[str, Any] | ProtocolError:
    try:
        return _decode_object_strict(data)
    except ProtocolError as exc:
        return exc


def _fast(data: bytes) -> dict[str, Any] | ProtocolError:
    try:
        return decode_object(data)
    except ProtocolError as exc:
        return exc


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types and key order all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=5),
    odd=st.lists(st.sampled_from(_ODD_TOKENS), max_size=2),
    pad=st.sampled_from(["", " ", "\t", "\r", " \r"]),
    dup=st.booleans(),
)
def test_fast_decode_agrees_with_the_strict_reference(
    body: dict[str, Any], odd: list[str], pad: str, dup: bool
) -> None:
    """decode_object (pydantic-core first) and the json-only reference accept the same
    lines and give equal objects (types, key order), or refuse them with the same error."""
    text = json.dumps({"type": "x", **body}, ensure_ascii=bool(dup))
    inner = text[1:-1]
    extra = "".join(f',"odd{i}":{tok}' for i, tok in enumerate(odd))
    dupe = ',"type":"y"' if dup else ""
    data = (pad + "{" + inner + extra + dupe + "}" + pad).encode("utf-8", "surrogatepass")
    fast, strict = _fast(data), _strict(data)
    if isinstance(strict, ProtocolError):
        assert isinstance(fast, ProtocolError), (data[:200], fast)
        assert (fast.code, fast.message) == (strict.code, strict.message)
    else:
        assert _same(fast, strict), (data[:200], fast, strict)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"type":"x","v":1e400}', ErrorCode.INVALID_JSON),  # the parser gives inf
        (b'{"type":"x","v":[{"w":-1e400}]}', ErrorCode.INVALID_JSON),
        (b'{"type":"x","v":' + b"9" * 320 + b".0}", ErrorCode.INVALID_JSON),
        (b'{"type":"x","v":NaN}', ErrorCode.INVALID_JSON),
        (b'{"type":"x","v":"\\udfff"}', ErrorCode.INVALID_JSON),
        (b'{"type":"x","v":"\xed\xa0\x80"}', ErrorCode.INVALID_UTF8),
        (b'["type"]', ErrorCode.NOT_AN_OBJECT),
        (b'{"type":"Bad"}', ErrorCode.INVALID_TYPE_NAME),
    ],
)
def test_fast_decode_refuses_what_strict_json_refuses(data: bytes, code: ErrorCode) -> None:
    assert code_of(data) is code


def test_nesting_the_fast_parser_refuses_is_still_accepted() -> None:
    """Depth 300 (past pydantic-core's 200, within MAX_DEPTH) decodes via the strict path."""
    data = b'{"type":"x","v":' + b"[" * 299 + b"]" * 299 + b"}"
    with pytest.raises(ValueError, match="recursion"):
        from_json(data)
    assert decode_object(data)["type"] == "x"


# -- splicing the stamps into the source's line ------------------------------------------


@pytest.mark.parametrize("pad", [b"", b" \t", b"\r"])
@pytest.mark.parametrize("timestamp", [None, "2026-02-04T10:30:00.123Z"])
@pytest.mark.parametrize("size", [10, 100, 124, 125, 126, 200, 65_530, 65_535, 65_536, 70_000])
def test_splice_stamps_is_the_line_plus_the_fields(
    size: int, timestamp: str | None, pad: bytes
) -> None:
    """The frame parses back (websockets) to the source's object, fields in the same
    order and spelling, with seq (and timestamp) appended, at every header size."""
    head = b'{"type":"x", "n" : 1.50, "s":"\\u00e9\xc3\xa9","v":"'
    filler = max(0, size - len(head) - 2 - len(b',"seq":12345') - (38 if timestamp else 0))
    line = pad + head + b"y" * filler + b'"}' + pad
    frame, offset = splice_stamps(line, 12345, timestamp)
    parsed = _parse_frame(frame)
    assert parsed.opcode is Opcode.TEXT
    assert parsed.fin
    payload = bytes(parsed.data)
    assert frame[offset:] == payload
    assert payload.startswith(line.strip()[:-1]), "the source's bytes, as they were"
    expected = json.loads(line) | {"seq": 12345}
    if timestamp is not None:
        expected["timestamp"] = timestamp
    got = json.loads(payload)
    assert got == expected, got
    assert list(got) == list(expected), got
    assert payload.endswith(
        b',"seq":12345' + (b',"timestamp":"' + timestamp.encode() + b'"}' if timestamp else b"}")
    )
