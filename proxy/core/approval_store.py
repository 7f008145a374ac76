"""Approval requests and elevations in the shared Store: create, reuse, decide, look up.

The model and rules are in ``approvals.py``; this is their persistence. Every record is signed
with the session ``RecordSigner`` and bound to its key, so one edited (or copied) inside
Redis is refused rather than trusted, and every change is a compare-and-set, so replicas and
operators racing on one record cannot both win.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from proxy.core.action import Action, Decision, Verdict
from proxy.core.approvals import (
    APPROVAL_PREFIX,
    ApprovalError,
    ApprovalRequest,
    Elevation,
    clean_intent,
    decided,
    denied_before,
    elevation_key,
    instructions,
    merge_grants,
    never_elevated,
    new_approval_id,
    pending_key,
    request_key,
    rfc3339,
)
from proxy.core.policy import ApprovalSettings
from proxy.core.sessions import RecordSigner, Session, SessionIntegrityError, SessionManager
from proxy.guardians.redact import redact
from proxy.state.base import Store, StoreUnavailable
from proxy.telemetry import Metrics

log = logging.getLogger(__name__)

INDEX = "wicket:index:approvals"
INDEX_LIMIT = 500
RETENTION_SECONDS = 3600.0
"""How long a decided or expired request stays readable (listings, ``GET /v1/approvals/{id}``)."""
_CAS_ATTEMPTS = 8


class ApprovalNotifier(Protocol):
    """Told about every new request (the webhook). Must return at once: it is on the decision path."""

    def notify(self, record: dict[str, Any]) -> None: ...


AuditWriter = Callable[[dict[str, Any]], Awaitable[None]]
"""Appends one audit event; raises ``AuditUnavailable`` when it cannot."""


class Approvals:
    """Approval requests and elevations through a Store: create, reuse, decide, look up."""

    _VERIFIED_MAX = 10_000

    def __init__(
        self,
        store: Store,
        signer: RecordSigner,
        sessions: SessionManager,
        settings: ApprovalSettings,
        *,
        audit: AuditWriter,
        metrics: Metrics | None = None,
        notifier: ApprovalNotifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._signer = signer
        self._sessions = sessions
        self.settings = settings
        self._audit = audit
        self._metrics = metrics
        self.notifier = notifier
        self._clock = clock
        self._verified: dict[str, tuple[bytes, Elevation]] = {}
        self._granted: dict[tuple[str, str], float] = {}  # (session, action) -> end, for the gauge
        if metrics is not None:
            metrics.elevations_active.set_function(self._running_grants)

    # -- the checker's side --------------------------------------------------------------------

    async def elevated(self, session_id: str) -> frozenset[str]:
        """The action labels elevated in this session right now: one store read, verified.

        A record that fails its integrity check elevates nothing (fail closed).
        """
        key = elevation_key(session_id)
        raw = await self._store.get(key)
        if raw is None:
            self._verified.pop(key, None)
            return frozenset()
        try:
            elevation = self._decode_elevation(key, raw, session_id)
        except SessionIntegrityError as exc:
            log.warning("elevation record ignored: %s", exc)
            if self._metrics is not None:
                self._metrics.integrity_failures.inc()
            return frozenset()
        return elevation.active(self._clock())

    async def grant_id(self, session_id: str, label: str, arguments_sha256: str) -> str | None:
        """The approval id of the running grant that covers this call (``label``, tool-wide or bound
        to these arguments) in this session, or None: what a one-call pass, such as a toxic flow's,
        is keyed on. One verified store read."""
        key = elevation_key(session_id)
        raw = await self._store.get(key)
        if raw is None:
            return None
        try:
            elevation = self._decode_elevation(key, raw, session_id)
        except SessionIntegrityError as exc:
            log.warning("elevation record ignored: %s", exc)
            return None
        now = self._clock()
        running = [
            g
            for g in elevation.grants
            if g.action == label and g.expires_at > now and g.arguments_sha256 in (None, arguments_sha256)
        ]
        return max(running, key=lambda g: g.expires_at).approval_id if running else None

    async def request(
        self, action: Action, session: Session, decision: Decision, digest: str | None = None
    ) -> Decision:
        """Turn an ``approval_required`` decision into one that names a pending request.

        Admin actions and anonymous sessions get a plain deny instead. A retry of the same
        action while its request is pending gets the same ``approval_id`` back; one the operator
        denied gets the denial until the request would have expired. Policy decides per effect
        whether the request is bound to this call's exact arguments (their ``digest``, computed when not given).
        """
        refusal = never_elevated(decision.effect, session)
        if refusal is not None:
            self._count("refused")
            return dataclasses.replace(
                decision, verdict=Verdict.DENY, approval_id=None, reason=f"{decision.reason} {refusal}"
            )
        actions = (action.label,)
        bound: str | None = None
        if self.settings.call_bound(decision.effect):
            bound = digest if digest is not None else action.arguments_sha256
        key = pending_key(session.session_id, actions, bound)
        for _ in range(_CAS_ATTEMPTS):
            now = self._clock()
            raw_id = await self._store.get(key)
            if raw_id is not None:
                existing = await self._open(raw_id.decode(errors="replace"), session, actions, bound, now)
                if existing is not None and existing.current_status(now) == "denied":
                    self._count("refused")
                    return dataclasses.replace(
                        decision,
                        verdict=Verdict.DENY,
                        approval_id=None,
                        reason=f"{decision.reason} {denied_before(existing)}",
                    )
                if existing is not None and existing.current_status(now) == "pending":
                    self._count("reused")
                    return self._pending(decision, existing.approval_id, existing.expires_at)
            request = ApprovalRequest(
                approval_id=new_approval_id(),
                agent_id=session.agent_id,
                session_id=session.session_id,
                actions=actions,
                effect=decision.effect.label,
                reason=clean_intent(action.intent),
                status="pending",
                created_at=now,
                expires_at=now + self.settings.request_ttl_seconds,
                decision_id=decision.decision_id,
                arguments_sha256=bound,
                arguments=redact(dict(action.arguments), max_depth=6, max_string=500, max_items=50),
                why=decision.reason,
            )
            ttl = float(self.settings.request_ttl_seconds)
            # The record first, then the claim: a claimed id always has its record behind it.
            await self._save(request, ttl + RETENTION_SECONDS)
            if not await self._store.compare_and_set(key, raw_id, request.approval_id.encode(), ttl):
                await self._store.delete(request_key(request.approval_id))
                continue  # another replica raised the same request just now: reuse theirs
            await self._store.index_add(INDEX, request.approval_id, now, INDEX_LIMIT)
            await self._audit_quietly(self._event("requested", request, protocol=action.protocol))
            self._count("requested")
            if self.notifier is not None:
                self.notifier.notify(request.public(now))
            return self._pending(decision, request.approval_id, request.expires_at)
        raise StoreUnavailable("the approval request kept changing under concurrent writers; retry the call")

    async def _open(
        self, approval_id: str, session: Session, actions: tuple[str, ...], bound: str | None, now: float
    ) -> ApprovalRequest | None:
        """The request this retry belongs to (pending, or denied and not yet expired), or None to raise a new one."""
        try:
            existing = await self.get(approval_id)
        except SessionIntegrityError as exc:
            log.warning("approval record ignored: %s", exc)
            return None
        if existing is None:
            return None  # records are written before they are claimed: this one is gone
        if (
            existing.session_id != session.session_id
            or existing.actions != actions
            or existing.arguments_sha256 != bound
            or now >= existing.expires_at
        ):
            return None
        return existing

    def _pending(self, decision: Decision, approval_id: str, expires_at: float) -> Decision:
        return dataclasses.replace(
            decision, approval_id=approval_id, reason=f"{decision.reason} {instructions(approval_id, expires_at)}"
        )

    # -- the operator's side -------------------------------------------------------------------

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        """One request, verified; None when unknown. Raises SessionIntegrityError if tampered with."""
        if not approval_id.startswith(APPROVAL_PREFIX) or len(approval_id) > 64:
            return None
        key = request_key(approval_id)
        raw = await self._store.get(key)
        return None if raw is None else self._decode_request(key, raw, approval_id)

    async def recent(self, *, pending_only: bool, limit: int = INDEX_LIMIT) -> list[ApprovalRequest]:
        """Recent requests, newest first (records that fail verification are left out and logged)."""
        ids = await self._store.index_members(INDEX, limit)
        raws = await self._store.get_many([request_key(i) for i in ids])
        now = self._clock()
        out: list[ApprovalRequest] = []
        for approval_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                request = self._decode_request(request_key(approval_id), raw, approval_id)
            except SessionIntegrityError as exc:
                log.warning("approval record ignored: %s", exc)
                continue
            if not pending_only or request.current_status(now) == "pending":
                out.append(request)
        return out

    async def elevations(self, session_ids: Sequence[str]) -> list[Elevation | None]:
        """Each session's elevation record (for listings), None when absent or unverifiable."""
        raws = await self._store.get_many([elevation_key(s) for s in session_ids])
        out: list[Elevation | None] = []
        for session_id, raw in zip(session_ids, raws, strict=True):
            try:
                out.append(None if raw is None else self._decode_elevation(elevation_key(session_id), raw, session_id))
            except SessionIntegrityError as exc:
                log.warning("elevation record ignored: %s", exc)
                out.append(None)
        return out

    async def approve(self, approval_id: str, approver: Mapping[str, str]) -> tuple[ApprovalRequest, Elevation]:
        """Approve a pending request and elevate exactly its actions for ``elevation_seconds``."""
        request = await self._decide(approval_id, approver, approve=True)
        elevation = await self._grant(request)
        return request, elevation

    async def deny(self, approval_id: str, approver: Mapping[str, str]) -> ApprovalRequest:
        return await self._decide(approval_id, approver, approve=False)

    async def _decide(self, approval_id: str, approver: Mapping[str, str], *, approve: bool) -> ApprovalRequest:
        """Compare-and-set the request from pending to decided; audited before anything takes effect."""
        key = request_key(approval_id)
        who = approver["decided_by"]
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._store.get(key) if approval_id.startswith(APPROVAL_PREFIX) else None
            if raw is None:
                raise ApprovalError(404, f"No approval request {approval_id!r} (unknown, or decided long ago).")
            try:
                request = self._decode_request(key, raw, approval_id)
            except SessionIntegrityError as exc:
                raise ApprovalError(409, f"Approval request {approval_id} cannot be trusted: {exc}.") from None
            now = self._clock()
            until: float | None = None
            if approve and request.current_status(now) == "pending":
                try:
                    session = await self._sessions.get(request.session_id)
                except SessionIntegrityError as exc:
                    raise ApprovalError(409, f"Session {request.session_id} cannot be trusted: {exc}.") from None
                if session is None:
                    raise ApprovalError(
                        409,
                        f"Session {request.session_id} has ended (expired or unknown); there is nothing to elevate.",
                    )
                until = min(now + self.settings.elevation_seconds, session.expires_at)
            try:
                result = decided(request, approve=approve, approver=who, now=now, elevation_until=until)
            except ApprovalError:
                if request.current_status(now) == "expired":
                    self._count("expired")
                    await self._audit_quietly(self._event("expired", request, approver))
                raise
            ttl = max(result.elevation_expires_at or now, request.expires_at) - now + RETENTION_SECONDS
            encoded = self._signer.encode(key, result.stored())
            if not await self._store.compare_and_set(key, raw, encoded, ttl):
                continue  # someone else decided first: the next read reports it
            try:
                await self._audit(self._event("approved" if approve else "denied", result, approver))
            except Exception:
                # Nothing unaudited takes effect: put the request back as it was.
                await self._store.compare_and_set(key, encoded, raw, request.expires_at - now + RETENTION_SECONDS)
                raise
            self._count("approved" if approve else "denied")
            return result
        raise StoreUnavailable("the approval request kept changing under concurrent writers; try again")

    async def _grant(self, request: ApprovalRequest) -> Elevation:
        """Merge the approved actions into the session's elevation record (compare-and-set, so
        two approvals for one session at once both land)."""
        key = elevation_key(request.session_id)
        for _ in range(_CAS_ATTEMPTS):
            now = self._clock()
            raw = await self._store.get(key)
            current: Elevation | None = None
            if raw is not None:
                try:
                    current = self._decode_elevation(key, raw, request.session_id)
                except SessionIntegrityError as exc:
                    log.warning("replacing an elevation record that failed verification: %s", exc)
            merged = merge_grants(current, request.session_id, request, now)
            ends = merged.expires_at(now) or now
            if await self._store.compare_and_set(key, raw, self._signer.encode(key, merged.stored()), ends - now + 1):
                for grant in merged.grants:
                    self._granted[(request.session_id, grant.action)] = grant.expires_at
                return merged
        raise StoreUnavailable("the session's elevation kept changing under concurrent approvals; try again")

    # -- records ---------------------------------------------------------------------------------

    async def _save(self, request: ApprovalRequest, ttl: float) -> None:
        key = request_key(request.approval_id)
        await self._store.put(key, self._signer.encode(key, request.stored()), ttl=ttl)

    def _decode_request(self, key: str, raw: bytes, approval_id: str) -> ApprovalRequest:
        record = self._signer.decode(key, raw)
        try:
            request = ApprovalRequest.from_stored(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionIntegrityError(f"record {key!r} is not an approval request") from exc
        if request.approval_id != approval_id:
            raise SessionIntegrityError(f"record {key!r} names another approval request")
        return request

    def _decode_elevation(self, key: str, raw: bytes, session_id: str) -> Elevation:
        cached = self._verified.get(key)
        if cached is not None and cached[0] == raw:
            return cached[1]
        record = self._signer.decode(key, raw)
        try:
            elevation = Elevation.from_stored(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionIntegrityError(f"record {key!r} is not an elevation") from exc
        if elevation.session_id != session_id:
            raise SessionIntegrityError(f"record {key!r} names another session")
        if len(self._verified) >= self._VERIFIED_MAX:
            self._verified.clear()
        self._verified[key] = (raw, elevation)
        return elevation

    # -- audit and metrics -----------------------------------------------------------------------

    def _event(
        self,
        step: str,
        request: ApprovalRequest,
        approver: Mapping[str, str] | None = None,
        *,
        protocol: str = "api",
    ) -> dict[str, Any]:
        """One ``approval`` audit event. The approver is named by fingerprint, never by credential."""
        event: dict[str, Any] = {
            "event": "approval",
            "step": step,
            "action": f"approval.{step}",
            "protocol": protocol,  # where the step came from: the agent's wire, or the admin API
            "approval_id": request.approval_id,
            "agent_id": request.agent_id,
            "session_id": request.session_id,
            "actions": list(request.actions),
            "effect": request.effect,
            "binding": request.binding,
            "expires_at": rfc3339(request.expires_at),
        }
        if request.arguments_sha256 is not None:
            event["arguments_sha256"] = request.arguments_sha256
        if request.decision_id:
            event["decision_id"] = request.decision_id
        if step == "requested":
            event["reason"] = f"elevation requested for {', '.join(request.actions)}"
            if request.reason:
                event["intent"] = request.reason
        else:
            assert approver is not None
            event["approver"] = approver["decided_by"]
            event["approver_credential"] = approver["credential"]
            if approver.get("name"):
                event["approver_name"] = approver["name"]
            if step == "approved":
                event["elevation_expires_at"] = rfc3339(request.elevation_expires_at)
                event["reason"] = f"operator approved elevation of {', '.join(request.actions)}"
            elif step == "denied":
                event["reason"] = "operator denied the elevation request"
            else:
                event["reason"] = "operator tried to decide a request that had already expired"
        return event

    async def _audit_quietly(self, event: dict[str, Any]) -> None:
        """Audit a step whose failure must not change the outcome (the decision event fails closed anyway)."""
        try:
            await self._audit(event)
        except Exception as exc:
            log.error("approval event %s could not be audited: %s", event.get("step"), exc.__class__.__name__)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.approvals.labels(outcome).inc()

    def _running_grants(self) -> float:
        now = self._clock()
        for key in [k for k, end in self._granted.items() if end <= now]:
            del self._granted[key]
        return float(len(self._granted))
