"""A 2026-07-28 client in front of a server that predates 2026-07-28 (the official server-memory
over stdio): the server answers a stateless request without ``resultType``, which the client's
validation rejects; Wicket marks such a result complete, so the real SDK client gets it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.suite import node_binary, package_file
from tests.conftest import WicketFactory, mcp_client

POLICY = """
version: 1
anonymous: {enabled: true, scope: ["*"]}
"""


@pytest.mark.parametrize("mode", ["2026-07-28", "auto", "legacy"])
async def test_a_modern_client_reads_from_an_older_stdio_server(
    mode: str, make_wicket: WicketFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORY_FILE_PATH", str(tmp_path / "memory.jsonl"))
    entry = package_file("@modelcontextprotocol/server-memory", "dist", "index.js")
    running = await make_wicket(
        "",
        POLICY,
        upstream_command=[node_binary(), str(entry)],
        upstream_transport="stdio",
        stdio_env=["MEMORY_FILE_PATH"],
    )
    async with mcp_client(running.url, mode=mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("read_graph", {})
    assert "read_graph" in tools
    assert not result.is_error and result.structured_content == {"entities": [], "relations": []}, result
