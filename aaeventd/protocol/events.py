"""Event validation (PROTOCOL.md §1.2, §1.3) and client messages (§2.2).

Owns the wire models: one strict pydantic model per known event type (synonyms share a
model), joined in a discriminated union on ``type`` whose ``TypeAdapter`` is built once
at import; the reserved-type rule; the pure confirmation normalisation of §3.1; and the
parsing of client-to-server messages into small frozen dataclasses.

Validation never changes the source's object and never uses the model output: the
daemon forwards the object exactly as sent (§1.1).  Nothing here does I/O.

Choices where PROTOCOL.md is silent:

* An optional field "typed if present" must have that type when the key is present:
  ``null`` is not a string (send nothing instead).
* Required string fields may be empty, except ``message``/``prompt`` and ``id`` of
  ``confirmation_required``, which the table says are non-empty.
* "number" is an int or a float, never a bool; an integer too large for a double is
  refused there (clients could not represent it).  For the same reason an "int" field is
  at most 2**53 - 1 (JavaScript's largest safe integer, I-JSON's interoperable range):
  ints are copied into the ``connected`` snapshot, which must stay within 1 MiB (§2.1).
* ``error_type``, ``fix_action``, ``error_snippet``, ``description`` and
  ``step_name`` are strings; fields the table gives no type (``source``, ``result``,
  ``output``, ``error``, ``previous``, ``count``) take any JSON.
* §3.7 bounds ``confirmation_required``: ``message``/``prompt`` and
  ``claude_suggestion`` at most 4,096 characters (so ``claude_suggestion``, which the
  bound implies is text, is a string), ``options`` at most 16 strings of at most 64
  characters.  ``id`` is at most 256 characters: it is copied whole into every
  ``connected`` snapshot (a client needs it to answer), which must stay within 1 MiB.
  Characters are Unicode code points, as Python's ``len`` counts them.
* ``normalize_confirmation``: when both ``message`` and ``prompt`` are sent and differ,
  ``message`` wins and ``prompt`` is overwritten with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, SchemaValidator

from aaeventd.protocol.codec import check_type
from aaeventd.protocol.errors import ErrorCode, ProtocolError

__all__ = [
    "DEFAULT_OPTIONS",
    "EVENT_ADAPTER",
    "KNOWN_TYPES",
    "MAX_CONFIRMATION_ID_CHARS",
    "MAX_CONFIRMATION_TEXT_CHARS",
    "MAX_OPTIONS",
    "MAX_OPTION_CHARS",
    "MAX_SAFE_INTEGER",
    "REMEMBER_VALUES",
    "RESERVED_TYPES",
    "ClientMessage",
    "ConfirmationResponse",
    "Heartbeat",
    "PauseTimer",
    "ResumeTimer",
    "Subscribe",
    "normalize_confirmation",
    "parse_client_message",
    "validate_event",
]

# ---------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------

MAX_SAFE_INTEGER: Final = 2**53 - 1
"""The largest "int" a known event may carry (a client's double holds it exactly)."""
MAX_CONFIRMATION_TEXT_CHARS: Final = 4096
"""§3.7: ``message``/``prompt`` and ``claude_suggestion`` of ``confirmation_required``."""
MAX_OPTIONS: Final = 16
"""§3.7: the most ``options`` a ``confirmation_required`` may offer."""
MAX_OPTION_CHARS: Final = 64
"""§3.7: the longest option."""
MAX_CONFIRMATION_ID_CHARS: Final = 256
"""The longest ``id`` a source may give a confirmation (copied whole into snapshots)."""

NonNegInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
NonNegNumber = Annotated[float, Field(ge=0)]  # strict float: int or float, never bool
NonEmptyStr = Annotated[str, Field(min_length=1)]
ConfirmationText = Annotated[str, Field(min_length=1, max_length=MAX_CONFIRMATION_TEXT_CHARS)]
Option = Annotated[str, Field(max_length=MAX_OPTION_CHARS)]

DEFAULT_OPTIONS: Final[tuple[str, ...]] = ("yes", "no")
"""``options`` of a ``confirmation_required`` that sends none."""
DEFAULT_MAX_TIMEOUT_SECONDS: Final = 3600.0


class _Event(BaseModel):
    """Base of the known event models: strict JSON types, extra fields allowed.

    Defaults of optional fields are never read: validation output is discarded, the
    defaults only let the key be absent (a present ``null`` is still refused).  So
    extra fields are accepted and not kept (``extra="ignore"``; ``"allow"`` would copy
    them into every instance, half the cost of validating an event).
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _require_one_of(model: BaseModel, *names: str) -> None:
    if model.model_fields_set.isdisjoint(names):
        raise PydanticCustomError(
            "one_of_required", "one of {fields} is required", {"fields": ", ".join(names)}
        )


class _SkillRef(_Event):
    """An event that must name its skill by ``skill_id`` or ``skill_name``."""

    skill_id: str = ""
    skill_name: str = ""

    @model_validator(mode="after")
    def _skill_ref(self) -> _SkillRef:
        _require_one_of(self, "skill_id", "skill_name")
        return self


class SkillStarted(_Event):
    type: Literal["skill_started"]
    skill_name: str
    skill_id: str = ""
    session_id: str = ""
    total_steps: NonNegInt = 0
    inputs: dict[str, Any] = Field(default_factory=dict)
    source: Any = None


class _Step(_SkillRef):
    step_name: str
    step_index: NonNegInt
    total_steps: NonNegInt = 0
    description: str = ""


class StepStarted(_Step):
    type: Literal["step_started"]


class StepCompleted(_Step):
    type: Literal["step_completed"]
    result: Any = None
    output: Any = None
    duration_ms: NonNegNumber = 0


class StepFailed(_Step):
    type: Literal["step_failed"]
    error: Any = None


class SkillCompleted(_SkillRef):
    type: Literal["skill_completed"]
    total_duration_ms: NonNegNumber = 0


class SkillError(_SkillRef):
    type: Literal["skill_error", "skill_failed"]
    error: Any = None


class ConfirmationRequired(_Event):
    type: Literal["confirmation_required"]
    message: ConfirmationText = "-"
    prompt: ConfirmationText = "-"
    id: Annotated[str, Field(min_length=1, max_length=MAX_CONFIRMATION_ID_CHARS)] = "-"
    # Validated before `default`, which reads it (absent: the default below).
    options: Annotated[list[Option], Field(min_length=1, max_length=MAX_OPTIONS)] = Field(
        default_factory=lambda: list(DEFAULT_OPTIONS)
    )
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    default: str = ""
    skill_id: str = ""
    skill_name: str = ""
    step_name: str = ""
    step_index: NonNegInt = 0
    claude_suggestion: Annotated[str, Field(max_length=MAX_CONFIRMATION_TEXT_CHARS)] = ""

    @field_validator("options")
    @classmethod
    def _unique_options(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("unique_options", "options must be unique")
        return value

    @field_validator("timeout_seconds")
    @classmethod
    def _timeout_max(cls, value: float, info: ValidationInfo) -> float:
        context = info.context
        limit = DEFAULT_MAX_TIMEOUT_SECONDS
        if context is not None:
            limit = context.get("max_timeout_seconds", limit)
        if value > limit:
            raise PydanticCustomError(
                "less_than_equal",
                "Input should be less than or equal to {le} (confirmations.max_timeout_seconds)",
                {"le": int(limit) if float(limit).is_integer() else limit},
            )
        return value

    @field_validator("default")
    @classmethod
    def _default_in_options(cls, value: str, info: ValidationInfo) -> str:
        options = info.data.get("options")
        # options missing from info.data: it failed, and that error is reported already.
        if options is not None and value not in options:
            raise PydanticCustomError("default_not_in_options", "default must be one of options")
        return value

    @model_validator(mode="after")
    def _text(self) -> ConfirmationRequired:
        _require_one_of(self, "message", "prompt")
        return self


class _Heal(_Event):
    tool_name: str = ""
    skill_id: str = ""
    step_index: NonNegInt = 0
    fix_action: str = ""


class HealStarted(_Heal):
    type: Literal["heal_started", "auto_heal_triggered"]
    error: Any = None
    error_type: str = ""
    error_snippet: str = ""


class HealCompleted(_Heal):
    type: Literal["heal_completed", "auto_heal_completed"]
    success: bool = False


class PersonaChanged(_Event):
    type: Literal["persona_changed"]
    persona: str
    previous: Any = None


class ToolsListChanged(_Event):
    type: Literal["tools_list_changed"]
    tools: list[str] = Field(default_factory=list)
    count: Any = None


KnownEvent = Annotated[
    SkillStarted
    | StepStarted
    | StepCompleted
    | StepFailed
    | SkillCompleted
    | SkillError
    | ConfirmationRequired
    | HealStarted
    | HealCompleted
    | PersonaChanged
    | ToolsListChanged,
    Field(discriminator="type"),
]

EVENT_ADAPTER: Final[TypeAdapter[KnownEvent]] = TypeAdapter(KnownEvent)
"""Validator of every known event type (PROTOCOL.md §1.3), built once."""

_VALIDATORS: Final[dict[str, SchemaValidator]] = {
    name: model.__pydantic_validator__
    for model in get_args(get_args(KnownEvent)[0])
    for name in get_args(model.model_fields["type"].annotation)
}
"""Each known type's own model validator: what :data:`EVENT_ADAPTER` picks by the
``type`` tag, without the union's dispatch (the type is known before validating)."""

KNOWN_TYPES: Final[frozenset[str]] = frozenset(
    {
        "skill_started",
        "step_started",
        "step_completed",
        "step_failed",
        "skill_completed",
        "skill_error",
        "skill_failed",
        "confirmation_required",
        "heal_started",
        "auto_heal_triggered",
        "heal_completed",
        "auto_heal_completed",
        "persona_changed",
        "tools_list_changed",
    }
)
"""Event types PROTOCOL.md §1.3 validates (both vocabularies)."""

RESERVED_TYPES: Final[frozenset[str]] = frozenset(
    {
        "connected",
        "welcome",
        "ack",
        "error",
        "heartbeat_ack",
        "subscribed",
        "replay_gap",
        "confirmation_response",
        "confirmation_answered",
        "confirmation_expired",
    }
)
"""Types a source may not send (PROTOCOL.md §1.2).  ``hello`` is handled apart."""

_HELLO = "hello"


def validate_event(
    obj: dict[str, Any],
    *,
    allow_unknown_types: bool = True,
    max_timeout_seconds: float = DEFAULT_MAX_TIMEOUT_SECONDS,
) -> str:
    """Check a source's event against PROTOCOL.md §1.2-§1.3 and return its type.

    ``obj`` is read, never changed.  ``hello`` counts as reserved here: the ingest layer
    handles a first-line ``hello`` before calling this.

    Args:
        obj: a decoded object (from :func:`~aaeventd.protocol.codec.decode_object`).
        allow_unknown_types: ``events.allow_unknown_types``; when false a type outside
            :data:`KNOWN_TYPES` is refused.
        max_timeout_seconds: ``confirmations.max_timeout_seconds``.

    Raises:
        ProtocolError: ``missing_type``, ``invalid_type_name``, ``reserved_type``,
            ``unknown_type`` or ``invalid_event`` (with ``details``).
    """
    event_type = check_type(obj)
    if event_type not in KNOWN_TYPES:
        if event_type in RESERVED_TYPES or event_type == _HELLO:
            raise ProtocolError(
                ErrorCode.RESERVED_TYPE, f"type {event_type!r} is reserved for the daemon"
            )
        if not allow_unknown_types:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown event type {event_type!r}")
        return event_type
    context = (
        {"max_timeout_seconds": max_timeout_seconds}
        if event_type == "confirmation_required"
        else None
    )
    try:
        _VALIDATORS[event_type].validate_python(obj, context=context)
    except ValidationError as exc:
        raise _invalid_event(event_type, exc) from None
    return event_type


def _invalid_event(event_type: str, exc: ValidationError) -> ProtocolError:
    details: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        details.append({"loc": list(error["loc"]), "msg": error["msg"]})
    first = details[0]
    where = ".".join(str(part) for part in first["loc"])
    message = f"{event_type}: {where}: {first['msg']}" if where else f"{event_type}: {first['msg']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return ProtocolError(ErrorCode.INVALID_EVENT, message, details=details)


def normalize_confirmation(
    obj: dict[str, Any], *, default_timeout_seconds: float
) -> dict[str, Any]:
    """Return a copy of a valid ``confirmation_required`` with the §3.1 fields filled in.

    Both ``prompt`` and ``message`` carry the same text (``message`` wins when both are
    sent and differ), ``options`` defaults to ``["yes", "no"]`` and ``timeout_seconds``
    to ``default_timeout_seconds``.  Keys keep ``obj``'s order; added keys are appended.
    ``obj`` is not changed.  The hub adds ``id`` and ``created_at`` itself.
    """
    out = dict(obj)
    text = obj.get("message") or obj.get("prompt")
    if text is not None:
        out["prompt"] = text
        out["message"] = text
    if "options" not in out:
        out["options"] = list(DEFAULT_OPTIONS)
    if "timeout_seconds" not in out:
        out["timeout_seconds"] = default_timeout_seconds
    return out


# ---------------------------------------------------------------------------
# Client -> server messages (§2.2)
# ---------------------------------------------------------------------------

REMEMBER_VALUES: Final = ("none", "this-error", "this-skill", "always")
"""Accepted ``remember`` values of a ``confirmation_response``; absent means ``none``."""

MAX_SUBSCRIBE_GLOBS: Final = 64
MAX_GLOB_CHARS: Final = 128


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``{"type":"heartbeat"}``: answer with ``heartbeat_ack``."""


@dataclass(frozen=True, slots=True)
class ConfirmationResponse:
    """A client's answer to a pending confirmation (not yet checked against it)."""

    id: str
    response: str
    remember: str


@dataclass(frozen=True, slots=True)
class PauseTimer:
    """Pause the countdown of confirmation ``id``."""

    id: str


@dataclass(frozen=True, slots=True)
class ResumeTimer:
    """Resume the countdown of confirmation ``id``."""

    id: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Replace the client's type filter; empty ``types`` means all."""

    types: tuple[str, ...]


ClientMessage = Heartbeat | ConfirmationResponse | PauseTimer | ResumeTimer | Subscribe


def _heartbeat(obj: dict[str, Any]) -> Heartbeat:
    return Heartbeat()


def _confirmation_id(obj: dict[str, Any], message_type: str) -> str:
    confirmation_id = obj.get("id")
    if type(confirmation_id) is not str:
        raise ProtocolError(
            ErrorCode.UNKNOWN_CONFIRMATION, f"{message_type}: 'id' must be a string"
        )
    return confirmation_id


def _confirmation_response(obj: dict[str, Any]) -> ConfirmationResponse:
    confirmation_id = _confirmation_id(obj, "confirmation_response")
    response = obj.get("response")
    if type(response) is not str:
        raise ProtocolError(
            ErrorCode.INVALID_RESPONSE, "confirmation_response: 'response' must be a string"
        )
    remember = obj.get("remember", "none")
    if type(remember) is not str or remember not in REMEMBER_VALUES:
        raise ProtocolError(
            ErrorCode.INVALID_RESPONSE,
            "confirmation_response: 'remember' must be one of " + ", ".join(REMEMBER_VALUES),
        )
    return ConfirmationResponse(confirmation_id, response, remember)


def _pause_timer(obj: dict[str, Any]) -> PauseTimer:
    return PauseTimer(_confirmation_id(obj, "pause_timer"))


def _resume_timer(obj: dict[str, Any]) -> ResumeTimer:
    return ResumeTimer(_confirmation_id(obj, "resume_timer"))


def _subscribe(obj: dict[str, Any]) -> Subscribe:
    types = obj.get("types")
    if (
        type(types) is not list
        or len(types) > MAX_SUBSCRIBE_GLOBS
        or not all(type(glob) is str and 0 < len(glob) <= MAX_GLOB_CHARS for glob in types)
    ):
        raise ProtocolError(
            ErrorCode.UNKNOWN_MESSAGE,
            f"subscribe: 'types' must be a list of at most {MAX_SUBSCRIBE_GLOBS} non-empty "
            f"strings of at most {MAX_GLOB_CHARS} characters",
        )
    return Subscribe(tuple(types))


_CLIENT_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ClientMessage]]] = {
    "heartbeat": _heartbeat,
    "confirmation_response": _confirmation_response,
    "pause_timer": _pause_timer,
    "resume_timer": _resume_timer,
    "subscribe": _subscribe,
}


def parse_client_message(obj: dict[str, Any]) -> ClientMessage:
    """Turn a decoded client message (§2.2) into a :data:`ClientMessage`.

    Only the message's shape is checked here; whether the ``id`` is pending and the
    ``response`` one of its options is the hub's business.

    Raises:
        ProtocolError: ``unknown_message`` (no string ``type``, an unknown one, or a bad
            ``subscribe``), ``unknown_confirmation`` (``id`` missing or not a string) or
            ``invalid_response`` (bad ``response`` or ``remember``).
    """
    message_type = obj.get("type")
    if type(message_type) is not str:
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, "message has no string 'type'")
    parser = _CLIENT_PARSERS.get(message_type)
    if parser is None:
        shown = message_type[:80] + ("..." if len(message_type) > 80 else "")
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {shown!r}")
    return parser(obj)
