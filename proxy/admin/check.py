"""The REST check API (SPEC §2, §4): check, execute, report, for agents that do not speak MCP.

``POST /v1/check`` asks the same ``Checker`` the proxy uses (protocol ``api``) about one tool
call and returns the SPEC §4 decision record, ``"decision": "allow"`` included, with HTTP 200
either way (429 with ``Retry-After`` when a policy rate limit or quota refused it). After
running an allowed call the agent ``POST /v1/report``s what happened, which becomes the
``outcome`` audit event. Both take the agent's own runtime token (or OIDC JWT)
and act only in that token's session; they are the only ``/v1`` calls an agent token may use.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from aiohttp import web

from proxy.adapters import jsonrpc
from proxy.admin.api import problem
from proxy.core.action import Action, Decision, Effect, Tier, Verdict
from proxy.core.approvals import clean_intent, rfc3339
from proxy.core.checker import Checker
from proxy.core.identity import Caller, IdentityError, IdentityResolver
from proxy.core.sessions import RecordSigner, Session, SessionIntegrityError
from proxy.state.base import Store

PROTOCOL = "api"
TOOL_METHOD = "tools/call"  # the same action label as over MCP, so one elevation covers both
TOOL_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
DECISION_ID = re.compile(r"^dec_[0-9a-f]{1,64}$")
STATUSES = ("success", "error", "tool_error")
REPORT_TTL_SECONDS = 3600.0
"""How long after an allowed check its outcome may still be reported."""
MAX_SUMMARY = 2000
CHECK_FIELDS = frozenset({"tool_name", "arguments", "input_summary"})
REPORT_FIELDS = frozenset({"decision_id", "status", "detail", "duration_ms"})


AGENT_CHALLENGE = 'Bearer realm="wicket"'


def _report_key(session_id: str, decision_id: str) -> str:
    return f"wicket:{{{session_id}}}:report:{decision_id}"


class CheckApi:
    def __init__(
        self,
        *,
        identity: IdentityResolver,
        checker: Checker,
        store: Store,
        signer: RecordSigner,
    ) -> None:
        self._identity = identity
        self._checker = checker
        self._store = store
        self._signer = signer

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/check", self.check), web.post("/v1/report", self.report)]

    async def _agent_call(
        self, request: web.Request, fields: frozenset[str]
    ) -> tuple[Caller, Session, dict[str, Any]] | web.Response:
        """The calling agent, its own session and its JSON body (only ``fields``), or the refusal."""
        agent = await self._agent(request)
        if isinstance(agent, web.Response):
            return agent
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        unknown = set(body) - fields
        if unknown:
            return problem(400, f"Unknown field(s): {', '.join(sorted(unknown))}.")
        return (*agent, body)

    async def _agent(self, request: web.Request) -> tuple[Caller, Session] | web.Response:
        """The calling agent and its own session, or the refusal (never an operator or anonymous caller)."""
        authorization = request.headers.get("Authorization")
        if not authorization:
            return problem(401, "Present your runtime token: Authorization: Bearer wkt_...", challenge=AGENT_CHALLENGE)
        try:
            caller = await self._identity.resolve(authorization)
            if caller.session is None:
                raise IdentityError(401, "The check API needs an agent credential (Bearer wkt_... or a JWT).")
            self._identity.admit(caller, caller.session)
        except IdentityError as exc:
            if exc.integrity:
                await self._checker.integrity_failure(PROTOCOL, exc.reason)
            return problem(exc.status, exc.reason, challenge=AGENT_CHALLENGE if exc.status == 401 else None)
        return caller, caller.session

    async def check(self, request: web.Request) -> web.Response:
        call = await self._agent_call(request, CHECK_FIELDS)
        if isinstance(call, web.Response):
            return call
        caller, session, body = call
        name = body.get("tool_name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            return problem(400, "tool_name must be 1-256 printable characters.")
        arguments = body.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return problem(400, "arguments must be a JSON object.")
        summary = body.get("input_summary")
        if summary is not None and (not isinstance(summary, str) or len(summary) > MAX_SUMMARY):
            return problem(400, f"input_summary must be a string of at most {MAX_SUMMARY} characters.")
        action = Action(
            protocol=PROTOCOL,
            method=TOOL_METHOD,
            name=name,
            arguments=arguments,
            agent_id=caller.agent_id,
            session_id=session.session_id,
            upstream="",
            is_tool_call=True,
            intent=summary,
            delegation=caller.delegation,
        )
        decision = await self._checker.check(action, session)
        if decision.allowed:
            key = _report_key(session.session_id, decision.decision_id)
            record = {"decision_id": decision.decision_id, "name": name, "agent_id": caller.agent_id}
            record.update(effect=decision.effect.label, tier=decision.tier.value)
            await self._store.put(key, self._signer.encode(key, record), ttl=REPORT_TTL_SECONDS)
        answer = decision.record()
        if decision.forward_arguments is not None:
            # Data protection masked a value: the agent is to run the call with these arguments.
            answer["arguments"] = dict(decision.forward_arguments)
        if decision.retry_after is not None and not decision.allowed:
            # A policy rate limit or quota: HTTP's own way to say "later", with the same record.
            retry = str(max(1, math.ceil(decision.retry_after)))
            return web.json_response(answer, status=429, headers={"Retry-After": retry})
        return web.json_response(answer)

    async def report(self, request: web.Request) -> web.Response:
        call = await self._agent_call(request, REPORT_FIELDS)
        if isinstance(call, web.Response):
            return call
        _, session, body = call
        decision_id = body.get("decision_id")
        if not isinstance(decision_id, str) or not DECISION_ID.fullmatch(decision_id):
            return problem(400, "decision_id must be the dec_... id /v1/check returned.")
        status = body.get("status")
        if status not in STATUSES:
            return problem(400, f"status must be one of: {', '.join(STATUSES)}.")
        detail = body.get("detail")
        if detail is not None and not isinstance(detail, str):
            return problem(400, "detail must be a string.")
        duration = body.get("duration_ms", 0)
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not 0 <= duration < 1e10:
            return problem(400, "duration_ms must be a non-negative number.")
        key = _report_key(session.session_id, decision_id)
        raw = await self._store.get(key)
        if raw is None:
            return problem(
                404,
                f"No allowed decision {decision_id} to report in this session "
                "(unknown, not allowed, already reported, older than an hour, or another session's).",
            )
        try:
            record = self._signer.decode(key, raw)
            effect, tier = Effect.parse(record["effect"]), Tier(record["tier"])
        except (SessionIntegrityError, KeyError, ValueError) as exc:
            await self._checker.integrity_failure(PROTOCOL, f"check API report record failed verification: {exc}")
            return problem(409, f"The record of decision {decision_id} cannot be trusted; nothing was reported.")
        await self._store.delete(key)  # one outcome per decision
        action = Action(
            protocol=PROTOCOL,
            method=TOOL_METHOD,
            name=str(record["name"]),
            arguments={},
            agent_id=session.agent_id,
            session_id=session.session_id,
            upstream="",
            is_tool_call=True,
        )
        decision = Decision(Verdict.ALLOW, effect, tier, "", decision_id=decision_id)
        detail = clean_intent(detail)  # one bounded line
        await self._checker.outcome(action, decision, status=status, duration=float(duration) / 1000, detail=detail)
        return web.json_response({"decision_id": decision_id, "status": status, "reported_at": rfc3339(time.time())})


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body: Any = await request.json(loads=jsonrpc.loads)
    except (ValueError, UnicodeDecodeError):
        return problem(400, "The body must be a JSON object.")
    if not isinstance(body, dict):
        return problem(400, "The body must be a JSON object.")
    return body
