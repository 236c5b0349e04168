"""How events name a running skill (PROTOCOL §2.1), shared by the hub and the consoles.

A skill is keyed by the ``skill_id`` of its ``skill_started``, else its
``session_id``, else its ``skill_name``.  A later event finds it by the first of
those fields that it carries and that matches a running skill, the most recently
started match winning.  Pure functions over any objects with those three attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Reversible
from typing import Any, Protocol, TypeVar

SKILL_KEYS = ("skill_id", "session_id", "skill_name")


class NamedSkill(Protocol):
    """What :func:`find_skill` reads of a running skill."""

    @property
    def skill_id(self) -> str | None: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def skill_name(self) -> str | None: ...


S = TypeVar("S", bound=NamedSkill)


def skill_key(event: Mapping[str, Any]) -> str | None:
    """The key of the skill a ``skill_started`` (or a snapshot entry) starts."""
    for name in SKILL_KEYS:
        value = event.get(name)
        if isinstance(value, str):
            return value
    return None


def find_skill(running: Reversible[S], event: Mapping[str, Any]) -> S | None:
    """The running skill ``event`` names, oldest start first in ``running``."""
    for name in SKILL_KEYS:
        value = event.get(name)
        if not isinstance(value, str):
            continue
        for skill in reversed(running):
            if getattr(skill, name) == value:
                return skill
    return None
