"""Tests for event validation, client messages and type filters.

Covers aaeventd.protocol.events and aaeventd.protocol.filters.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aaeventd.protocol.errors import ErrorCode, ProtocolError
from aaeventd.protocol.events import (
    KNOWN_TYPES,
    MAX_CONFIRMATION_ID_CHARS,
    MAX_CONFIRMATION_TEXT_CHARS,
    MAX_OPTION_CHARS,
    MAX_OPTIONS,
    REMEMBER_VALUES,
    RESERVED_TYPES,
    ConfirmationResponse,
    Heartbeat,
    PauseTimer,
    ResumeTimer,
    Subscribe,
    normalize_confirmation,
    parse_client_message,
    validate_event,
)
from aaeventd.protocol.filters import TypeFilter

MINIMAL: dict[str, dict[str, Any]] = {
    "skill_started": {"skill_name": "start_work"},
    "step_started": {"step_name": "fetch", "step_index": 0, "skill_id": "s1"},
    "step_completed": {"step_name": "fetch", "step_index": 1, "skill_name": "start_work"},
    "step_failed": {"step_name": "fetch", "step_index": 2, "skill_id": "s1"},
    "skill_completed": {"skill_id": "s1"},
    "skill_error": {"skill_name": "start_work"},
    "skill_failed": {"skill_id": "s1"},
    "confirmation_required": {"message": "Proceed?"},
    "heal_started": {},
    "auto_heal_triggered": {},
    "heal_completed": {},
    "auto_heal_completed": {},
    "persona_changed": {"persona": "developer"},
    "tools_list_changed": {},
}

REQUIRED: list[tuple[str, str]] = [
    ("skill_started", "skill_name"),
    ("step_started", "step_name"),
    ("step_started", "step_index"),
    ("step_completed", "step_name"),
    ("step_completed", "step_index"),
    ("step_failed", "step_name"),
    ("step_failed", "step_index"),
    ("persona_changed", "persona"),
]

SKILL_REF_TYPES = [
    "step_started",
    "step_completed",
    "step_failed",
    "skill_completed",
    "skill_error",
    "skill_failed",
]


def event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"type": event_type, **MINIMAL[event_type], **fields}


def invalid(obj: dict[str, Any], **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        validate_event(obj, **kwargs)
    assert info.value.code is ErrorCode.INVALID_EVENT
    return info.value


def locs(error: ProtocolError) -> list[list[str | int]]:
    assert error.details is not None
    return [detail["loc"] for detail in error.details]


def test_minimal_table_covers_every_known_type() -> None:
    """The fixture table lists exactly the known types."""
    assert set(MINIMAL) == KNOWN_TYPES


@pytest.mark.parametrize("event_type", sorted(KNOWN_TYPES))
def test_minimal_known_event_is_valid(event_type: str) -> None:
    """Each known type's minimal example passes and returns its type."""
    assert validate_event(event(event_type)) == event_type


@pytest.mark.parametrize(("event_type", "field"), REQUIRED)
def test_missing_required_field(event_type: str, field: str) -> None:
    """A missing required field is invalid_event with loc naming it."""
    obj = event(event_type)
    del obj[field]
    error = invalid(obj)
    assert locs(error) == [[field]]
    assert error.message == f"{event_type}: {field}: Field required"


