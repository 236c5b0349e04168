"""Client type filters: ``fnmatch`` globs over event types (PROTOCOL.md §2, §2.2).

A glob that starts with ``!`` excludes: a type passes when it matches at least one plain
glob (or there is none) and no ``!`` glob, so ``!step_*`` is everything but steps.  The
web UI's filter box (``static/app.js``) follows the same rules
(``tests/fixtures/type_filters.json``).

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
            any plain pattern does (or there is none) and no ``!`` pattern does.  No
            pattern at all means every type; a bare ``!`` excludes nothing.

    Attributes:
        globs: the patterns, in the order given.
    """

    __slots__ = ("_exclude", "_memo", "_regex", "globs")

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs: tuple[str, ...] = tuple(globs)
        self._memo: dict[str, bool] = {}
        include = [glob for glob in self.globs if not glob.startswith("!")]
        exclude = [glob[1:] for glob in self.globs if glob.startswith("!") and len(glob) > 1]
        # No plain glob, or "*" among them, lets every type in before the exclusions.
        self._regex = None if not include or "*" in include else _compile(include)
        self._exclude = _compile(exclude) if exclude else None

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
        return self._regex is None and self._exclude is None

    def matches(self, event_type: str) -> bool:
        """Return whether an event of ``event_type`` should reach this client."""
        regex, exclude = self._regex, self._exclude
        if regex is None and exclude is None:
            return True
        memo = self._memo
        answer = memo.get(event_type)
        if answer is None:
            answer = (regex is None or regex.match(event_type) is not None) and (
                exclude is None or exclude.match(event_type) is None
            )
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


def _compile(globs: list[str]) -> re.Pattern[str]:
    # fnmatch.translate() gives "(?s:...)\Z" per glob: exactly fnmatchcase.
    return re.compile("|".join(fnmatch.translate(glob) for glob in globs))
