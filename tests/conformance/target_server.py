"""The MCP server the official conformance suite runs against (directly, and through Wicket).

`@modelcontextprotocol/conformance server --url URL` expects a server that implements a
fixed set of `test_*` tools, `test://` resources and `test_*` prompts; this module is that
server, written with the mcp SDK's `MCPServer` and served by uvicorn over Streamable HTTP.
Each handler does exactly what its scenario asks for (see the scenario descriptions printed
by `conformance list --server` and the suite's sources under node_modules), nothing more.

Run it by hand with `python -m tests.conformance.target_server --port 8765`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import socket
import struct
import wave
import zlib
from collections.abc import Callable
from typing import Annotated, Any

import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPError
from mcp.types import (
    AudioContent,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import Field

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
WATCHED_RESOURCE = "test://watched-resource"


def tiny_png() -> bytes:
    """A valid 1x1 red PNG, built here rather than pasted as an opaque blob."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def tiny_wav() -> bytes:
    """A valid 10 ms silent mono WAV."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


PNG_B64 = base64.b64encode(tiny_png()).decode()
WAV_B64 = base64.b64encode(tiny_wav()).decode()


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client can resume a closed stream with ``Last-Event-ID``
    (the ``server-sse-polling`` scenario closes a tool's stream mid-call)."""

    def __init__(self) -> None:
        self._events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{stream_id}:{next(self._ids)}"
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        position = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if position is None:
            return None
        stream_id = self._events[position][1]
        for event_id, stream, message in self._events[position + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def _text(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)])


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, Any] | None = None,
    contactMethod: str | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> CallToolResult:
    """Tool with JSON Schema 2020-12 features."""
    return _text(f"Received name={name!r}, address={address!r}, contact={contactMethod!r}")


def schema_2020_12_tool() -> Tool:
    """The SDK derives input schemas from signatures; this scenario needs one given verbatim
    ($anchor, allOf/anyOf and if/then/else as well as $schema, $defs and additionalProperties)."""
    tool = Tool.from_function(json_schema_2020_12_tool)
    address = {
        "$anchor": "addressDef",
        "type": "object",
        "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
    }
    tool.parameters = {
        "$schema": SCHEMA_2020_12,
        "type": "object",
        "$defs": {"address": address},
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"},
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": False,
    }
    return tool


