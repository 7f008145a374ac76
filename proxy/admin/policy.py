"""Policy operations on the admin port (behind the operator token).

``POST /v1/policy/reload`` re-reads the policy files (as SIGHUP does): a policy that fails
``wicket policy check`` is refused with its ``file:line`` problems and the running one stays in
force. ``GET /v1/shadow`` lists what shadow mode would have refused, most frequent first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from aiohttp import web

from proxy.admin.api import operator_refusal, problem
from proxy.audit.summary import summarise_file

MAX_TOP = 200


class ReloadResult(Protocol):
    applied: bool
    files: list[str]
    problems: list[str]
    mode: str | None


class PolicyApi:
    def __init__(
        self,
        *,
        admin_token: str | None,
        reload: Callable[[], Awaitable[ReloadResult]],
        audit_path: Path | None,
    ) -> None:
        self._admin_token = admin_token
        self._reload = reload
        self._audit_path = audit_path

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/policy/reload", self.reload), web.get("/v1/shadow", self.shadow)]

    async def reload(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        result = await self._reload()
        body = {"applied": result.applied, "files": result.files, "problems": result.problems, "mode": result.mode}
        # 422: the files were read but are not a valid policy; the running policy stays in force.
        return web.json_response(body, status=200 if result.applied else 422)

    async def shadow(self, request: web.Request) -> web.Response:
        if (refusal := operator_refusal(request, self._admin_token)) is not None:
            return refusal
        if self._audit_path is None:
            return problem(409, "The audit log is written to stdout; summarise it where your log collector keeps it.")
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return problem(400, "limit must be an integer.")
        if not 1 <= limit <= MAX_TOP:
            return problem(400, f"limit must be from 1 to {MAX_TOP}.")
        summary = await asyncio.to_thread(summarise_file, self._audit_path, limit=limit)
        return web.json_response(summary.public())
