"""Error codes of the wire protocol (PROTOCOL.md §1.2 and §2.1) and the peer-error type."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from aaeventd.errors import AaeventdError


class ErrorCode(StrEnum):
    """Every ``code`` the daemon may put in an ``error`` reply."""

    # Source side (§1.2)
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_TYPE = "missing_type"
    INVALID_TYPE_NAME = "invalid_type_name"
    INVALID_EVENT = "invalid_event"
    UNKNOWN_TYPE = "unknown_type"
    RESERVED_TYPE = "reserved_type"
    LINE_TOO_LONG = "line_too_long"
    LINE_TIMEOUT = "line_timeout"
    DUPLICATE_CONFIRMATION = "duplicate_confirmation"
    TOO_MANY_CONFIRMATIONS = "too_many_confirmations"
    FORBIDDEN = "forbidden"
    OVERLOADED = "overloaded"
    # Client side (§2.1)
    UNKNOWN_MESSAGE = "unknown_message"
    UNKNOWN_CONFIRMATION = "unknown_confirmation"
    INVALID_RESPONSE = "invalid_response"
    MESSAGE_TOO_BIG = "message_too_big"


class ProtocolError(AaeventdError):
    """A peer sent something the protocol refuses.  Becomes an ``error`` reply.

    Attributes:
        code: the wire error code.
        message: human-readable text naming the field or problem.
        details: for ``invalid_event``, a list of ``{"loc": [...], "msg": ...}``.
    """

    def __init__(
        self, code: ErrorCode, message: str, *, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
