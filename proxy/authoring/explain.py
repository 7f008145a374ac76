"""``wicket policy explain`` and ``wicket audit show``: every step behind a decision, in words."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from proxy.authoring.harness import Explanation


def render(explanation: Explanation) -> str:
    """The decision and each step that produced it, one per line."""
    e = explanation
    action, session, report = e.action, e.session, e.report
    lines = [f"action:     {action.label} (protocol {action.protocol}, upstream {action.upstream})"]
    lines.append(f"effect:     {e.effect.label}, from {e.effect_source}")
    if report.findings:
        for finding in report.findings:
            lines.append(f"arguments:  {finding.detector}: {finding.message} (raises to {finding.effect.label})")
    elif action.is_tool_call:
        lines.append("arguments:  no findings")
    for violation in report.violations:
        lines.append(f"arguments:  breaks a policy constraint: {violation}")
    scope = ", ".join(session.scope) or "(nothing)"
    lines.append(f"session:    agent {session.agent_id}, {session.mode}, scope ceiling [{scope}]")
    lines.append(f"history:    {e.activity_note}")
    if e.decision.escalated_from is not None:
        lines.append(
            f"anomaly:    raised from {e.decision.escalated_from.label} to {e.decision.effect.label} "
            "(anomaly escalation)"
        )
    for step in e.steps:
        confidence = "" if step.confidence is None else f" (confidence {step.confidence:g})"
        lines.append(f"{step.tier + ':':<11} {step.verdict}{confidence}: {step.reason}")
    consulted = {step.tier for step in e.steps}
    for tier in ("spot", "deep"):
        if tier not in consulted:
            lines.append(f"{tier + ':':<11} not consulted")
    lines.append(f"decision:   {json.dumps(e.decision.record(), sort_keys=True)}")
    return "\n".join(lines)


def find_decision(path: str | Path, decision_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The decision record with this id and every later event that refers to it (outcome, approval)."""
    found: dict[str, Any] | None = None
    related: list[dict[str, Any]] = []
    approval_id: str | None = None
    for event in _events(path):
        if found is None:
            if event.get("event") == "decision" and event.get("decision_id") == decision_id:
                found = event
                approval_id = event.get("approval_id")
            continue
        if event.get("decision_id") == decision_id or (approval_id and event.get("approval_id") == approval_id):
            related.append(event)
    return found, related


def render_recorded(record: Mapping[str, Any], related: Iterable[Mapping[str, Any]]) -> str:
    """A past decision as the audit log holds it: what was decided, why, and what happened next."""
    lines = [
        f"decision:   {record.get('decision_id')} at {record.get('ts')} (audit seq {record.get('seq')})",
        f"action:     {record.get('action')} (protocol {record.get('protocol')}, upstream {record.get('upstream')})",
        f"caller:     agent {record.get('agent_id')}, session {record.get('session_id')}",
    ]
    effect = f"effect:     {record.get('effect')}"
    if record.get("escalated_from"):
        effect += f" (raised from {record['escalated_from']} by anomaly escalation)"
    lines.append(effect)
    verdict = f"verdict:    {record.get('decision')} by the {record.get('tier')} tier"
    if record.get("mode") == "shadow":
        verdict += " (shadow mode: the call was forwarded)"
    lines.append(verdict + f", confidence {record.get('confidence')}")
    lines.append(f"reason:     {record.get('reason')}")
    if record.get("arguments_sha256"):
        lines.append(f"arguments:  sha256 {record['arguments_sha256']} (values are never audited)")
    if record.get("approval_id"):
        lines.append(f"approval:   {record['approval_id']}")
    for event in related:
        kind = event.get("event")
        detail = event.get("status") or event.get("outcome") or event.get("decision") or ""
        extra = f" by {event['decided_by']}" if event.get("decided_by") else ""
        lines.append(f"then:       {kind} {detail}{extra} at {event.get('ts')} (seq {event.get('seq')})".rstrip())
    return "\n".join(lines)


def _events(path: str | Path) -> Iterable[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line; `wicket audit verify` reports it
            if isinstance(event, dict):
                yield event
