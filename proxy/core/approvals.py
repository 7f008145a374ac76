"""Just-in-time elevation (SPEC §8): approval requests, operator decisions, and the elevations they grant.

A write in a read-only session is not a dead end: the decision becomes ``approval_required``
with an ``approval_id`` the agent can hand to a human. An operator approves or denies it; an
approval grants an elevation for exactly the requested actions, for at most 300 s, after
which the session is read-only again. Admin actions and anonymous sessions are never elevated.

This module is the model and the pure rules; ``approval_store.py`` keeps the records in the
shared Store. Elevations are records of their own: the session record is never touched, so its
ceiling stays immutable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from proxy.core.action import Effect
from proxy.core.sessions import Session

APPROVAL_PREFIX = "apr_"
MAX_INTENT = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")

Status = Literal["pending", "approved", "denied", "expired"]
STATUSES: tuple[Status, ...] = ("pending", "approved", "denied", "expired")


def rfc3339(ts: float | None) -> str | None:
    """RFC 3339 UTC with seconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_approval_id() -> str:
    return APPROVAL_PREFIX + secrets.token_hex(12)


def clean_intent(text: str | None) -> str | None:
    """The agent's stated reason as one bounded line: untrusted text shown to a human approver."""
    if not isinstance(text, str):
        return None
    cleaned = _CONTROL.sub(" ", text).strip()
    if not cleaned:
        return None
    return cleaned if len(cleaned) <= MAX_INTENT else cleaned[: MAX_INTENT - 3] + "..."


