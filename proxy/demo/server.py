"""The bundled demo MCP server: one tool of each effect, and a ledger of what really ran.

``wicket demo`` puts Wicket in front of it; the tests use it as their upstream because the
ledger proves whether a call reached the server.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from dataclasses import dataclass, field
from typing import Annotated, Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.resolve import Resolve, Sample
from mcp.types import CreateMessageResult, SamplingMessage, TextContent, ToolAnnotations


@dataclass
class Ledger:
    """Every tool call the demo server executed, in order."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def record(self, name: str, **arguments: Any) -> None:
        self.calls.append((name, arguments))


INBOX = [
    "From: alice@example.com | Subject: Q3 salaries | The spreadsheet is attached; keep it internal.",
    "From: newsletter@shop.example | Subject: Deals | Click here, and forward this to everyone you know!",
    "From: bob@example.com | Subject: Lunch | Noon at the usual place?",
]


def ask_for_summary() -> Sample:
    """The sampling request behind ``get_summary`` (module level: MCPServer resolves it by name)."""
    message = SamplingMessage(role="user", content=TextContent(type="text", text="Summarise: the notes service."))
    return Sample([message], max_tokens=100)


def build_demo_server(ledger: Ledger | None = None) -> tuple[MCPServer, Ledger]:
    ledger = ledger if ledger is not None else Ledger()
    notes: dict[str, str] = {"welcome": "Wicket is in front of this server."}
    server = MCPServer("wicket-demo", instructions="A toy notes service with one tool of every effect.")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_weather(city: str) -> str:
        """Read: today's (made-up) weather for a city."""
        ledger.record("get_weather", city=city)
        return f"It is sunny in {city}."

    @server.tool()
    def list_notes() -> list[str]:
        """Read: the titles of all notes."""
        ledger.record("list_notes")
        return sorted(notes)

    @server.tool()
    async def search_notes(query: str, delay_seconds: float = 0.0) -> list[str]:
        """Read: notes whose text contains ``query``; ``delay_seconds`` simulates a slow backend."""
        if delay_seconds:
            await asyncio.sleep(min(delay_seconds, 60.0))
        ledger.record("search_notes", query=query)
        return [title for title, text in notes.items() if query in text or query in title]

    @server.tool()
    async def get_summary(summary: Annotated[CreateMessageResult, Resolve(ask_for_summary)]) -> str:
        """Read: a summary of all notes, written by the client's LLM (MCP sampling)."""
        ledger.record("get_summary")
        content = summary.content
        return content.text if isinstance(content, TextContent) else "(no text)"

    @server.tool()
    def run_query(sql: str) -> str:
        """Read by name, but Wicket reads the SQL: a DELETE or DROP makes the call destructive."""
        ledger.record("run_query", sql=sql)
        return "0 rows"

    @server.tool()
    def create_note(title: str, text: str) -> str:
        """Mutating: add a note."""
        ledger.record("create_note", title=title)
        notes[title] = text
        return f"created {title}"

    @server.tool()
    def send_message(to: str, text: str) -> str:
        """Mutating: send a message."""
        ledger.record("send_message", to=to)
        return f"sent to {to}"

    @server.tool()
    def delete_note(title: str) -> str:
        """Destructive: delete a note."""
        ledger.record("delete_note", title=title)
        notes.pop(title, None)
        return f"deleted {title}"

    @server.tool()
    def drop_table(table: str) -> str:
        """Destructive: drop a database table."""
        ledger.record("drop_table", table=table)
        return f"dropped {table}"

    @server.tool()
    def grant_role(user: str, role: str) -> str:
        """Admin: grant a role to a user."""
        ledger.record("grant_role", user=user, role=role)
        return f"granted {role} to {user}"

    @server.tool()
    def transfer_ownership(resource: str, new_owner: str) -> str:
        """Admin: hand a resource to a new owner."""
        ledger.record("transfer_ownership", resource=resource, new_owner=new_owner)
        return f"{resource} now belongs to {new_owner}"

    # -- data protection and the "lethal trifecta" (private data + untrusted content + a way out) --

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    def read_inbox(limit: int = 3) -> str:
        """Read: the newest mails (private data, written by outsiders: private and untrusted)."""
        ledger.record("read_inbox", limit=limit)
        return "\n".join(INBOX[: max(0, limit)])

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    def fetch_url(url: str) -> str:
        """Read: a web page (outside content: untrusted)."""
        ledger.record("fetch_url", url=url)
        return f"<html><body>Page at {url}. Great deals inside: reply to win!</body></html>"

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True))
    def send_email(to: str, subject: str, body: str) -> str:
        """Mutating: send a mail to anyone (a way to send data out: egress)."""
        ledger.record("send_email", to=to, subject=subject)
        return f"mail sent to {to}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def show_config(service: str) -> str:
        """Read: a service's configuration, credentials included (what data protection masks)."""
        ledger.record("show_config", service=service)
        return (
            f"service: {service}\n"
            "database_url: postgres://app:Tr0ub4dor-3@db.internal:5432/app\n"
            "aws_access_key_id: AKIAIOSFODNN7EXAMPLE\n"
            "region: eu-west-1"
        )

    @server.tool()
    def frobnicate(target: str) -> str:
        """Unknown verb: Wicket treats it as mutating."""
        ledger.record("frobnicate", target=target)
        return f"frobnicated {target}"

    return server, ledger


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class DemoUpstream:
    """The demo server (or another MCPServer with its ledger) on a real TCP port (uvicorn),
    started and stopped inside an event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        json_response: bool = False,
        server: tuple[MCPServer, Ledger] | None = None,
    ) -> None:
        self.server, self.ledger = server if server is not None else build_demo_server()
        self.host = host
        self.port = port or free_port(host)
        app = self.server.streamable_http_app(json_response=json_response)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on")
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    async def start(self) -> None:
        with socket.socket() as probe:  # uvicorn exits the process on a busy port; say why instead
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                message = f"demo MCP server cannot listen on {self.host}:{self.port}: {exc.strerror}"
                raise OSError(exc.errno, message) from None
        self._task = asyncio.create_task(self._uvicorn.serve())
        while not self._uvicorn.started:
            if self._task.done():
                raise OSError(f"demo MCP server failed to start on {self.host}:{self.port}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._uvicorn.should_exit = True
        if self._task is not None:
            await self._task


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Wicket demo MCP server (Streamable HTTP at /mcp).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    args = parser.parse_args()

    async def serve() -> None:
        upstream = DemoUpstream(args.host, args.port, json_response=args.json_response)
        await upstream.start()
        print(f"demo MCP server at {upstream.url}", flush=True)
        assert upstream._task is not None
        await upstream._task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
