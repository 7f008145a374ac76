"""How an A2A request becomes an Action: its label, its effect and what the guardian tiers see.

Pure (no I/O, no aiohttp), so the proxy and ``wicket policy test``/``explain`` build the very
same Action for the same call: a policy test decides an A2A call exactly as the adapter does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy.core.action import Action, Delegation, Effect
from proxy.core.policy import Policy

PROTOCOL = "a2a"

V10_METHODS = (
    "SendMessage",
    "SendStreamingMessage",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "SubscribeToTask",
    "CreateTaskPushNotificationConfig",
    "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfigs",
    "DeleteTaskPushNotificationConfig",
    "GetExtendedAgentCard",
)
V03_METHODS = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/list": "ListTasks",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}
JSONRPC_METHODS = {**{m: m for m in V10_METHODS}, **V03_METHODS}
"""JSON-RPC method, in either version, -> the A2A 1.0 name every Action is labelled with."""

# Reading a task, listing tasks and reading the card are reads; everything else changes state.
DEFAULT_EFFECTS: dict[str, Effect] = {m: Effect.MUTATING for m in V10_METHODS} | {
    m: Effect.READ
    for m in (
        "GetTask",
        "ListTasks",
        "SubscribeToTask",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "GetExtendedAgentCard",
    )
}
SENDS = frozenset({"SendMessage", "SendStreamingMessage"})


def skill_of(message: Mapping[str, Any], policy: Policy) -> str | None:
    """The skill a message names in its metadata (policy ``a2a.skill_key``), if any."""
    metadata = message.get("metadata")
    skill = metadata.get(policy.a2a_skill_key) if isinstance(metadata, Mapping) else None
    return skill if isinstance(skill, str) and skill else None


def effect_for(policy: Policy, name: str, skill: str | None) -> Effect:
    """The policy's word for the skill (``a2a:skill:<id>``), else for the method (``a2a:<Method>``),
    else the protocol's default."""
    effect = policy.effect_override(f"{PROTOCOL}:skill:{skill}") if skill else None
    if effect is None:
        effect = policy.effect_override(f"{PROTOCOL}:{name}")
    return effect if effect is not None else DEFAULT_EFFECTS.get(name, Effect.MUTATING)


def message_text(message: Mapping[str, Any]) -> str:
    """The message's text parts (0.3 HTTP+JSON calls them ``content``), joined."""
    parts = message.get("parts", message.get("content"))
    if not isinstance(parts, list):
        return ""
    return "\n".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def without_query(url: Any) -> str:
    """A push URL as audited and reviewed: scheme, host and path; a query may carry the receiver's secret."""
    if not isinstance(url, str):
        return repr(url)[:200]
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"[:500]


def a2a_action(
    policy: Policy,
    name: str,
    *,
    message: Mapping[str, Any],
    skill: str | None,
    task_id: str | None,
    push_urls: list[Any],
    agent_id: str,
    session_id: str,
    upstream: str,
    delegation: Delegation | None = None,
) -> Action:
    """The Action for one A2A call named ``name`` (its 1.0 method). Its arguments are what the
    guardian tiers review as untrusted data: the message's text, the skill, the task and any push
    URL; never the whole wire message."""
    arguments: dict[str, Any] = {}
    if name in SENDS:
        arguments["text"] = message_text(message)
        if skill is not None:
            arguments["skill"] = skill
    if task_id:
        arguments["task_id"] = task_id
    if push_urls:
        arguments["push_urls"] = [without_query(u) for u in push_urls]
    return Action(
        protocol=PROTOCOL,
        method=PROTOCOL,
        name=name,
        arguments=arguments,
        agent_id=agent_id,
        session_id=session_id,
        upstream=upstream,
        is_tool_call=True,
        fixed_effect=effect_for(policy, name, skill),
        delegation=delegation,
    )
