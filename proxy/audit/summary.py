"""What shadow mode would have refused: the most frequent would-be refusals in an audit log.

Read by ``wicket audit summary`` and ``GET /v1/shadow`` before an operator switches a policy
from ``mode: shadow`` to enforcing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WOULD = ("would_deny", "would_require_approval")


@dataclass(frozen=True)
class ShadowSummary:
    decisions: int
    """Decision records read."""
    would: int
    """Of them, would-be refusals (shadow mode forwarded them)."""
    top: list[dict[str, Any]]
    """The most frequent (agent, action, would-be verdict, reason) groups, most frequent first."""

    def public(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "would_be_refused": self.would, "top": self.top}


def summarise(lines: Iterable[bytes], *, limit: int = 20) -> ShadowSummary:
    decisions = 0
    groups: Counter[tuple[str, str, str, str]] = Counter()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn last line: `wicket audit verify` reports it
        if not isinstance(event, dict) or event.get("event") != "decision":
            continue
        decisions += 1
        verdict = event.get("decision")
        if verdict in WOULD:
            key = (str(event.get("agent_id")), str(event.get("action")), str(verdict), str(event.get("reason")))
            groups[key] += 1
    top = [
        {"agent_id": agent, "action": action, "would": verdict, "reason": reason, "count": count}
        for (agent, action, verdict, reason), count in groups.most_common(limit)
    ]
    return ShadowSummary(decisions, sum(groups.values()), top)


def summarise_file(path: str | Path, *, limit: int = 20) -> ShadowSummary:
    with open(path, "rb") as handle:
        return summarise(handle, limit=limit)


def render(summary: ShadowSummary) -> str:
    lines = [f"{summary.would} of {summary.decisions} decisions would have been refused by enforcing"]
    for group in summary.top:
        lines.append(
            f"{group['count']:>6}  {group['would']:<22} {group['agent_id']:<16} {group['action']}: {group['reason']}"
        )
    return "\n".join(lines)