@pytest.mark.parametrize("event_type", SKILL_REF_TYPES)
def test_one_of_skill_id_or_skill_name_required(event_type: str) -> None:
    """Events needing a skill reference refuse one with neither skill_id nor skill_name."""
    obj = event(event_type)
    obj.pop("skill_id", None)
    obj.pop("skill_name", None)
    error = invalid(obj)
    assert error.message == f"{event_type}: one of skill_id, skill_name is required"
    assert error.details == [{"loc": [], "msg": "one of skill_id, skill_name is required"}]
    for key in ("skill_id", "skill_name"):
        assert validate_event({**obj, key: "x"}) == event_type


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        ("step_started", "step_index", "3"),
        ("step_started", "step_index", True),
        ("step_started", "step_index", -1),
        ("step_started", "step_index", 1.0),
        ("step_started", "step_index", None),
        ("step_started", "total_steps", False),
        ("skill_started", "total_steps", -1),
        ("skill_started", "inputs", []),
        ("skill_started", "inputs", "x"),
        ("skill_started", "skill_name", 3),
        ("skill_started", "session_id", None),
        ("step_completed", "duration_ms", "x"),
        ("step_completed", "duration_ms", True),
        ("step_completed", "duration_ms", -0.5),
        ("step_completed", "duration_ms", 10**400),
        ("skill_completed", "total_duration_ms", "1"),
        ("step_failed", "skill_id", 1),
        ("heal_completed", "success", 1),
        ("heal_completed", "success", "true"),
        ("heal_started", "tool_name", ["x"]),
        ("heal_started", "step_index", -2),
        ("persona_changed", "persona", None),
        ("tools_list_changed", "tools", "a,b"),
        ("tools_list_changed", "tools", ["a", 1]),
        ("confirmation_required", "step_index", "0"),
        ("confirmation_required", "claude_suggestion", {"why": 1}),
        ("step_started", "step_index", 2**53),
        ("skill_started", "total_steps", 10**300),
    ],
)
def test_strict_types_are_not_coerced(event_type: str, field: str, value: Any) -> None:
    """Wrong JSON types and out-of-range values are refused, never coerced."""
    error = invalid(event(event_type, **{field: value}))
    assert locs(error)[0][0] == field


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        ("step_completed", "duration_ms", 0),
        ("step_completed", "duration_ms", 12.5),
        ("skill_completed", "total_duration_ms", 3),
        ("heal_completed", "success", False),
        ("skill_started", "inputs", {"a": [1, {"b": None}]}),
        ("skill_started", "source", None),
        ("step_completed", "result", {"any": ["json"]}),
        ("step_failed", "error", None),
        ("persona_changed", "previous", None),
        ("tools_list_changed", "count", "3"),
        ("tools_list_changed", "tools", []),
        ("confirmation_required", "claude_suggestion", "Yes: all checks passed."),
        ("step_started", "step_index", 2**53 - 1),
    ],
)
def test_valid_optional_values(event_type: str, field: str, value: Any) -> None:
    """Optional fields accept their type; untyped ones accept any JSON value."""
    assert validate_event(event(event_type, **{field: value})) == event_type


@pytest.mark.parametrize(
    ("synonym", "canonical", "bad"),
    [
        ("skill_failed", "skill_error", {"skill_id": 1}),
        ("auto_heal_triggered", "heal_started", {"step_index": -1}),
        ("auto_heal_completed", "heal_completed", {"success": "yes"}),
    ],
)
def test_synonyms_share_the_same_rules(synonym: str, canonical: str, bad: dict[str, Any]) -> None:
    """Synonym types validate like their twin and keep their own name."""
    assert validate_event(event(synonym)) == synonym
    (field,) = bad
    for name in (synonym, canonical):
        error = invalid({"type": name, **bad})
        assert error.message.startswith(f"{name}: {field}: ")
        assert locs(error) == [[field]]


def test_unknown_types_pass_unless_disallowed() -> None:
    """An unknown type passes by default and is unknown_type when not allowed."""
    obj = {"type": "my.custom:event", "step_index": "whatever"}
    assert validate_event(obj) == "my.custom:event"
    with pytest.raises(ProtocolError) as info:
        validate_event(obj, allow_unknown_types=False)
    assert info.value.code is ErrorCode.UNKNOWN_TYPE
    assert validate_event(event("skill_completed"), allow_unknown_types=False) == "skill_completed"


def test_reserved_types_list() -> None:
    """RESERVED_TYPES is exactly PROTOCOL.md §1.2's list."""
    assert (
        frozenset(
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
        == RESERVED_TYPES
    )
    assert not RESERVED_TYPES & KNOWN_TYPES


@pytest.mark.parametrize("event_type", [*sorted(RESERVED_TYPES), "hello"])
@pytest.mark.parametrize("allow_unknown", [True, False])
def test_reserved_types_are_refused(event_type: str, allow_unknown: bool) -> None:
    """Reserved types, hello included, are reserved_type whatever the unknown-type policy."""
    with pytest.raises(ProtocolError) as info:
        validate_event({"type": event_type}, allow_unknown_types=allow_unknown)
    assert info.value.code is ErrorCode.RESERVED_TYPE


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({}, ErrorCode.MISSING_TYPE),
        ({"type": 5}, ErrorCode.MISSING_TYPE),
        ({"type": "Step_Started"}, ErrorCode.INVALID_TYPE_NAME),
    ],
)
def test_type_checked_again(obj: dict[str, Any], code: ErrorCode) -> None:
    """validate_event re-checks the type field itself."""
    with pytest.raises(ProtocolError) as info:
        validate_event(obj)
    assert info.value.code is code


