"""Effect classification (SPEC §6): how much harm a named action can do.

A name is split into words and matched against fixed keyword tiers; the highest tier
wins and a name matching nothing is mutating, so an unknown tool fails safe. On top of
that sit per-tool policy overrides (first and final) and the upstream's MCP tool
annotations, which may raise a tier but lower it only for a trusted upstream.

Pure and synchronous: it runs on every call, so it does no I/O and caches its answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from proxy.core.action import Action, Effect

__all__ = ["CACHE_LIMIT", "KEYWORDS", "EffectClassifier", "classify_name", "tokenize"]

# One word per match; everything the pattern does not match (``_ - . /``, spaces, any
# other punctuation or non-ASCII character) separates words. Alternatives, in order:
#   an acronym directly before a capitalised word  (``HTTP`` in ``HTTPGet``),
#   an optionally capitalised lowercase run         (``get``, ``Delete``),
#   an upper-case run                               (``DELETE``, trailing ``HTTP``),
#   a bare digit run                                (``2`` in ``2fa``).
# Trailing digits stay on their word (``s3Delete`` -> s3, delete; ``ec2`` stays whole)
# rather than becoming words of their own. ASCII-only so ``\d``/case rules can't be
# bent by exotic Unicode digits or letters whose case mapping changes their length.
_WORD = re.compile(r"[A-Z]+[0-9]*(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+", re.ASCII)
_DIGITS = "0123456789"

_TIERS: dict[Effect, frozenset[str]] = {
    Effect.READ: frozenset({"get", "list", "read", "describe", "search", "view", "fetch", "query", "head"}),
    Effect.MUTATING: frozenset(
        {
            "write",
            "update",
            "create",
            "execute",
            "invoke",
            "modify",
            "send",
            "put",
            "post",
            "commit",
            "push",
            "deploy",
        }
    ),
    Effect.DESTRUCTIVE: frozenset({"delete", "drop", "destroy", "purge", "terminate", "remove", "truncate"}),
    # ``transfer_ownership`` is two words; it is matched as a pair in classify_name. The
    # glued single word (``transferownership``, ``TRANSFEROWNERSHIP``) is listed here so
    # losing the separator can't drop an admin action to mutating.
    Effect.ADMIN: frozenset({"admin", "revoke", "escalate", "grant", "impersonate", "transferownership"}),
}

KEYWORDS: Mapping[str, Effect] = {word: effect for effect, words in _TIERS.items() for word in words}
"""Single-word keyword -> tier. (The two-word ``transfer ownership`` is matched separately.)"""

CACHE_LIMIT = 10_000
"""Classifier cache entries kept before the cache is dropped wholesale."""

_MAX_CACHED_NAME = 256
"""Longer names are classified but not cached, so the bounded cache is also bounded in bytes."""


def tokenize(name: str) -> tuple[str, ...]:
    """Split ``name`` into lower-cased words at ``_ - . /``, spaces and camelCase boundaries."""
    return tuple(word.lower() for word in _WORD.findall(name))


def classify_name(name: str) -> Effect:
    """The SPEC §6 keyword rule alone: highest matching tier wins, no match is MUTATING.

    A word also matches through its letters with trailing digits removed, so a version
    suffix can't hide a keyword (``delete2``, ``getV2`` stays read via ``get``).
    """
    best: Effect | None = None
    previous = ""
    for word in _WORD.findall(name):
        word = word.lower()
        stem = word.rstrip(_DIGITS)
        effect = KEYWORDS.get(word)
        if effect is None and stem != word:
            effect = KEYWORDS.get(stem)
        if effect is None and stem == "ownership" and previous == "transfer":
            effect = Effect.ADMIN
        if effect is Effect.ADMIN:
            return effect  # nothing outranks admin
        if effect is not None and (best is None or effect > best):
            best = effect
        previous = stem
    return Effect.MUTATING if best is None else best


def _explicit_hint(annotations: Mapping[str, Any] | None, key: str) -> bool | None:
    """A hint's value only if the upstream actually sent a JSON boolean for it."""
    if not isinstance(annotations, Mapping):
        return None
    value = annotations.get(key)
    return value if isinstance(value, bool) else None


