"""Sans-I/O NDJSON line framer for the source socket (PROTOCOL.md §1, "Framing").

Bytes go in (:meth:`LineFramer.feed`), complete lines come out as :class:`Line`, and an
over-long line comes out as exactly one :class:`TooLong`.  The framer never holds more
than ``max_line_bytes + 1`` bytes, however long a line is: the tail of an over-long line
is skipped up to the next ``\\n`` without being stored.

This module owns framing only: it does not decode UTF-8 or JSON, and it imports no
I/O library.

Rules (the ``+ 1`` everywhere is room for the ``\\r`` of a ``\\r\\n`` terminator):

* A line ends with ``b"\\n"``; one trailing ``b"\\r"`` before it is stripped.  The
  *content* is what remains.
* Lines are numbered from 1 per framer (per connection); every physical line counts,
  blank or over-long ones included.
* A line whose content is empty or only space / tab / ``\\r`` is blank: it is counted
  but not returned.
* Content longer than ``max_line_bytes`` gives one :class:`TooLong`, emitted as soon as
  the pending partial line exceeds ``max_line_bytes + 1`` bytes, or at its newline.
  This length check comes first, so an over-long line made only of blanks is still
  reported (the framer does not look inside what it discards).
* :meth:`LineFramer.eof` treats a pending unterminated line as if a ``\\n`` followed it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Line", "LineFramer", "TooLong"]

_CR = 0x0D
_BLANK_BYTES = b" \t\r"
# First bytes that might start a blank line; anything else is certainly not blank.
_BLANK_FIRST = frozenset(_BLANK_BYTES)


@dataclass(frozen=True, slots=True)
class Line:
    """One complete, non-blank line."""

    number: int
    """1-based physical line number on this connection."""
    data: bytes
    """Content, without the ``\\n`` and without one trailing ``\\r``."""


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line whose content exceeded the limit; it has been (or is being) discarded."""

    number: int
    """1-based physical line number of the over-long line."""
    limit: int
    """The ``max_line_bytes`` in force for that line."""


class LineFramer:
    """Split a byte stream into NDJSON lines with a bounded buffer.

    Args:
        max_line_bytes: the largest allowed line content, in bytes (at least 1).  The
            attribute may be changed at any time (config reload); a new value applies
            from the next line on, the line in progress keeps the limit it started with.
    """

    __slots__ = ("_buf", "_discarding", "_line_limit", "_max_line_bytes", "_number")

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line_bytes = _check_limit(max_line_bytes)
        # The partial line (never contains b"\n"); at most _line_limit + 1 bytes.
        self._buf = bytearray()
        # Lines completed so far; the line in progress is number _number + 1.
        self._number = 0
        # True while skipping the tail of a line already reported as TooLong.
        self._discarding = False
        # The limit captured when the line in progress started.
        self._line_limit = self._max_line_bytes

    @property
    def max_line_bytes(self) -> int:
        """The limit for lines started from now on."""
        return self._max_line_bytes

    @max_line_bytes.setter
    def max_line_bytes(self, value: int) -> None:
        self._max_line_bytes = _check_limit(value)
        if not self._buf and not self._discarding:
            self._line_limit = self._max_line_bytes

    @property
    def buffered(self) -> int:
        """Bytes of the partial line currently held (at most the line's limit + 1)."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """True while a line has started and not ended (held, or being discarded)."""
        return bool(self._buf) or self._discarding

    @property
    def lines_seen(self) -> int:
        """Physical lines completed so far (blank and over-long ones included)."""
        return self._number

    def feed(self, data: bytes) -> list[Line | TooLong]:
        """Consume ``data`` and return the lines it completes, in order.

        Args:
            data: the next bytes received (any size, possibly empty).

        Returns:
            Non-blank :class:`Line` s and :class:`TooLong` markers, in line order.
        """
        out: list[Line | TooLong] = []
        buf = self._buf
        limit = self._line_limit
        pos = 0
        end = len(data)
        while pos < end:
            nl = data.find(b"\n", pos)
            if nl < 0:
                # No terminator in the rest: it all belongs to the line in progress.
                if self._discarding:
                    break
                if len(buf) + (end - pos) > limit + 1:
                    # Certainly too long, even if a "\r\n" follows: report it now.
                    out.append(TooLong(self._number + 1, limit))
                    buf.clear()
                    self._discarding = True
                else:
                    buf += memoryview(data)[pos:]
                break

            self._number += 1
            if self._discarding:
                self._discarding = False
            else:
                stop = nl
                if stop > pos:
                    if data[stop - 1] == _CR:
                        stop -= 1
                elif buf and buf[-1] == _CR:
                    del buf[-1]
                size = len(buf) + (stop - pos)
                if size > limit:
                    out.append(TooLong(self._number, limit))
                    buf.clear()
                elif size:
                    if buf:
                        line = b"".join((buf, memoryview(data)[pos:stop]))
                        buf.clear()
                    else:
                        line = data[pos:stop]
                    if line[0] not in _BLANK_FIRST or line.strip(_BLANK_BYTES):
                        out.append(Line(self._number, line))
            pos = nl + 1
            # A new line starts here: it takes the limit in force now.
            limit = self._line_limit = self._max_line_bytes
        return out

    def eof(self) -> list[Line | TooLong]:
        """Signal the end of the stream; return the unterminated final line, if any.

        An unterminated line is treated as if a ``\\n`` followed it (so one trailing
        ``\\r`` is stripped, and it is counted).  The framer is then empty and may be fed
        again.
        """
        if self._buf or self._discarding:
            return self.feed(b"\n")
        return []


def _check_limit(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_line_bytes must be a positive integer, got {value!r}")
    return value