@pytest.mark.parametrize("event_type", sorted(KNOWN_TYPES))
def test_extra_fields_allowed_and_object_unchanged(event_type: str) -> None:
    """Extra fields are accepted and validation never modifies the object."""
    obj = event(
        event_type,
        extra={"nested": [1, 2, {"x": None}]},
        seq="not-ours",
        timestamp=3,
        options_note=["a"],
    )
    before = copy.deepcopy(obj)
    assert validate_event(obj) == event_type
    assert obj == before
    assert list(obj) == list(before)


def test_invalid_object_is_unchanged_too() -> None:
    """A refused object is not modified either."""
    obj = {"type": "confirmation_required", "prompt": "?", "options": ["a", "a"], "x": [1]}
    before = copy.deepcopy(obj)
    invalid(obj)
    assert obj == before


# -- confirmation_required --------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"message": "Go?"},
        {"prompt": "Go?"},
        {"message": "Go?", "prompt": "Go?"},
        {"message": "Go?", "options": ["a"], "default": "a"},
        {"message": "Go?", "default": "no"},
        {"message": "Go?", "timeout_seconds": 0.001},
        {"message": "Go?", "timeout_seconds": 3600},
        {"message": "Go?", "id": "abc", "step_index": 0, "skill_name": "s", "step_name": "t"},
    ],
)
def test_confirmation_valid(fields: dict[str, Any]) -> None:
    """Valid confirmation_required variants pass."""
    assert validate_event({"type": "confirmation_required", **fields}) == "confirmation_required"


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({}, []),
        ({"message": ""}, ["message"]),
        ({"prompt": ""}, ["prompt"]),
        ({"message": 1}, ["message"]),
        ({"message": "Go?", "prompt": None}, ["prompt"]),
        ({"message": "Go?", "options": []}, ["options"]),
        ({"message": "Go?", "options": ["a", "b", "a"]}, ["options"]),
        ({"message": "Go?", "options": ["a", 2]}, ["options", 1]),
        ({"message": "Go?", "options": "yes"}, ["options"]),
        ({"message": "Go?", "default": "maybe"}, ["default"]),
        ({"message": "Go?", "options": ["a"], "default": "yes"}, ["default"]),
        ({"message": "Go?", "default": 1}, ["default"]),
        ({"message": "Go?", "timeout_seconds": 0}, ["timeout_seconds"]),
        ({"message": "Go?", "timeout_seconds": -5}, ["timeout_seconds"]),
        ({"message": "Go?", "timeout_seconds": 3600.5}, ["timeout_seconds"]),
        ({"message": "Go?", "timeout_seconds": "60"}, ["timeout_seconds"]),
        ({"message": "Go?", "timeout_seconds": True}, ["timeout_seconds"]),
        ({"message": "Go?", "id": ""}, ["id"]),
        ({"message": "Go?", "id": 7}, ["id"]),
    ],
)
def test_confirmation_invalid(fields: dict[str, Any], loc: list[str | int]) -> None:
    """Bad text, options, default, timeout or id are invalid_event at the right loc."""
    error = invalid({"type": "confirmation_required", **fields})
    assert locs(error)[0] == loc


def test_confirmation_timeout_max_comes_from_argument() -> None:
    """The timeout ceiling is max_timeout_seconds, passed through the validation context."""
    obj = {"type": "confirmation_required", "message": "Go?", "timeout_seconds": 100}
    assert validate_event(obj, max_timeout_seconds=100) == "confirmation_required"
    error = invalid(obj, max_timeout_seconds=99.5)
    assert error.details == [
        {
            "loc": ["timeout_seconds"],
            "msg": "Input should be less than or equal to 99.5 (confirmations.max_timeout_seconds)",
        }
    ]


