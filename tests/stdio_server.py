"""A small stdio MCP server for the bridge tests: ``python tests/stdio_server.py``.

Its state lives in its own process, so the tests can tell processes apart (``get_counter``
answers with the pid and a per-process count) and prove what a process really ran
(``get_ledger``). It logs to stderr, can leave a grandchild behind (``get_helper_pid``) and
can die on request (``exit_now``). ``--describe TEXT`` changes ``get_counter``'s description
(another version of the same server); ``get_environment`` shows what the child inherited;
``tidy_up`` and ``recall`` carry no keyword in their names, only annotations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp_types import ToolAnnotations
from pydantic import BaseModel

server = MCPServer("wicket-stdio-test", instructions="Per-process state for Wicket's bridge tests.")
ledger: list[str] = []
helpers: list[subprocess.Popen[bytes]] = []


def note(name: str) -> None:
    ledger.append(name)
    print(f"stdio-test-server: ran {name}", file=sys.stderr, flush=True)


class Colour(BaseModel):
    colour: str


def ask_colour() -> Elicit[Colour]:
    """The elicitation behind ``get_colour`` (module level: MCPServer resolves it by name)."""
    return Elicit("Which colour?", Colour)


DESCRIBE = sys.argv[sys.argv.index("--describe") + 1] if "--describe" in sys.argv[:-1] else None


@server.tool(description=DESCRIBE or "Read: this process's id and how often this tool ran in it.")
def get_counter() -> str:
    note("get_counter")
    return f"pid={os.getpid()} count={ledger.count('get_counter')}"


@server.tool()
def get_environment() -> str:
    """Read: the names of the environment variables this process was started with (a JSON list)."""
    return json.dumps(sorted(os.environ))


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
def tidy_up(path: str) -> str:
    """Removes what lies under ``path``: destructive by its annotations, not by its name."""
    note("tidy_up")
    return f"tidied {path}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def recall(topic: str) -> str:
    """Answers from memory; read-only by its annotations, not by its name."""
    note("recall")
    return f"pid={os.getpid()} recalled {topic}"


@server.tool()
def get_ledger() -> list[str]:
    """Read: every tool this process ran, in order."""
    return list(ledger)


@server.tool()
def drop_table(table: str) -> str:
    """Destructive: Wicket must never let a read-only session reach it."""
    note("drop_table")
    return f"dropped {table}"


@server.tool()
def get_helper_pid() -> int:
    """Start a grandchild (``sleep``) in this server's process group and return its pid."""
    note("get_helper_pid")
    helper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    helpers.append(helper)
    return helper.pid


@server.tool()
async def get_progress(steps: int, ctx: Context) -> str:
    """Read: report ``steps`` progress notifications, then answer."""
    note("get_progress")
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    return f"pid={os.getpid()} done"


@server.tool()
async def get_colour(colour: Annotated[Colour, Resolve(ask_colour)]) -> str:
    """Read: ask the client (elicitation) and repeat its answer with this process's id."""
    note("get_colour")
    return f"pid={os.getpid()} colour={colour.colour}"


@server.tool()
def get_deep(depth: int) -> dict[str, Any]:
    """Answer with structured content nested ``depth`` levels deep."""
    note("get_deep")
    tree: Any = 1
    for _ in range(depth):
        tree = [tree]
    return {"tree": tree}


@server.tool()
def exit_now(code: int) -> str:
    """Die at once with exit status ``code``, without answering."""
    print(f"stdio-test-server: exiting with code {code}", file=sys.stderr, flush=True)
    os._exit(code)


if __name__ == "__main__":
    print(f"stdio-test-server: ready (pid {os.getpid()})", file=sys.stderr, flush=True)
    server.run()
