"""Client type filters: ``fnmatch`` globs over event types (PROTOCOL.md §2, §2.2).

A :class:`TypeFilter` is built from the ``types=`` query parameter or a ``subscribe``
message and asked once per event per client, so it compiles its globs into one regex
and remembers its answers per type.  Pure; no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

__all__ = ["TypeFilter"]

# Distinct types remembered per filter before the memo is cleared.  Event types are
# few in practice; the bound only stops a source inventing types from growing it.
_MEMO_MAX = 1024


class TypeFilter:
    """Which event types one client wants.

    Args:
        globs: ``fnmatch.fnmatchcase`` patterns (case-sensitive); a type matches when
            any pattern does.  No pattern at all means every type.

    Attributes:
        globs: the patterns, in the order given.
    """

    __slots__ = ("_memo", "_regex", "globs")

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs: tuple[str, ...] = tuple(globs)
        self._memo: dict[str, bool] = {}
        self._regex: re.Pattern[str] | None
        if not self.globs or "*" in self.globs:
            self._regex = None  # match everything: no regex, no memo
        else:
            # fnmatch.translate() gives "(?s:...)\Z" per glob: exactly fnmatchcase.
            self._regex = re.compile("|".join(fnmatch.translate(glob) for glob in self.globs))

    @classmethod
    def from_query(cls, value: str | None) -> TypeFilter:
        """Build a filter from a ``types=`` query value such as ``"skill_*,heal_*"``.

        Comma-separated; surrounding whitespace and empty items are ignored; ``None`` or
        an empty value means every type.
        """
        if not value:
            return cls(())
        return cls(item for item in (part.strip() for part in value.split(",")) if item)

    @property
    def matches_all(self) -> bool:
        """True when this filter lets every type through."""
        return self._regex is None

    def matches(self, event_type: str) -> bool:
        """Return whether an event of ``event_type`` should reach this client."""
        regex = self._regex
        if regex is None:
            return True
        memo = self._memo
        answer = memo.get(event_type)
        if answer is None:
            answer = regex.match(event_type) is not None
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[event_type] = answer
        return answer

    def __repr__(self) -> str:
        return f"TypeFilter({list(self.globs)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TypeFilter):
            return NotImplemented
        return self.globs == other.globs

    def __hash__(self) -> int:
        return hash(self.globs)