def test_confirmation_bounds_are_inclusive_and_named() -> None:
    """§3.7: texts of 4,096 characters, 16 options of 64 and a 256-character id pass;
    one more character or option is invalid_event with details naming the field."""
    assert (MAX_CONFIRMATION_TEXT_CHARS, MAX_OPTIONS, MAX_OPTION_CHARS) == (4096, 16, 64)
    text = "\u00e9" * MAX_CONFIRMATION_TEXT_CHARS  # characters, not bytes: 8,192 bytes
    widest = {
        "type": "confirmation_required",
        "prompt": text,
        "message": text,
        "claude_suggestion": text,
        "options": [f"{i:02d}" + "o" * (MAX_OPTION_CHARS - 2) for i in range(MAX_OPTIONS)],
        "id": "i" * MAX_CONFIRMATION_ID_CHARS,
    }
    assert validate_event(widest) == "confirmation_required"
    cases: list[tuple[str, Any, list[str | int], str]] = [
        ("prompt", text + "x", ["prompt"], "at most 4096 characters"),
        ("message", text + "x", ["message"], "at most 4096 characters"),
        ("claude_suggestion", text + "x", ["claude_suggestion"], "at most 4096 characters"),
        ("options", [*widest["options"], "one more"], ["options"], "at most 16 items"),
        ("options", ["yes", "n" * 65], ["options", 1], "at most 64 characters"),
        ("id", "i" * 257, ["id"], "at most 256 characters"),
    ]
    for name, value, loc, msg in cases:
        error = invalid({**widest, name: value})
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.details is not None
        [detail] = error.details
        assert detail["loc"] == loc, (name, detail)
        assert msg in detail["msg"], (name, detail)
        assert error.message.startswith(f"confirmation_required: {'.'.join(map(str, loc))}: ")


def test_details_shape_and_message() -> None:
    """details is a list of {loc, msg} without the union tag; the message names the field."""
    error = invalid({"type": "step_started", "step_name": 5, "step_index": -1, "skill_id": "s"})
    assert error.details == [
        {"loc": ["step_name"], "msg": "Input should be a valid string"},
        {"loc": ["step_index"], "msg": "Input should be greater than or equal to 0"},
    ]
    assert error.message == "step_started: step_name: Input should be a valid string (and 1 more)"
    single = invalid(event("step_started", step_index=-1))
    assert single.message == "step_started: step_index: Input should be greater than or equal to 0"
    for detail in error.details:
        assert set(detail) == {"loc", "msg"}
        assert all(isinstance(part, str | int) for part in detail["loc"])


def test_normalize_confirmation_fills_defaults() -> None:
    """normalize_confirmation returns a new dict with prompt, message, options and timeout."""
    obj = {"type": "confirmation_required", "prompt": "Go?", "x": 1}
    before = copy.deepcopy(obj)
    out = normalize_confirmation(obj, default_timeout_seconds=60)
    assert obj == before
    assert out == {
        "type": "confirmation_required",
        "prompt": "Go?",
        "x": 1,
        "message": "Go?",
        "options": ["yes", "no"],
        "timeout_seconds": 60,
    }
    assert list(out) == ["type", "prompt", "x", "message", "options", "timeout_seconds"]


def test_normalize_confirmation_keeps_given_values_and_message_wins() -> None:
    """Given options and timeout are kept; message wins over a different prompt."""
    obj = {
        "type": "confirmation_required",
        "message": "A",
        "prompt": "B",
        "options": ["x"],
        "timeout_seconds": 5,
    }
    out = normalize_confirmation(obj, default_timeout_seconds=60)
    assert out == {**obj, "prompt": "A"}
    assert list(out) == list(obj)
    assert obj["prompt"] == "B"


# -- property: never anything but ProtocolError ------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "skill_name",
        "skill_id",
        "session_id",
        "step_name",
        "step_index",
        "total_steps",
        "inputs",
        "duration_ms",
        "total_duration_ms",
        "message",
        "prompt",
        "id",
        "options",
        "timeout_seconds",
        "default",
        "success",
        "persona",
        "tools",
        "tool_name",
        "description",
        "error",
        "other",
    ]
)


@settings(max_examples=600, deadline=None)
@given(
    event_type=st.sampled_from(sorted(KNOWN_TYPES)),
    fields=st.dictionaries(
        _field_names,
        _json_values
        | st.lists(st.sampled_from(["yes", "no", "a"]), max_size=3)
        | st.sampled_from(["yes", "no", "", "x"]),
        max_size=8,
    ),
    allow_unknown=st.booleans(),
    max_timeout=st.floats(min_value=0.5, max_value=1e6),
)
def test_validate_event_raises_only_protocol_error(
    event_type: str, fields: dict[str, Any], allow_unknown: bool, max_timeout: float
) -> None:
    """Arbitrary JSON-like fields on a known type either pass or raise ProtocolError."""
    obj = {"type": event_type, **fields}
    before = copy.deepcopy(obj)
    error: ProtocolError | None = None
    try:
        result = validate_event(
            obj, allow_unknown_types=allow_unknown, max_timeout_seconds=max_timeout
        )
    except ProtocolError as exc:
        error = exc
    if error is None:
        assert result == event_type
    else:
        assert error.code is ErrorCode.INVALID_EVENT
        assert error.details
        assert error.message.startswith(f"{event_type}: ")
    assert obj == before