def build_target_server() -> MCPServer:
    """Every tool, resource and prompt the suite's server scenarios call, by their exact names."""
    server = MCPServer("wicket-conformance-target", version="1.0.0", tools=[schema_2020_12_tool()])
    log_level = {"min": "debug"}

    # -- tools: content types ---------------------------------------------------------

    @server.tool()
    def test_simple_text() -> CallToolResult:
        """Returns one text block."""
        return _text("This is a simple text response for testing.")

    @server.tool()
    def test_image_content() -> CallToolResult:
        """Returns one PNG image block."""
        return CallToolResult(content=[ImageContent(type="image", data=PNG_B64, mime_type="image/png")])

    @server.tool()
    def test_audio_content() -> CallToolResult:
        """Returns one WAV audio block."""
        return CallToolResult(content=[AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")])

    @server.tool()
    def test_embedded_resource() -> CallToolResult:
        """Returns one embedded text resource."""
        resource = TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
        )
        return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])

    @server.tool()
    def test_multiple_content_types() -> CallToolResult:
        """Returns text, an image and an embedded resource together."""
        resource = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return CallToolResult(
            content=[
                TextContent(type="text", text="Multiple content types test:"),
                ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
                EmbeddedResource(type="resource", resource=resource),
            ]
        )

    @server.tool()
    def test_error_handling() -> CallToolResult:
        """Always fails, reported as a tool error (isError), not a protocol error."""
        return CallToolResult(
            content=[TextContent(type="text", text="This tool intentionally returns an error for testing")],
            is_error=True,
        )

    # -- tools: notifications during a call ---------------------------------------------

    @server.tool()
    async def test_tool_with_logging(ctx: Context) -> CallToolResult:
        """Sends three info log notifications, 50 ms apart, while it runs."""
        for step, message in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
            if step:
                await asyncio.sleep(0.05)
            if LOG_LEVELS.index("info") >= LOG_LEVELS.index(log_level["min"]):
                await ctx.session.send_log_message("info", message, related_request_id=ctx.request_id)
        return _text("Logging tool completed")

    @server.tool()
    async def test_tool_with_progress(ctx: Context) -> CallToolResult:
        """Reports progress 0, 50 and 100 of 100 (when the caller sent a progress token)."""
        for step, progress in enumerate((0.0, 50.0, 100.0)):
            if step:
                await asyncio.sleep(0.05)
            await ctx.report_progress(progress, 100.0)
        return _text("Progress tool completed")

    @server.tool()
    async def test_reconnection(ctx: Context) -> CallToolResult:
        """Closes its own SSE stream mid-call; the result arrives when the client resumes."""
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        return _text("Reconnection test completed")

    # -- tools: server-to-client requests ------------------------------------------------

    @server.tool()
    async def test_sampling(prompt: str, ctx: Context) -> CallToolResult:
        """Asks the client's LLM (sampling/createMessage) and returns its answer."""
        message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
        result = await ctx.session.create_message([message], max_tokens=100, related_request_id=ctx.request_id)
        return _text(f"LLM response: {_sampled_text(result)}")

    @server.tool()
    async def test_elicitation(message: str, ctx: Context) -> CallToolResult:
        """Asks the user (elicitation/create) for a username and an email."""
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        return await _elicit(ctx, message, schema, "User response")

    @server.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> CallToolResult:
        """Elicitation whose schema gives a default for every primitive type (SEP-1034)."""
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {"type": "boolean", "description": "Verification status", "default": True},
            },
        }
        return await _elicit(ctx, "Please review your details", schema, "Elicitation completed")

    @server.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> CallToolResult:
        """Elicitation with all five enum schema variants (SEP-1330)."""
        schema = {
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2"]}},
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                        ]
                    },
                },
            },
        }
        return await _elicit(ctx, "Pick your options", schema, "Elicitation completed")

    # -- 2026-07-28: input_required results instead of server-to-client requests ----------

    @server.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Asks for the user's name through an input_required result, then greets them."""
        answer = _response(ctx, "user_name", ElicitResult)
        if answer is None:
            return InputRequiredResult(input_requests={"user_name": _ask_name("What is your name?")})
        return _text(f"Hello, {(answer.content or {}).get('name', 'stranger')}!")

    @server.tool()
    async def test_input_required_result_sampling(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Asks the client's LLM a question through an input_required result."""
        answer = _response(ctx, "capital_question", CreateMessageResult)
        if answer is None:
            return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?")})
        return _text(f"LLM response: {_sampled_text(answer)}")

    @server.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Asks the client for its roots through an input_required result."""
        answer = _response(ctx, "client_roots", ListRootsResult)
        if answer is None:
            return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
        return _text("Client roots: " + ", ".join(str(root.uri) for root in answer.roots))

    @server.tool()
    async def test_input_required_result_request_state(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Round-trips a request state (sealed by the SDK) alongside one elicitation."""
        return _stateful_confirm(ctx)

    @server.tool()
    async def test_input_required_result_tampered_state(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Like the request-state tool: a tampered state is refused by the SDK's integrity check."""
        return _stateful_confirm(ctx)

    @server.tool()
    async def test_input_required_result_multiple_inputs(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Asks for an elicitation, a sample and the roots at once."""
        keys = ("user_name", "greeting", "client_roots")
        responses = ctx.input_responses or {}
        if ctx.request_state != "multiple-inputs" or not all(key in responses for key in keys):
            requests: dict[str, InputRequest] = {
                "user_name": _ask_name("What is your name?"),
                "greeting": _sample("Generate a greeting", max_tokens=50),
                "client_roots": ListRootsRequest(),
            }
            return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")
        return _text("Received all inputs: " + ", ".join(keys))

    @server.tool()
    async def test_input_required_result_multi_round(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Two elicitation rounds, each with its own request state, then a result."""
        if ctx.request_state == "round-1" and _response(ctx, "step1", ElicitResult) is not None:
            step2 = _ask("Step 2: What is your favorite color?", "color")
            return InputRequiredResult(input_requests={"step2": step2}, request_state="round-2")
        if ctx.request_state == "round-2" and (answer := _response(ctx, "step2", ElicitResult)) is not None:
            return _text(f"Finished both rounds: color={(answer.content or {}).get('color')}")
        step1 = _ask_name("Step 1: What is your name?")
        return InputRequiredResult(input_requests={"step1": step1}, request_state="round-1")

    @server.tool()
    async def test_input_required_result_capabilities(ctx: Context) -> CallToolResult | InputRequiredResult:
        """Asks only for what the client declared it can answer."""
        declared = ctx.client_capabilities
        requests: dict[str, InputRequest] = {}
        if declared is not None and declared.sampling is not None:
            requests["question"] = _sample("What is 2 + 2?")
        if declared is not None and declared.elicitation is not None:
            requests["user_name"] = _ask_name("What is your name?")
        if not requests or ctx.input_responses:
            return _text("Nothing (more) to ask for the declared capabilities.")
        return InputRequiredResult(input_requests=requests)

    @server.tool()
    async def test_missing_capability(ctx: Context) -> CallToolResult:
        """Needs sampling: a client that did not declare it gets -32021."""
        declared = ctx.client_capabilities
        if declared is None or declared.sampling is None:
            data = {"requiredCapabilities": {"sampling": {}}}
            raise MCPError(code=-32021, message="This tool needs the sampling capability.", data=data)
        return _text("The client declared sampling.")

    @server.tool()
    def test_custom_headers(
        region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
    ) -> CallToolResult:
        """Its argument is mirrored in an Mcp-Param-Region header, which the SDK checks against the body."""
        return _text(f"region={region}")

    @server.prompt(description="A prompt that first asks the user for context.")
    async def test_input_required_result_prompt(ctx: Context) -> list[Message] | InputRequiredResult:
        answer = _response(ctx, "user_context", ElicitResult)
        if answer is None:
            ask = _ask("What context should the prompt use?", "context")
            return InputRequiredResult(input_requests={"user_context": ask})
        return [UserMessage(f"Use this context: {(answer.content or {}).get('context')}")]

    # -- resources ------------------------------------------------------------------------

    @server.resource("test://static-text", name="static-text", description="A static text resource.")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary", name="static-binary", description="A static PNG image.", mime_type="image/png"
    )
    def static_binary() -> bytes:
        return tiny_png()

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="Data for one id, from a URI template.",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource(WATCHED_RESOURCE, name="watched-resource", description="A resource clients may subscribe to.")
    def watched_resource() -> str:
        return "Watched resource content."

    # -- prompts --------------------------------------------------------------------------

    @server.prompt(description="A simple prompt without arguments.")
    def test_simple_prompt() -> list[Message]:
        return [UserMessage("This is a simple prompt for testing.")]

    @server.prompt(description="A prompt with two required arguments.")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[Message]:
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @server.prompt(description="A prompt that embeds a resource.")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[Message]:
        resource = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(EmbeddedResource(type="resource", resource=resource)),
            UserMessage("Please process the embedded resource above."),
        ]

    @server.prompt(description="A prompt that carries an image.")
    def test_prompt_with_image() -> list[Message]:
        return [
            UserMessage(ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
            UserMessage("Please analyze the image above."),
        ]

    # -- completion, logging level, subscriptions -------------------------------------------

    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        candidates = ["paris", "park", "party"] if argument.name == "arg1" else []
        values = [c for c in candidates if c.startswith(argument.value)] or candidates
        return Completion(values=values, total=len(values), has_more=False)

    async def set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
        log_level["min"] = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
        return EmptyResult()

    # MCPServer has no decorators for these legacy methods; the low-level server takes them.
    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    return server


async def _elicit(ctx: Context, message: str, schema: dict[str, Any], label: str) -> CallToolResult:
    result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return _text(f"{label}: action={result.action}, content={json.dumps(result.content)}")


def _ask(message: str, field: str) -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": "string"}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _ask_name(message: str) -> ElicitRequest:
    return _ask(message, "name")


def _sample(text: str, max_tokens: int = 100) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _sampled_text(result: CreateMessageResult) -> str:
    content = result.content
    return content.text if isinstance(content, TextContent) else str(content)


def _response(ctx: Context, key: str, kind: type[Any]) -> Any:
    """The client's answer to input request ``key``, if it sent one of the right kind."""
    answer = (ctx.input_responses or {}).get(key)
    return answer if isinstance(answer, kind) else None


def _stateful_confirm(ctx: Context) -> CallToolResult | InputRequiredResult:
    if ctx.request_state == "awaiting-confirmation" and _response(ctx, "confirm", ElicitResult) is not None:
        return _text("state-ok: the request state came back intact")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    confirm = ElicitRequest(params=ElicitRequestFormParams(message="Please confirm", requested_schema=schema))
    return InputRequiredResult(input_requests={"confirm": confirm}, request_state="awaiting-confirmation")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TargetServer:
    """The target on a real ephemeral port, started and stopped inside an event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        app = build_target_server().streamable_http_app(event_store=MemoryEventStore(), retry_interval=500)
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._uvicorn.serve())
        await _until(lambda: self._uvicorn.started, self._task, f"{self.host}:{self.port}")

    async def stop(self) -> None:
        self._uvicorn.should_exit = True
        if self._task is not None:
            await self._task


async def _until(ready: Callable[[], bool], task: asyncio.Task[None], where: str) -> None:
    while not ready():
        if task.done():
            raise OSError(f"conformance target server failed to start on {where}")
        await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the MCP conformance target at http://HOST:PORT/mcp.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def serve() -> None:
        target = TargetServer(args.host, args.port)
        await target.start()
        print(f"conformance target at {target.url}", flush=True)
        assert target._task is not None
        await target._task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
