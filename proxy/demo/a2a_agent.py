"""A small A2A agent built on the real a2a-sdk, for ``wicket demo --a2a``, the tests and benchmarks.

It serves the SDK's JSON-RPC routes (1.0 with 0.3 compatibility), its REST routes (1.0 and
the 0.3 ``/v1`` prefix) and a hybrid agent card that also lists a gRPC interface, which
Wicket must drop. Every message it executes is written to its ledger, so a test can prove a
refused call never ran. A message whose text starts with ``wait`` publishes a first status
event and then holds until ``release()`` is called (or 10 s pass, noted in the ledger): a
stream relayed event by event lets the client see that event and release the agent first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from a2a.helpers import get_message_text, new_task_from_user_message, new_text_artifact, new_text_status_update_event
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryPushNotificationConfigStore, InMemoryTaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    TaskArtifactUpdateEvent,
    TaskState,
)
from starlette.applications import Starlette

from proxy.demo.server import free_port

JSONRPC_PATH = "/a2a/jsonrpc"
REST_PREFIX = "/a2a/rest"
HOLD_SECONDS = 10.0


@dataclass
class Ledger:
    """What the agent really executed, in order."""

    executed: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    """Every HTTP request that reached the agent: method, path and headers."""

    def texts(self) -> list[str]:
        return [entry["text"] for entry in self.executed]

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


class EchoExecutor(AgentExecutor):
    """Answers every message with an ``echo:`` artifact; ``wait…`` messages hold mid-stream."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.released = asyncio.Event()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        assert message is not None
        text = get_message_text(message)
        entry: dict[str, Any] = {"text": text, "metadata": dict(context.metadata or {})}
        self.ledger.executed.append(entry)
        task = context.current_task or new_task_from_user_message(message)
        await event_queue.enqueue_event(task)
        working = new_text_status_update_event(task.id, task.context_id, TaskState.TASK_STATE_WORKING, "started")
        await event_queue.enqueue_event(working)
        if text.startswith("wait"):
            try:
                async with asyncio.timeout(HOLD_SECONDS):
                    await self.released.wait()
                entry["released"] = True
            except TimeoutError:
                entry["released"] = False  # nobody saw the first event in time: the stream was buffered
        artifact = new_text_artifact(name="echo", text=f"echo: {text}")
        await event_queue.enqueue_event(
            TaskArtifactUpdateEvent(task_id=task.id, context_id=task.context_id, artifact=artifact)
        )
        done = new_text_status_update_event(task.id, task.context_id, TaskState.TASK_STATE_COMPLETED, "done")
        await event_queue.enqueue_event(done)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        self.ledger.cancelled.append(task_id)
        canceled = new_text_status_update_event(
            task_id, context.context_id or "", TaskState.TASK_STATE_CANCELED, "cancelled"
        )
        await event_queue.enqueue_event(canceled)


def agent_card(base: str, *, grpc: bool = True) -> AgentCard:
    """A hybrid card: 1.0 interfaces for both bindings, 0.3 compatibility, and a gRPC one."""
    interfaces = [
        AgentInterface(url=base + JSONRPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0"),
        AgentInterface(url=base + REST_PREFIX, protocol_binding="HTTP+JSON", protocol_version="1.0"),
        AgentInterface(url=base + JSONRPC_PATH, protocol_binding="JSONRPC", protocol_version="0.3"),
    ]
    if grpc:
        interfaces.append(AgentInterface(url="grpc://127.0.0.1:50051", protocol_binding="GRPC", protocol_version="1.0"))
    return AgentCard(
        name="Echo agent",
        description="Echoes what it is sent; a Wicket demo agent.",
        version="1.0.0",
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True, push_notifications=True, extended_agent_card=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(id="echo", name="Echo", description="Repeats the message.", tags=["demo"]),
            AgentSkill(id="purge", name="Purge", description="Pretends to delete records.", tags=["demo"]),
        ],
    )


def extended_card(card: AgentCard) -> AgentCard:
    """What authenticated callers see: one more skill."""
    extended = AgentCard()
    extended.CopyFrom(card)
    del extended.signatures[:]
    extended.skills.append(AgentSkill(id="report", name="Report", description="Summarises the ledger.", tags=["demo"]))
    return extended


def build_app(base: str, ledger: Ledger, executor: EchoExecutor, card: AgentCard | None = None) -> Starlette:
    card = card or agent_card(base)
    handler = DefaultRequestHandler(
        agent_executor=executor,
        task_store=InMemoryTaskStore(),
        agent_card=card,
        push_config_store=InMemoryPushNotificationConfigStore(),
        extended_agent_card=extended_card(card),
    )
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH, enable_v0_3_compat=True),
        *create_rest_routes(handler, enable_v0_3_compat=True, path_prefix=REST_PREFIX),
    ]
    app = Starlette(routes=routes)

    async def noting_headers(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            ledger.requests.append((scope["method"], scope["path"], headers))
        await app(scope, receive, send)

    return noting_headers  # type: ignore[return-value]


class DemoA2AAgent:
    """The echo agent on a loopback port, run by uvicorn inside this event loop."""

    def __init__(self, port: int | None = None, signer: Callable[[AgentCard], AgentCard] | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ledger = Ledger()
        self.executor = EchoExecutor(self.ledger)
        self._signer = signer  # signs the card (a2a.utils.signing.create_agent_card_signer)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.base

    def release(self) -> None:
        self.executor.released.set()

    async def start(self) -> None:
        card = agent_card(self.base)
        if self._signer is not None:
            card = self._signer(card)
        app = build_app(self.base, self.ledger, self.executor, card)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def card_json(card: AgentCard) -> dict[str, Any]:
    """The card as the SDK serves it (hybrid 1.0 + 0.3 fields)."""
    from a2a.server.request_handlers.response_helpers import agent_card_to_dict

    return json.loads(json.dumps(agent_card_to_dict(card)))
