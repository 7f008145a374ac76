"""Glob sets for tool names: compiled once at policy load, matched on every call."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


class GlobSet:
    """A set of case-sensitive shell-style globs (``get_*``, ``db.*``), matched as one regex.

    Compiling the whole set into a single alternation keeps a match to one C-level scan,
    which matters because capability and blocklist checks run on every tool call.
    """

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        if self.patterns:
            self._regex: re.Pattern[str] | None = re.compile(
                "|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns)
            )
        else:
            self._regex = None

    def matches(self, name: str) -> bool:
        return self._regex is not None and self._regex.match(name) is not None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __or__(self, other: GlobSet) -> GlobSet:
        return GlobSet(self.patterns + other.patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GlobSet) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"GlobSet({list(self.patterns)!r})"