# -- client messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "heartbeat"}, Heartbeat()),
        ({"type": "heartbeat", "extra": 1}, Heartbeat()),
        (
            {"type": "confirmation_response", "id": "c1", "response": "yes"},
            ConfirmationResponse("c1", "yes", "none"),
        ),
        (
            {"type": "confirmation_response", "id": "c1", "response": "no", "remember": "always"},
            ConfirmationResponse("c1", "no", "always"),
        ),
        ({"type": "pause_timer", "id": "c1"}, PauseTimer("c1")),
        ({"type": "resume_timer", "id": "c1"}, ResumeTimer("c1")),
        ({"type": "subscribe", "types": []}, Subscribe(())),
        ({"type": "subscribe", "types": ["skill_*", "heal_*"]}, Subscribe(("skill_*", "heal_*"))),
    ],
)
def test_parse_client_message_valid(obj: dict[str, Any], expected: object) -> None:
    """Each §2.2 message parses to its dataclass."""
    assert parse_client_message(obj) == expected


@pytest.mark.parametrize("remember", REMEMBER_VALUES)
def test_every_remember_value_is_accepted(remember: str) -> None:
    """All four remember values are accepted."""
    obj = {"type": "confirmation_response", "id": "c", "response": "y", "remember": remember}
    message = parse_client_message(obj)
    assert isinstance(message, ConfirmationResponse)
    assert message.remember == remember


@pytest.mark.parametrize(
    ("obj", "code", "fragment"),
    [
        ({}, ErrorCode.UNKNOWN_MESSAGE, "type"),
        ({"type": 1}, ErrorCode.UNKNOWN_MESSAGE, "type"),
        ({"type": "dance"}, ErrorCode.UNKNOWN_MESSAGE, "'dance'"),
        ({"type": "skill_started"}, ErrorCode.UNKNOWN_MESSAGE, "skill_started"),
        ({"type": "confirmation_response", "response": "y"}, ErrorCode.UNKNOWN_CONFIRMATION, "id"),
        (
            {"type": "confirmation_response", "id": 3, "response": "y"},
            ErrorCode.UNKNOWN_CONFIRMATION,
            "id",
        ),
        ({"type": "confirmation_response", "id": "c"}, ErrorCode.INVALID_RESPONSE, "response"),
        (
            {"type": "confirmation_response", "id": "c", "response": True},
            ErrorCode.INVALID_RESPONSE,
            "response",
        ),
        (
            {"type": "confirmation_response", "id": "c", "response": "y", "remember": None},
            ErrorCode.INVALID_RESPONSE,
            "remember",
        ),
        (
            {"type": "confirmation_response", "id": "c", "response": "y", "remember": "never"},
            ErrorCode.INVALID_RESPONSE,
            "remember",
        ),
        (
            {"type": "confirmation_response", "id": "c", "response": "y", "remember": ["none"]},
            ErrorCode.INVALID_RESPONSE,
            "remember",
        ),
        ({"type": "pause_timer"}, ErrorCode.UNKNOWN_CONFIRMATION, "id"),
        ({"type": "resume_timer", "id": None}, ErrorCode.UNKNOWN_CONFIRMATION, "id"),
        ({"type": "subscribe"}, ErrorCode.UNKNOWN_MESSAGE, "types"),
        ({"type": "subscribe", "types": "skill_*"}, ErrorCode.UNKNOWN_MESSAGE, "types"),
        ({"type": "subscribe", "types": ["a", 1]}, ErrorCode.UNKNOWN_MESSAGE, "types"),
        ({"type": "subscribe", "types": [""]}, ErrorCode.UNKNOWN_MESSAGE, "types"),
        ({"type": "subscribe", "types": ["x" * 129]}, ErrorCode.UNKNOWN_MESSAGE, "types"),
        ({"type": "subscribe", "types": ["a"] * 65}, ErrorCode.UNKNOWN_MESSAGE, "types"),
    ],
)
def test_parse_client_message_errors(obj: dict[str, Any], code: ErrorCode, fragment: str) -> None:
    """Bad client messages give the §2.1 error code and a message naming the field."""
    with pytest.raises(ProtocolError) as info:
        parse_client_message(obj)
    assert info.value.code is code
    assert fragment in info.value.message


