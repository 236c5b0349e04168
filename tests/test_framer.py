"""Tests for the sans-I/O NDJSON line framer (aaeventd.protocol.framer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aaeventd.protocol.framer import Line, LineFramer, TooLong

Item = Line | TooLong


def feed_all(framer: LineFramer, chunks: list[bytes], *, eof: bool = True) -> list[Item]:
    out: list[Item] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    if eof:
        out.extend(framer.eof())
    return out


def reference(stream: bytes, limit: int) -> list[Item]:
    """The framing rules written the obvious way: split on newlines, then classify."""
    pieces = stream.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()  # the stream ended with "\n": no unterminated line
    out: list[Item] = []
    for number, raw in enumerate(pieces, start=1):
        content = raw[:-1] if raw.endswith(b"\r") else raw
        if len(content) > limit:
            out.append(TooLong(number, limit))
        elif content.strip(b" \t\r"):
            out.append(Line(number, content))
    return out


def test_complete_lines_are_returned_with_numbers() -> None:
    """Each newline-terminated line comes out with its 1-based number."""
    framer = LineFramer(100)
    assert framer.feed(b'{"a":1}\n{"b":2}\n') == [Line(1, b'{"a":1}'), Line(2, b'{"b":2}')]
    assert framer.feed(b'{"c":3}\n') == [Line(3, b'{"c":3}')]


def test_partial_line_is_held_until_its_newline() -> None:
    """A line split over several feeds is returned once, whole, at its newline."""
    framer = LineFramer(100)
    assert framer.feed(b'{"ty') == []
    assert framer.buffered == 4
    assert framer.feed(b'pe":') == []
    assert framer.feed(b'"x"}\nnext') == [Line(1, b'{"type":"x"}')]
    assert framer.buffered == 4


def test_crlf_strips_one_carriage_return() -> None:
    """A "\\r\\n" terminator loses its "\\r"; only one "\\r" is stripped."""
    framer = LineFramer(100)
    assert framer.feed(b"abc\r\nx\r\r\n") == [Line(1, b"abc"), Line(2, b"x\r")]


def test_crlf_split_between_feeds() -> None:
    """A "\\r" at the end of one feed and "\\n" at the start of the next is one terminator."""
    framer = LineFramer(100)
    assert framer.feed(b"abc\r") == []
    assert framer.feed(b"\n") == [Line(1, b"abc")]


def test_blank_lines_are_counted_but_not_returned() -> None:
    """Empty and whitespace-only lines are skipped yet still advance the numbering."""
    framer = LineFramer(100)
    out = framer.feed(b"\n  \t \r\n\r\nx\n \n y \n")
    assert out == [Line(4, b"x"), Line(6, b" y ")]
    assert framer.lines_seen == 6


def test_other_control_bytes_are_not_blank() -> None:
    """Only space, tab and CR make a line blank: a form feed line is returned."""
    framer = LineFramer(100)
    assert framer.feed(b"\x0c\n") == [Line(1, b"\x0c")]


def test_line_at_exactly_the_limit_is_accepted() -> None:
    """Content of exactly max_line_bytes is fine, with or without a CR terminator."""
    framer = LineFramer(8)
    assert framer.feed(b"12345678\n12345678\r\n") == [Line(1, b"12345678"), Line(2, b"12345678")]
    assert framer.feed(b"123456789\n") == [TooLong(3, 8)]


def test_too_long_is_emitted_once_and_the_next_line_is_fine() -> None:
    """An over-long line gives one TooLong with its number; framing then resumes."""
    framer = LineFramer(10)
    out = framer.feed(b"ok\n" + b"x" * 25)
    assert out == [Line(1, b"ok"), TooLong(2, 10)]
    assert framer.buffered == 0
    assert framer.feed(b"y" * 1000) == []
    assert framer.feed(b"zzz\nafter\n") == [Line(3, b"after")]


def test_too_long_detected_only_at_newline_when_within_limit_plus_one() -> None:
    """A partial line of limit + 1 bytes may still end in "\\r\\n", so it is held."""
    framer = LineFramer(4)
    assert framer.feed(b"abcde") == []
    assert framer.buffered == 5
    assert framer.feed(b"\n") == [TooLong(1, 4)]
    assert framer.feed(b"abcd") == []
    assert framer.feed(b"\r\n") == [Line(2, b"abcd")]


def test_too_long_blank_line_is_reported() -> None:
    """The length check comes first: an over-long run of spaces is still TooLong."""
    framer = LineFramer(4)
    assert framer.feed(b" " * 10 + b"\nx\n") == [TooLong(1, 4), Line(2, b"x")]


def _huge_line_chunks(total: int, chunk: int) -> Iterator[bytes]:
    block = b"a" * chunk
    sent = 0
    while sent < total:
        yield block
        sent += chunk


def test_buffer_stays_bounded_for_a_100_mb_line() -> None:
    """Feeding a 100 MB line in 64 KiB chunks never holds more than limit + 1 bytes."""
    limit = 1024 * 1024
    framer = LineFramer(limit)
    out: list[Item] = []
    for chunk in _huge_line_chunks(100 * 1024 * 1024, 64 * 1024):
        out.extend(framer.feed(chunk))
        assert framer.buffered <= limit + 1
    out.extend(framer.feed(b"\n{}\n"))
    assert out == [TooLong(1, limit), Line(2, b"{}")]


def test_eof_returns_unterminated_line() -> None:
    """At EOF an unterminated non-blank line is returned (one trailing CR stripped)."""
    framer = LineFramer(100)
    assert framer.feed(b"a\nlast\r") == [Line(1, b"a")]
    assert framer.eof() == [Line(2, b"last")]
    assert framer.eof() == []


def test_eof_ignores_blank_or_empty_tail() -> None:
    """EOF after a newline, or after only whitespace, returns nothing."""
    framer = LineFramer(100)
    assert framer.feed(b"a\n") == [Line(1, b"a")]
    assert framer.eof() == []
    framer.feed(b"   ")
    assert framer.eof() == []


def test_eof_on_an_overlong_tail() -> None:
    """An over-long unterminated line is reported once, whether before or at EOF."""
    framer = LineFramer(4)
    assert framer.feed(b"abcdefgh") == [TooLong(1, 4)]
    assert framer.eof() == []
    framer = LineFramer(4)
    assert framer.feed(b"abcde") == []
    assert framer.eof() == [TooLong(1, 4)]


def test_limit_change_applies_to_the_next_line() -> None:
    """A new max_line_bytes is used from the next line; the current line keeps its own."""
    framer = LineFramer(4)
    assert framer.feed(b"abc") == []
    framer.max_line_bytes = 100
    # The pending line still has the old limit.
    assert framer.feed(b"defg\n") == [TooLong(1, 4)]
    assert framer.feed(b"abcdefgh\n") == [Line(2, b"abcdefgh")]
    framer.max_line_bytes = 2
    assert framer.feed(b"abc\nab\n") == [TooLong(3, 2), Line(4, b"ab")]


def test_limit_change_between_lines_takes_effect_at_once() -> None:
    """With nothing pending, a changed limit applies to the very next byte."""
    framer = LineFramer(100)
    framer.max_line_bytes = 3
    assert framer.feed(b"abcdef") == [TooLong(1, 3)]
    assert framer.max_line_bytes == 3


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_invalid_limit_is_refused(bad: object) -> None:
    """A limit that is not a positive integer raises ValueError."""
    with pytest.raises(ValueError, match="max_line_bytes"):
        LineFramer(bad)  # type: ignore[arg-type]


_stream_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b" ", b"\t", b"a", b"{}", b"xyz", b"\r\n", b"0123456789"]),
    max_size=60,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(stream=_stream_bytes, limit=st.integers(8, 32), data=st.data())
def test_any_split_matches_one_piece_and_reference(
    stream: bytes, limit: int, data: st.DataObject
) -> None:
    """Feeding a stream in any split gives the same items as one piece and the reference."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    whole = feed_all(LineFramer(limit), [stream])
    framer = LineFramer(limit)
    split: list[Item] = []
    for chunk in chunks:
        split.extend(framer.feed(chunk))
        assert framer.buffered <= limit + 1
    split.extend(framer.eof())

    assert split == whole
    assert whole == reference(stream, limit)


def test_pending_is_true_while_a_line_is_unfinished() -> None:
    """``pending`` (what line_timeout watches): a held partial line, or one being discarded."""
    framer = LineFramer(8)
    assert not framer.pending
    framer.feed(b'{"a"')
    assert framer.pending
    framer.feed(b":1}\n")
    assert not framer.pending
    framer.feed(b"x" * 20)  # over the limit: reported, and discarded up to its newline
    assert framer.pending
    assert framer.buffered == 0
    framer.feed(b"yyy\n{")
    assert framer.pending
    framer.eof()
    assert not framer.pending
