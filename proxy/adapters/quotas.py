"""Fair sharing of one sidecar between agents: what each agent holds open on this replica.

One agent with many streams or slow calls must not take the upstream connections, sessions
or event-loop time the other agents need. These counters are per process (each replica
shares its own capacity), bounded by the policy's ``limits``, and cost a dict update per
request. A slot is always given back in a ``finally``.
"""

from __future__ import annotations

import time


class OverLimit(Exception):
    """The agent already holds as many as the policy allows."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"this agent already has {limit} {what} open through Wicket (policy limits)")
        self.what = what
        self.limit = limit


class AgentSlots:
    """How many of one kind (requests in flight, streams) each agent holds."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._held: dict[str, int] = {}

    def take(self, agent_id: str, limit: int) -> None:
        """Hold one more for ``agent_id``, or raise ``OverLimit``. The caller gives it back in a
        ``finally`` (plain methods, not a context manager: this runs on every forward)."""
        held = self._held.get(agent_id, 0)
        if held >= limit:
            raise OverLimit(self._what, limit)
        self._held[agent_id] = held + 1

    def give_back(self, agent_id: str) -> None:
        left = self._held[agent_id] - 1
        if left:
            self._held[agent_id] = left
        else:
            del self._held[agent_id]

    def held(self, agent_id: str) -> int:
        return self._held.get(agent_id, 0)


class AgentSessions:
    """The MCP sessions each agent opened through this replica: counted until deleted or idle."""

    def __init__(self, idle_seconds: float) -> None:
        self._idle = idle_seconds
        self._sessions: dict[str, dict[str, float]] = {}  # agent -> MCP session id -> last use
        self._owner: dict[str, str] = {}

    def admit(self, agent_id: str, limit: int) -> None:
        """Raise ``OverLimit`` when the agent may not open another session."""
        sessions = self._sessions.get(agent_id)
        if not sessions or len(sessions) < limit:
            return
        cutoff = time.monotonic() - self._idle
        for sid in [sid for sid, seen in sessions.items() if seen < cutoff]:
            self.end(sid)
        if len(self._sessions.get(agent_id, ())) >= limit:
            raise OverLimit("MCP sessions", limit)

    def opened(self, agent_id: str, mcp_session_id: str) -> None:
        self._sessions.setdefault(agent_id, {})[mcp_session_id] = time.monotonic()
        self._owner[mcp_session_id] = agent_id

    def used(self, mcp_session_id: str) -> None:
        agent_id = self._owner.get(mcp_session_id)
        if agent_id is not None:
            self._sessions[agent_id][mcp_session_id] = time.monotonic()

    def end(self, mcp_session_id: str) -> None:
        agent_id = self._owner.pop(mcp_session_id, None)
        if agent_id is None:
            return
        sessions = self._sessions[agent_id]
        sessions.pop(mcp_session_id, None)
        if not sessions:
            del self._sessions[agent_id]