class EffectClassifier:
    """Classifies Actions: fixed effect, then policy override, then keywords adjusted by annotations.

    Only annotation hints the upstream sent *explicitly* count. MCP's defaults are not
    applied: ``destructiveHint`` defaults to true, so applying it would make every
    annotated tool destructive. The hints:

    * ``readOnlyHint: true`` suggests READ (``destructiveHint`` is then meaningless, per MCP);
    * ``readOnlyHint: false`` suggests at least MUTATING;
    * ``destructiveHint: true`` suggests DESTRUCTIVE;
    * ``destructiveHint: false`` suggests at most MUTATING.

    A hint may always raise the tier, since believing a server that says its tool is more
    dangerous costs only friction. It may lower the tier only when ``is_trusted_upstream``
    says so, or an operator accepted this tool's pinned definition (``annotations_trusted``),
    because an untrusted server could otherwise label ``delete_all`` read-only.
    ADMIN is never lowered, even for a trusted upstream: there is no admin hint in MCP, so
    a hint that a tool is "not destructive" says nothing about admin powers.

    Results are cached per (name, upstream, readOnlyHint, destructiveHint, trusted). Call
    :meth:`clear` whenever ``overrides`` or ``is_trusted_upstream`` change (policy reload)
    or an upstream's tools change (``tools/list_changed``).
    """

    __slots__ = ("_cache", "_max_cache", "is_trusted_upstream", "overrides")

    def __init__(
        self,
        overrides: Callable[[str], Effect | None] = lambda n: None,
        is_trusted_upstream: Callable[[str], bool] = lambda u: False,
        *,
        max_cache: int = CACHE_LIMIT,
    ) -> None:
        self.overrides = overrides
        self.is_trusted_upstream = is_trusted_upstream
        self._max_cache = max_cache
        self._cache: dict[tuple[str, str, bool | None, bool | None, bool], Effect] = {}

    def classify(self, action: Action) -> Effect:
        """The effect of ``action``; see the class docstring for the order of rules."""
        if action.fixed_effect is not None:
            return action.fixed_effect
        return self.tool_effect(action.name, action.upstream, action.annotations, trusted=action.annotations_trusted)

    def tool_effect(
        self, name: str, upstream: str, annotations: Mapping[str, Any] | None, *, trusted: bool = False
    ) -> Effect:
        """The effect of calling tool ``name`` of ``upstream`` with these annotations; ``trusted``:
        an operator accepted them, so they may lower the tier."""
        read_only = _explicit_hint(annotations, "readOnlyHint")
        destructive = _explicit_hint(annotations, "destructiveHint")
        key = (name, upstream, read_only, destructive, trusted)
        effect = self._cache.get(key)
        if effect is not None:
            return effect
        effect = self._classify(name, upstream, read_only, destructive, trusted)
        if len(name) <= _MAX_CACHED_NAME:
            if len(self._cache) >= self._max_cache:
                # A client inventing names must not grow memory without bound; dropping
                # everything is cheaper than LRU bookkeeping and refills in a few calls.
                self._cache.clear()
            self._cache[key] = effect
        return effect

    def clear(self) -> None:
        """Forget every cached answer (policy reload, ``tools/list_changed``)."""
        self._cache.clear()

    def __len__(self) -> int:
        """Cached entries; for tests and diagnostics."""
        return len(self._cache)

    def explain(self, action: Action) -> tuple[Effect, str]:
        """The effect of ``action`` and the rule that set it, in words (``wicket policy explain``).

        Uncached and not on the hot path; ``classify`` gives the same effect."""
        if action.fixed_effect is not None:
            fixed = action.fixed_effect
            return fixed, f"fixed by the protocol: '{action.method}' is always {fixed.label}"
        read_only = _explicit_hint(action.annotations, "readOnlyHint")
        destructive = _explicit_hint(action.annotations, "destructiveHint")
        return self._explained(action.name, action.upstream, read_only, destructive, action.annotations_trusted)

    def _classify(
        self, name: str, upstream: str, read_only: bool | None, destructive: bool | None, operator_trusted: bool
    ) -> Effect:
        return self._explained(name, upstream, read_only, destructive, operator_trusted)[0]

    def _explained(
        self, name: str, upstream: str, read_only: bool | None, destructive: bool | None, operator_trusted: bool
    ) -> tuple[Effect, str]:
        override = self.overrides(name)
        if override is not None:
            return override, f"policy effects override for '{name}'"
        effect = classify_name(name)
        words = [w for w in tokenize(name) if w.rstrip(_DIGITS) in KEYWORDS or w in KEYWORDS]
        source = (
            f"name keyword {', '.join(repr(w) for w in words)} in '{name}'"
            if words
            else f"no keyword in '{name}': unknown names are mutating"
        )
        if effect is Effect.ADMIN or (read_only is None and destructive is None):
            return effect, source
        trusted = self.is_trusted_upstream(upstream)
        if read_only is True:
            # READ can only lower; it is never a raise.
            if operator_trusted:
                return Effect.READ, "annotation readOnlyHint: true, trusted by an operator for this pinned definition"
            if trusted:
                return Effect.READ, f"annotation readOnlyHint: true from trusted upstream {upstream}"
            return effect, f"{source}; readOnlyHint: true ignored (upstream {upstream} is not trusted to lower effects)"
        if destructive is True and effect < Effect.DESTRUCTIVE:
            effect, source = Effect.DESTRUCTIVE, f"annotation destructiveHint: true raised it ({source})"
        elif read_only is False and effect < Effect.MUTATING:
            effect, source = Effect.MUTATING, f"annotation readOnlyHint: false raised it ({source})"
        if destructive is False and effect > Effect.MUTATING and (trusted or operator_trusted):
            effect, source = Effect.MUTATING, "annotation destructiveHint: false from a trusted upstream or definition"
        return effect, source
