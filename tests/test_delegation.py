"""Delegation chains across three Wicket processes and three real MCP agents, every rule of the chain
refused with nothing run at the target, and federation between two deployments with introspection."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations

from proxy.credentials.delegation import link_digest, sign_link
from proxy.credentials.keys import KeyRing, load_private_key
from proxy.demo.server import DemoUpstream, Ledger, free_port
from tests.conftest import ADMIN_TOKEN, mcp_client

WICKET = [sys.executable, "-m", "proxy"]
SESSION_KEY = "s" * 64


# --------------------------------------------------------------------------- agents


@dataclass
class Agent:
    """A real MCP server acting as an agent: it records what ran and the credential it received;
    ``onward`` (a Wicket URL) makes its tools call the next agent with that credential."""

    name: str
    ledger: Ledger = field(default_factory=Ledger)
    received: list[str] = field(default_factory=list)
    onward: str | None = None
    upstream: DemoUpstream | None = None

    def build(self) -> MCPServer:
        server = MCPServer(self.name)

        async def record(ctx: Context, tool: str, **arguments: Any) -> str | None:
            self.ledger.record(tool, **arguments)
            auth = (ctx.headers or {}).get("authorization", "")
            token = auth.removeprefix("Bearer ").strip()
            self.received.append(token)
            return token

        @server.tool(annotations=ToolAnnotations(read_only_hint=True))
        async def get_report(topic: str, ctx: Context) -> str:
            """Read: a report, asking the next agent for its part when there is one."""
            token = await record(ctx, "get_report", topic=topic)
            if self.onward is None:
                return f"{self.name}: report on {topic}"
            async with mcp_client(self.onward, token=token, mode="2026-07-28") as client:
                answer = await client.call_tool("get_report", {"topic": topic})
            part = answer.content[0].text if answer.content else ""
            return f"{self.name} <- {part}" if not answer.is_error else f"{self.name} refused: {part}"

        @server.tool()
        async def set_report(topic: str, ctx: Context) -> str:
            """Write: store a report."""
            await record(ctx, "set_report", topic=topic)
            return "stored"

        return server

    async def start(self) -> str:
        self.upstream = DemoUpstream(server=(self.build(), self.ledger))
        await self.upstream.start()
        return self.upstream.url

    async def stop(self) -> None:
        if self.upstream is not None:
            await self.upstream.stop()


# --------------------------------------------------------------------------- Wicket processes


@dataclass
class Deployment:
    name: str
    issuer: str
    key_file: Path
    audit: Path
    data_port: int
    admin_port: int
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.data_port}/mcp"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def jwks(self) -> str:
        return f"http://127.0.0.1:{self.data_port}/.well-known/jwks.json"

    def ring(self) -> KeyRing:
        return KeyRing(load_private_key(self.key_file.read_bytes()))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]


def new_deployment(tmp: Path, name: str) -> Deployment:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = tmp / f"{name}.pem"
    key_file.write_bytes(key)
    return Deployment(name, f"wicket-{name}", key_file, tmp / f"{name}-audit.jsonl", free_port(), free_port())


async def launch(
    d: Deployment, upstream: str, agent: str, policy: str, tmp: Path, env: dict[str, str] | None = None
) -> None:
    policy_file = tmp / f"{d.name}-policy.yaml"
    policy_file.write_text(policy)
    environ = {
        **os.environ,
        "WICKET_SIGNING_KEY": str(d.key_file),
        "WICKET_SESSION_KEY": SESSION_KEY,
        "WICKET_ADMIN_TOKEN": ADMIN_TOKEN,
        **(env or {}),
    }
    argv = [*WICKET, "run", "--upstream", upstream, "--policy", str(policy_file), "--agent-name", agent]
    argv += ["--credential-issuer", d.issuer, "--listen", f"127.0.0.1:{d.data_port}"]
    argv += ["--admin-listen", f"127.0.0.1:{d.admin_port}", "--audit-log", str(d.audit), "--log-level", "warning"]
    argv += ["--store", "memory"]  # separate deployments: a REDIS_URL in the environment must not join them
    d.process = _spawn(argv, environ)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if d.process.poll() is not None:
                raise AssertionError(f"wicket {d.name} exited: {d.process.stderr.read() if d.process.stderr else ''}")
            try:
                async with http.get(d.admin + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"wicket {d.name} did not start")


def _spawn(argv: list[str], environ: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(*deployments: Deployment) -> None:
    for d in deployments:
        if d.process is not None and d.process.poll() is None:
            d.process.send_signal(signal.SIGTERM)
    for d in deployments:
        if d.process is not None:
            try:
                d.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.process.kill()


async def session_token(d: Deployment, agent: str, **fields: Any) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            d.admin + "/v1/sessions",
            json={"agent_id": agent, **fields},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])


def trust(*issuers: Deployment, extra: str = "") -> str:
    entries = "".join(f"  - issuer: {d.issuer}\n    jwks_url: {d.jwks}\n{extra}" for d in issuers)
    return f"trust:\n{entries}" if issuers else ""


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --------------------------------------------------------------------------- the three-hop chain


@dataclass
class Chain:
    a: Deployment
    b: Deployment
    c: Deployment
    agents: dict[str, Agent]
    planner_token: str


@asynccontextmanager
async def three_hops(tmp: Path, c_policy_extra: str = "") -> AsyncIterator[Chain]:
    agents = {n: Agent(n) for n in ("agent-a", "agent-b", "agent-c")}
    urls = {n: await agent.start() for n, agent in agents.items()}
    a, b, c = (new_deployment(tmp, n) for n in ("a", "b", "c"))
    agents["agent-a"].onward, agents["agent-b"].onward = b.url, c.url
    base = "version: 1\nanonymous: {enabled: false}\n"
    try:
        await launch(a, urls["agent-a"], "agent-a", base, tmp)
        await launch(b, urls["agent-b"], "agent-b", base + trust(a), tmp)
        await launch(c, urls["agent-c"], "agent-c", base + trust(a, b) + c_policy_extra, tmp)
        token = await session_token(a, "planner", scope=["get_*"])
        yield Chain(a, b, c, agents, token)
    finally:
        stop(a, b, c)
        for agent in agents.values():
            await agent.stop()


async def test_three_hops_carry_a_verified_chain_to_the_last_agent(tmp_path: Path) -> None:
    async with three_hops(tmp_path) as chain:
        async with mcp_client(chain.a.url, token=chain.planner_token, mode="2026-07-28") as client:
            answer = await client.call_tool("get_report", {"topic": "q3"})
        assert not answer.is_error, answer
        assert answer.content[0].text == "agent-a <- agent-b <- agent-c: report on q3"
        assert chain.agents["agent-c"].ledger.names() == ["get_report"]

        # What C received: an RFC 8693 credential with the three links, origin first.
        credential = claims(chain.agents["agent-c"].received[-1])
        assert credential["sub"] == "planner"
        assert credential["act"] == {"sub": "agent-b", "act": {"sub": "agent-a"}}
        links = [claims(raw) for raw in credential["delegation"]]
        assert [(link["iss"], link["sub"], link["aud"]) for link in links] == [
            ("wicket-a", "planner", "agent-a"),
            ("wicket-b", "agent-a", "agent-b"),
            ("wicket-c", "agent-b", "agent-c"),
        ]
        assert links[0]["prev"] == "" and links[1]["prev"] == link_digest(credential["delegation"][0])
        assert all(link["scope"] == "get_*" for link in links), "every hop keeps the planner's narrow ceiling"
        assert [link["exp"] for link in links] == sorted((link["exp"] for link in links), reverse=True)

        # C's audit names every hop of the call.
        [record] = [e for e in chain.c.events() if e["event"] == "decision" and e["action"] == "tools/call:get_report"]
        assert record["agent_id"] == "agent-b"
        assert record["delegation"]["origin"] == "planner"
        assert record["delegation"]["agents"] == ["planner", "agent-a", "agent-b"]
        assert record["delegation"]["depth"] == 2
        assert "eyJ" not in json.dumps(record), "the signed links themselves are never audited"

        # Accountability for that session shows the chain behind each call.
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{chain.c.admin}/v1/sessions/{record['session_id']}/accountability",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as response,
        ):
            body = await response.json()
        assert response.status == 200, body
        assert "planner" in json.dumps(body)


# --------------------------------------------------------------------------- every rule, refused


def _link(ring: KeyRing, issuer: str, sub: str, aud: str, scope: str, exp: int, prev: str | None) -> str:
    now = int(time.time())
    return sign_link(
        ring.sign, issuer=issuer, sub=sub, aud=aud, scope=scope.split(), exp=exp, previous=prev, now=now
    ).raw


def _credential(ring: KeyRing, issuer: str, links: list[str], sub: str, exp: int) -> str:
    now = int(time.time())
    body = {"iss": issuer, "sub": sub, "aud": "x", "jti": f"cred-{now}-{len(links)}", "iat": now, "exp": exp}
    return ring.sign({**body, "delegation": links})


def _tamper(raw: str, **changes: Any) -> str:
    header, payload, signature = raw.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


async def _call_c(c: Deployment, token: str) -> tuple[int, str]:
    """Present ``token`` to Wicket C as agent B would; the HTTP status and the refusal text."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    params = {"name": "get_report", "arguments": {"topic": "t"}, "_meta": meta}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "get_report",
    }
    async with aiohttp.ClientSession() as http, http.post(c.url, json=body, headers=headers) as response:
        return response.status, await response.text()