def test_subscribe_limits_are_inclusive() -> None:
    """64 globs of 128 characters are accepted."""
    types = ["x" * 128] * 64
    assert parse_client_message({"type": "subscribe", "types": types}) == Subscribe(tuple(types))


# -- type filters -----------------------------------------------------------------------


def test_empty_filter_matches_everything() -> None:
    """No globs means every type matches."""
    for type_filter in (TypeFilter([]), TypeFilter.from_query(None), TypeFilter.from_query("")):
        assert type_filter.matches_all
        assert type_filter.matches("anything")
        assert type_filter.globs == ()


def test_star_glob_matches_everything() -> None:
    """A lone "*" among the globs takes the match-all path."""
    assert TypeFilter(["skill_*", "*"]).matches_all
    assert TypeFilter(["*"]).matches("x")


@pytest.mark.parametrize(
    ("globs", "event_type", "expected"),
    [
        (["skill_*"], "skill_started", True),
        (["skill_*"], "step_started", False),
        (["skill_*", "heal_*"], "heal_completed", True),
        (["skill_*", "heal_*"], "auto_heal_completed", False),
        (["*heal*"], "auto_heal_completed", True),
        (["step_?tarted"], "step_started", True),
        (["step_[sc]*"], "step_completed", True),
        (["step_[!sc]*"], "step_failed", True),
        (["step_[!sc]*"], "step_started", False),
        (["Skill_*"], "skill_started", False),
        (["skill_started"], "skill_started_x", False),
        (["a.b"], "axb", False),
        (["x:*"], "x:y", True),
    ],
)
def test_globs_follow_fnmatchcase(globs: list[str], event_type: str, expected: bool) -> None:
    """Matching is fnmatch.fnmatchcase over any of the globs."""
    type_filter = TypeFilter(globs)
    assert type_filter.matches(event_type) is expected
    assert expected is any(fnmatch.fnmatchcase(event_type, glob) for glob in globs)


def test_from_query_splits_and_ignores_blanks() -> None:
    """A types= value is split on commas; blanks and spaces around items are dropped."""
    type_filter = TypeFilter.from_query(" skill_*, ,heal_*,")
    assert type_filter.globs == ("skill_*", "heal_*")
    assert type_filter == TypeFilter(["skill_*", "heal_*"])
    assert TypeFilter.from_query(" , ").matches_all


def test_memo_is_bounded_and_does_not_change_answers() -> None:
    """Asking many distinct types keeps answers right while the memo stays small."""
    type_filter = TypeFilter(["t1*", "x"])
    for round_ in range(2):
        for i in range(3000):
            name = f"t{i}"
            assert type_filter.matches(name) is fnmatch.fnmatchcase(name, "t1*"), (round_, name)
        assert len(type_filter._memo) <= 1024


@settings(max_examples=300, deadline=None)
@given(
    globs=st.lists(st.text(alphabet="ab*?[]!-_", min_size=1, max_size=6), max_size=4),
    names=st.lists(st.text(alphabet="ab_-", max_size=6), max_size=10),
)
def test_filter_agrees_with_fnmatchcase(globs: list[str], names: list[str]) -> None:
    """For any globs and types, matches() is fnmatchcase over the plain globs (or none)
    and over no ``!`` glob (PROTOCOL §2), memo or not."""
    type_filter = TypeFilter(globs)
    plain = [g for g in globs if not g.startswith("!")]
    excluded = [g[1:] for g in globs if g.startswith("!") and len(g) > 1]
    for name in names * 2:
        expected = (not plain or any(fnmatch.fnmatchcase(name, g) for g in plain)) and not any(
            fnmatch.fnmatchcase(name, g) for g in excluded
        )
        assert type_filter.matches(name) is expected, (globs, name)


def test_every_known_type_has_its_own_validator() -> None:
    """validate_event picks the model by type: one per known type, the union's own."""
    from aaeventd.protocol.events import _VALIDATORS, EVENT_ADAPTER, KNOWN_TYPES

    assert set(_VALIDATORS) == set(KNOWN_TYPES)
    bad = {"type": "step_started", "skill_name": "s", "step_name": "x", "step_index": -1}
    with pytest.raises(ProtocolError) as info:
        validate_event(bad)
    assert info.value.details == [
        {"loc": ["step_index"], "msg": "Input should be greater than or equal to 0"}
    ], info.value.details
    with pytest.raises(ValidationError):  # the union agrees
        EVENT_ADAPTER.validate_python(bad)
