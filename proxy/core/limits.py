"""Rate limits and quotas from policy ``limits:``: which apply to a call, and under which counter.

Pure: the counting itself is the store's sliding-window ``take`` (one atomic Lua script on
Redis, so replicas share a limit instead of multiplying it). ``rate: N/minute`` allows N
calls in any sliding minute; ``burst: B`` allows B calls in any window of B/N minutes, which
averages the same N per minute while letting B through at once. ``quota: N/day`` allows N
calls in any sliding 24 hours.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy.core.action import Action, Effect

PERIODS: Final = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
RATE = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(second|minute|hour|day)\s*$")
PER: Final = ("agent", "session", "tool")


@dataclass(frozen=True, slots=True)
class Window:
    """One counter of a limit: at most ``limit`` calls per ``seconds`` (sliding)."""

    name: str  # "rate" | "quota"
    limit: int
    seconds: float
    text: str  # as the policy wrote it, for the reason


@dataclass(frozen=True, slots=True)
class Limit:
    """One ``limits`` entry."""

    index: int
    agents: tuple[str, ...]
    tools: tuple[str, ...]
    effects: frozenset[Effect]
    per: str
    windows: tuple[Window, ...]

    @property
    def label(self) -> str:
        """How a reason names the limit: ``limits[0] (rate 5/minute per agent, tools send_*)``."""
        what = ", ".join(f"{w.name} {w.text}" for w in self.windows)
        scope = []
        if self.tools != ("*",):
            scope.append("tools " + "|".join(self.tools))
        if self.effects:
            scope.append("effects " + "|".join(sorted(e.label for e in self.effects)))
        if self.agents != ("*",):
            scope.append("agents " + "|".join(self.agents))
        return f"limits[{self.index}] ({what} per {self.per}{'; ' + '; '.join(scope) if scope else ''})"

    def applies(self, agent_id: str, tool: str, effect: Effect) -> bool:
        return (
            any(fnmatch.fnmatchcase(agent_id, g) for g in self.agents)
            and any(fnmatch.fnmatchcase(tool, g) for g in self.tools)
            and (not self.effects or effect in self.effects)
        )

    def counter(self, action: Action) -> str:
        """The store scope this call counts under: one per agent, session or (agent, tool)."""
        if self.per == "session":
            subject = "s:" + action.session_id
        elif self.per == "tool":
            subject = "t:" + action.agent_id + "\x00" + action.name
        else:
            subject = "a:" + action.agent_id
        return "lim:" + hashlib.sha256(subject.encode()).hexdigest()[:32]


def window(name: str, text: str, burst: int | None = None) -> Window:
    """``5/minute`` (with an optional burst) as a sliding window."""
    match = RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not N/second|minute|hour|day")
    count, period = int(match.group(1)), PERIODS[match.group(2)]
    if burst is None or burst == count:
        return Window(name, count, period, text.strip())
    return Window(name, burst, period * burst / count, f"{text.strip()} burst {burst}")


def entries(block: Any) -> list[Mapping[str, Any]]:
    """The rate-limit entries of one file's ``limits``: the list itself, or the ``rules`` of the
    mapping form (whose other keys are fair-sharing caps)."""
    if isinstance(block, list):
        return block
    if isinstance(block, dict):
        return list(block.get("rules") or ())
    return []


def parse(entries: Iterable[Mapping[str, Any]]) -> tuple[Limit, ...]:
    """The schema-validated ``limits`` entries of all files, in order."""
    out: list[Limit] = []
    for index, entry in enumerate(entries):
        match = entry.get("match") or {}
        windows: list[Window] = []
        if "rate" in entry:
            windows.append(window("rate", entry["rate"], entry.get("burst")))
        if "quota" in entry:
            windows.append(window("quota", entry["quota"]))
        out.append(
            Limit(
                index=index,
                agents=tuple(match.get("agents", ("*",))),
                tools=tuple(match.get("tools", ("*",))),
                effects=frozenset(Effect.parse(e) for e in match.get("effects", ())),
                per=entry.get("per", "agent"),
                windows=tuple(windows),
            )
        )
    return tuple(out)


def applicable(limits: Sequence[Limit], action: Action, effect: Effect) -> list[Limit]:
    return [limit for limit in limits if limit.applies(action.agent_id, action.name, effect)]


def reason(limit: Limit, window: Window, retry_after: float) -> str:
    return (
        f"Rate limit exceeded: {limit.label} allows {window.limit} calls per {_seconds(window.seconds)}; "
        f"retry after {retry_after:.0f} s."
    )


def _seconds(seconds: float) -> str:
    for name, length in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= length and seconds % length == 0:
            count = int(seconds // length)
            return name if count == 1 else f"{count} {name}s"
    return f"{seconds:g} s"