async def test_every_chain_rule_refuses_and_nothing_runs_at_the_target(tmp_path: Path) -> None:
    async with three_hops(tmp_path) as chain:
        a_ring, b_ring = chain.a.ring(), chain.b.ring()
        soon, later, past = int(time.time()) + 120, int(time.time()) + 300, int(time.time()) - 60

        def by_a(sub: str, aud: str, exp: int, prev: str | None = None, scope: str = "get_*") -> str:
            return _link(a_ring, "wicket-a", sub, aud, scope, exp, prev)

        def by_b(sub: str, aud: str, exp: int, prev: str | None = None, scope: str = "get_*", ring: Any = None) -> str:
            return _link(ring or b_ring, "wicket-b", sub, aud, scope, exp, prev)

        def as_b(*links: str) -> str:
            return _credential(b_ring, "wicket-b", list(links), "planner", soon)

        ok1 = by_a("planner", "agent-a", later)
        ok2 = by_b("agent-a", "agent-b", soon, ok1)

        # A well-formed two-link chain passes: the baseline the refusals below differ from.
        status, text = await _call_c(chain.c, as_b(ok1, ok2))
        assert status == 200 and "agent-c: report" in text, text
        assert chain.agents["agent-c"].ledger.names() == ["get_report"]

        # Five links (alternating trusted issuers, five distinct agents): C would add the sixth.
        hops = ["o", "h1", "h2", "h3", "h4", "agent-b"]
        five: list[str] = []
        for i in range(5):
            make = by_a if i % 2 == 0 else by_b
            five.append(make(hops[i], hops[i + 1], later - i, five[-1] if five else None))
        other_first = by_a("planner", "agent-a", later)
        cases = {
            "sixth hop": (_credential(a_ring, "wicket-a", five, "o", soon), "max_hops"),
            "scope widens": (as_b(ok1, by_b("agent-a", "agent-b", soon, ok1, scope="*")), "narrowing"),
            "link expired": (as_b(by_a("planner", "agent-a", past)), "expiry"),
            "agent twice": (as_b(ok1, by_b("agent-a", "planner", soon, ok1)), "cycle"),
            "unknown key": (as_b(ok1, by_b("agent-a", "agent-b", soon, ok1, ring=KeyRing.generate())), "signature"),
            "prev from another chain": (as_b(ok1, by_b("agent-a", "agent-b", soon, other_first)), "prev"),
            "middle link altered": (
                as_b(ok1, _tamper(ok2, scope="*"), by_b("agent-b", "agent-x", soon, ok2)),
                "signature",
            ),
        }
        for name, (token, rule) in cases.items():
            status, text = await _call_c(chain.c, token)
            assert f"rule: {rule}" in text, f"{name}: {status} {text}"
            if rule != "max_hops":  # refused as a caller (401), and audited as such
                assert status == 401
                assert any(e["event"] == "identity" and f"rule: {rule}" in e["reason"] for e in chain.c.events()), name
        assert chain.agents["agent-c"].ledger.names() == ["get_report"], "no refused chain ran anything at C"
        refused = [e for e in chain.c.events() if "rule: max_hops" in str(e.get("reason", ""))]
        assert refused and refused[0]["decision"] == "deny" and refused[0]["delegation"]["depth"] == 5