class ApprovalError(Exception):
    """An operator's decision cannot be applied: ``status`` is 404 (unknown) or 409 (expired, decided)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One request for elevation. ``reason`` is what the agent said it needs the action for."""

    approval_id: str
    agent_id: str
    session_id: str
    actions: tuple[str, ...]
    effect: str
    reason: str | None
    status: Status
    created_at: float
    expires_at: float
    decision_id: str | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    elevation_expires_at: float | None = None
    arguments_sha256: str | None = None
    """Set for a call-bound request: the approval covers only a call with exactly these arguments."""
    arguments: Any = None
    """The call's arguments with secrets redacted, for the approver (never used to decide anything)."""
    why: str | None = None
    """Why the call needs approval: the guardian's reason, anomaly escalation figures included."""

    @property
    def binding(self) -> str:
        return "tool" if self.arguments_sha256 is None else "call"

    def current_status(self, now: float) -> Status:
        """A pending request past its expiry is expired, whether or not anyone wrote that down."""
        if self.status == "pending" and now >= self.expires_at:
            return "expired"
        return self.status

    def stored(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "actions": list(self.actions)}

    @classmethod
    def from_stored(cls, record: Mapping[str, Any]) -> ApprovalRequest:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in record.items() if k in fields}
        data["actions"] = tuple(record["actions"])
        return cls(**data)

    def public(self, now: float) -> dict[str, Any]:
        """The record as the API, the console and the webhook show it (RFC 3339 times, null when unknown)."""
        return {
            "approval_id": self.approval_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "actions": list(self.actions),
            "effect": self.effect,
            "reason": self.reason,
            "why": self.why,
            "binding": self.binding,
            "arguments": self.arguments,
            "arguments_sha256": self.arguments_sha256,
            "status": self.current_status(now),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "decided_by": self.decided_by,
            "decided_at": rfc3339(self.decided_at),
            "elevation_expires_at": rfc3339(self.elevation_expires_at),
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """One action an approval elevated, until when, and which approval did it.

    A call-bound grant (``arguments_sha256`` set) covers only a call with exactly those arguments.
    """

    action: str
    expires_at: float
    approval_id: str
    arguments_sha256: str | None = None

    @property
    def key(self) -> str:
        return grant_key(self.action, self.arguments_sha256)


def grant_key(action: str, arguments_sha256: str | None) -> str:
    """How ``Elevation.active`` names a grant: the action label, plus ``#<sha256>`` when call-bound."""
    return action if arguments_sha256 is None else f"{action}#{arguments_sha256}"


def covers(active: frozenset[str], action: str, arguments_sha256: str) -> bool:
    """Whether the running grants ``active`` cover this call (tool-wide, or bound to these arguments)."""
    return action in active or f"{action}#{arguments_sha256}" in active


@dataclass(frozen=True, slots=True)
class Elevation:
    """Everything currently elevated in one session (a separate record: the session stays untouched)."""

    session_id: str
    grants: tuple[Grant, ...] = ()

    def active(self, now: float) -> frozenset[str]:
        """The keys (``grant_key``) of the grants running now."""
        return frozenset(g.key for g in self.grants if g.expires_at > now)

    def expires_at(self, now: float) -> float | None:
        """When the last running grant ends (None: nothing is elevated now)."""
        return max((g.expires_at for g in self.grants if g.expires_at > now), default=None)

    def stored(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "grants": [dataclasses.asdict(g) for g in self.grants]}

    @classmethod
    def from_stored(cls, record: Mapping[str, Any]) -> Elevation:
        grants = tuple(
            Grant(str(g["action"]), float(g["expires_at"]), str(g["approval_id"]), g.get("arguments_sha256"))
            for g in record["grants"]
        )
        return cls(str(record["session_id"]), grants)

    def public(self, now: float) -> dict[str, Any] | None:
        """``{"actions", "expires_at"}`` of what is elevated now, or None."""
        active = self.active(now)
        if not active:
            return None
        return {
            "actions": sorted({g.action for g in self.grants if g.expires_at > now}),
            "expires_at": rfc3339(self.expires_at(now)),
        }


# -- the pure rules ---------------------------------------------------------------------------


def never_elevated(effect: Effect, session: Session) -> str | None:
    """Why no approval may be requested for this action in this session, or None."""
    if effect is Effect.ADMIN:
        return (
            "Admin actions are never elevated, so no approval can be requested for this one: an operator can "
            "perform it themselves, or configure Deep Guard (ANTHROPIC_API_KEY) and give the agent a read-write "
            "session (wicket sessions create --mode read-write)."
        )
    if session.origin == "anonymous":
        return (
            "Anonymous sessions are never elevated: ask the operator for a runtime token "
            "(wicket sessions create) and request approval from that session."
        )
    return None


def instructions(approval_id: str, expires_at: float) -> str:
    """What the agent should do next, in words an LLM can act on."""
    return (
        f"Approval {approval_id} is pending: ask an operator to approve {approval_id} "
        f"(wicket approvals approve {approval_id}), then retry the same call. "
        f"The request expires at {rfc3339(expires_at)}."
    )


def denied_before(request: ApprovalRequest) -> str:
    """Why an identical retry of a call an operator refused gets a denial, not a fresh request."""
    return (
        f"An operator ({request.decided_by}) denied approval {request.approval_id} for this call at "
        f"{rfc3339(request.decided_at)}; the same request cannot be raised again until {rfc3339(request.expires_at)}. "
        "Do not retry this call."
    )


def decided(
    request: ApprovalRequest, *, approve: bool, approver: str, now: float, elevation_until: float | None
) -> ApprovalRequest:
    """The request after an operator's decision; raises ApprovalError when it can no longer be decided."""
    status = request.current_status(now)
    if status == "expired":
        raise ApprovalError(
            409,
            f"Approval request {request.approval_id} expired at {rfc3339(request.expires_at)} without an answer; "
            "nothing was elevated. The agent gets a new request by retrying its call.",
        )
    if status != "pending":
        raise ApprovalError(
            409,
            f"Approval request {request.approval_id} was already {status} by {request.decided_by} "
            f"at {rfc3339(request.decided_at)}.",
        )
    return dataclasses.replace(
        request,
        status="approved" if approve else "denied",
        decided_by=approver,
        decided_at=now,
        elevation_expires_at=elevation_until if approve else None,
    )


def merge_grants(current: Elevation | None, session_id: str, request: ApprovalRequest, now: float) -> Elevation:
    """Add an approval's actions to a session's elevation, dropping grants that have ended.

    A later approval for the same action can only extend its grant, never cut a running one short.
    """
    until = request.elevation_expires_at
    assert until is not None  # only approved requests grant anything
    kept: dict[str, Grant] = {}
    for grant in current.grants if current is not None else ():
        if grant.expires_at > now:
            kept[grant.key] = grant
    for action in request.actions:
        grant = Grant(action, until, request.approval_id, request.arguments_sha256)
        existing = kept.get(grant.key)
        if existing is None or existing.expires_at < until:
            kept[grant.key] = grant
    return Elevation(session_id, tuple(sorted(kept.values(), key=lambda g: g.key)))


def request_key(approval_id: str) -> str:
    return f"wicket:approval:{approval_id}"


def pending_key(session_id: str, actions: Sequence[str], arguments_sha256: str | None = None) -> str:
    """Where a session's open request for exactly these actions (and, call-bound, these arguments) is
    found, so retries neither spam new requests nor re-open a denied one."""
    material = "\0".join(sorted(actions)) + ("" if arguments_sha256 is None else "#" + arguments_sha256)
    digest = hashlib.sha256(material.encode()).hexdigest()[:32]
    return f"wicket:{{{session_id}}}:apr:{digest}"


def elevation_key(session_id: str) -> str:
    return f"wicket:{{{session_id}}}:elevation"


def approver_identity(credential_fingerprint: str, name: str | None) -> dict[str, str]:
    """How a decision names its approver: the operator credential's fingerprint, plus a name if given."""
    credential = f"operator:{credential_fingerprint[:12]}"
    out = {"credential": credential, "decided_by": f"{name} ({credential})" if name else credential}
    if name:
        out["name"] = name
    return out
