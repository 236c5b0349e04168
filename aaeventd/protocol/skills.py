"""How events name a running skill (PROTOCOL §2.1), shared by the hub and the consoles.

A skill is keyed by the ``skill_id`` of its ``skill_started``, else its
``session_id``, else its ``skill_name``.  A later event finds it by the first of
those fields that it carries and that matches a running skill, the most recently
started match winning.  Pure functions over any objects with those three attributes.

Names are chosen by sources and may be as long as a line (``sources.max_line_bytes``).
A holder that must bound its memory (the daemon keeps up to 100 running skills) keeps
:func:`name_ref` of each name instead: the name itself when it has at most
:data:`NAME_KEEP_CHARS` characters, else a fixed-size stand-in (its start, the cut
mark, a digest of the whole) that only the same long name maps to.  Matching the
refs of an event (:func:`event_refs`) against stored refs gives the same answers as
matching the whole names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Reversible
from typing import Any, Protocol, TypeVar

SKILL_KEYS = ("skill_id", "session_id", "skill_name")
#: Events that end a running skill (``step_failed`` does not).
SKILL_END_TYPES = frozenset({"skill_completed", "skill_failed", "skill_error"})
#: Events that move or refresh a running skill's step.
STEP_TYPES = frozenset({"step_started", "step_completed", "step_failed"})
#: Names up to this many characters are kept whole; longer ones as a stand-in.
NAME_KEEP_CHARS = 4096
#: The mark that ends a name cut for showing.
CUT_MARK = "\u2026"


class NamedSkill(Protocol):
    """What :func:`find_skill` reads of a running skill."""

    @property
    def skill_id(self) -> str | None: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def skill_name(self) -> str | None: ...


S = TypeVar("S", bound=NamedSkill)


def name_of(value: Any) -> str | None:
    """A skill name field as the rules read it: a non-empty string, else absent.

    An empty ``skill_id`` names nothing (validation allows it): such an event is keyed
    and matched by its next field, as the web UI does.
    """
    return value if isinstance(value, str) and value else None


def skill_key(event: Mapping[str, Any]) -> str | None:
    """The key of the skill a ``skill_started`` (or a snapshot entry) starts."""
    for name in SKILL_KEYS:
        value = name_of(event.get(name))
        if value is not None:
            return value
    return None


def find_skill(running: Reversible[S], event: Mapping[str, Any]) -> S | None:
    """The running skill ``event`` names, oldest start first in ``running``."""
    for name in SKILL_KEYS:
        value = name_of(event.get(name))
        if value is None:
            continue
        for skill in reversed(running):
            if getattr(skill, name) == value:
                return skill
    return None


def name_ref(value: str) -> str:
    """``value`` if short, else ``start…#digest``: longer than any kept name, so no
    short name can equal it, and fixed in size (:data:`NAME_KEEP_CHARS` + 34)."""
    if len(value) <= NAME_KEEP_CHARS:
        return value
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16)
    return value[: NAME_KEEP_CHARS - 1] + CUT_MARK + "#" + digest.hexdigest()


def shown_name(ref: str | None) -> str | None:
    """The text to show for a ref: the name, or its start ending in the cut mark."""
    if ref is None or len(ref) <= NAME_KEEP_CHARS:
        return ref
    return ref[:NAME_KEEP_CHARS]


def event_refs(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """``event`` with its skill names as :func:`name_ref` gives them (itself if all short)."""
    for name in SKILL_KEYS:
        value = event.get(name)
        if isinstance(value, str) and len(value) > NAME_KEEP_CHARS:
            return {
                key: name_ref(v) if isinstance(v := event.get(key), str) else v
                for key in SKILL_KEYS
            }
    return event