async def test_a_policy_rule_limits_chains_by_origin(tmp_path: Path) -> None:
    rule = "delegation:\n  rules:\n    - tools: ['get_report']\n      origins: ['billing-bot']\n"
    async with three_hops(tmp_path, c_policy_extra=rule) as chain:
        async with mcp_client(chain.a.url, token=chain.planner_token, mode="2026-07-28") as client:
            answer = await client.call_tool("get_report", {"topic": "q3"})
        assert "agent-b refused" in answer.content[0].text and "starts at 'planner'" in answer.content[0].text
        assert chain.agents["agent-c"].ledger.names() == []


# --------------------------------------------------------------------------- federation


async def _introspect(d: Deployment, token: str, client: tuple[str, str] | None) -> tuple[int, dict[str, Any]]:
    headers = {}
    if client is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(d.admin + "/v1/introspect", data={"token": token}, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_federation_admits_within_trust_and_a_revocation_at_the_issuer_lands(tmp_path: Path) -> None:
    x, y = Agent("agent-x"), Agent("agent-y")
    x_url, y_url = await x.start(), await y.start()
    p, q = new_deployment(tmp_path, "p"), new_deployment(tmp_path, "q")
    x.onward = q.url
    partner = ("org-q", "q-client-secret-0123456789")
    try:
        base = "version: 1\nanonymous: {enabled: false}\n"
        p_policy = base + "introspection:\n  clients:\n    - {id: org-q, secret_env: ORG_Q_SECRET}\n"
        await launch(p, x_url, "agent-x", p_policy, tmp_path, env={"ORG_Q_SECRET": partner[1]})
        limits = "    agents: ['agent-x']\n    scopes: ['get_*']\n"
        introspection = (
            f"    introspection:\n      url: {p.admin}/v1/introspect\n      client_id: org-q\n"
            "      client_secret_env: P_INTROSPECTION_SECRET\n      cache_seconds: 1\n"
        )
        q_policy = base + trust(p, extra=limits + introspection)
        await launch(q, y_url, "agent-y", q_policy, tmp_path, env={"P_INTROSPECTION_SECRET": partner[1]})
        token = await session_token(p, "planner")  # P's own ceiling: everything

        async with mcp_client(p.url, token=token, mode="2026-07-28") as client:
            admitted = await client.call_tool("get_report", {"topic": "joint"})
        assert admitted.content[0].text == "agent-x <- agent-y: report on joint"
        credential = x.received[-1]

        # Beyond the trust entry's scopes, whatever the token says: the partner's session ceiling is get_*.
        async with mcp_client(q.url, token=credential, mode="2026-07-28") as as_x:
            outside = await as_x.call_tool("set_report", {"topic": "joint"})
        assert outside.is_error and "scope" in outside.content[0].text
        assert y.ledger.names() == ["get_report"]

        # Introspection needs the partner's credential; an unknown token is simply inactive.
        assert (await _introspect(p, credential, None))[0] == 401
        assert (await _introspect(p, credential, ("org-q", "wrong")))[0] == 401
        status, answer = await _introspect(p, credential, partner)
        assert status == 200 and answer["active"] is True and answer["iss"] == "wicket-p"
        assert (await _introspect(p, "not.a.token", partner))[1] == {
            "active": False,
            "wicket_reason": "not a token this Wicket issued",
        }

        # Agent X is revoked at its issuer: Q refuses it once its cached answer (1 s) runs out.
        revocation = {"kind": "agent", "id": "agent-x"}
        operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(p.admin + "/v1/revocations", json=revocation, headers=operator) as response,
        ):
            assert response.status == 201, await response.text()
        revoked_at = time.monotonic()
        assert (await _introspect(p, credential, partner))[1]["active"] is False
        refused_after = None
        refusal = ""
        async with mcp_client(q.url, token=credential, mode="2026-07-28") as as_x:
            for _ in range(100):
                try:
                    await as_x.call_tool("get_report", {"topic": "again"})
                except MCPError as exc:  # 401: the caller itself is refused, before any decision
                    refused_after, refusal = time.monotonic() - revoked_at, str(exc)
                    break
                await asyncio.sleep(0.05)
        assert refused_after is not None, "a revoked partner agent must be refused once the cache expires"
        assert "wicket-p reports the credential inactive" in refusal and "agent-x" in refusal
        print(f"federation revocation reached the partner in {refused_after * 1000:.0f} ms (cache_seconds 1)")
        ran = len(y.ledger.calls)
        async with mcp_client(q.url, token=credential, mode="2026-07-28") as as_x:
            with pytest.raises(MCPError, match="inactive"):
                await as_x.call_tool("get_report", {"topic": "after"})
        assert len(y.ledger.calls) == ran, "nothing the revoked agent sent after the refusal ran at Y"
    finally:
        stop(p, q)
        await x.stop()
        await y.stop()


async def test_tokens_of_untrusted_issuers_are_refused(tmp_path: Path) -> None:
    y = Agent("agent-y")
    y_url = await y.start()
    q = new_deployment(tmp_path, "q")
    try:
        await launch(q, y_url, "agent-y", "version: 1\nanonymous: {enabled: false}\n", tmp_path)
        stranger = KeyRing.generate()
        link = _link(stranger, "wicket-stranger", "o", "agent-b", "get_*", int(time.time()) + 60, None)
        status, text = await _call_c(q, _credential(stranger, "wicket-stranger", [link], "o", int(time.time()) + 60))
        assert status == 401, text
        assert y.ledger.names() == []
    finally:
        stop(q)
        await y.stop()
