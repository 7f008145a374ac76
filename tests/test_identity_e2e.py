"""Agents identified by the operator's IdP, and RFC 8693 exchange credentials, through the whole proxy."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests import oidc_issuer as issuer_module
from tests.conftest import RunningWicket, WicketFactory
from tests.oidc_issuer import OidcIssuer

oidc_issuer = issuer_module.oidc_issuer


def exchange_policy(issuer: OidcIssuer, upstream_url: str) -> str:
    return f"""
version: 1
upstreams:
  - url: "{upstream_url}"
    credentials:
      mode: exchange
      token_endpoint: "{issuer.token_endpoint}"
      client_id: "{issuer.client_id}"
      client_secret_env: EXCHANGE_SECRET
      audience: "https://notes.example"
      scope: ["notes:read"]
"""


async def exchanging_wicket(issuer: OidcIssuer, upstream_url: str, make_wicket: WicketFactory) -> RunningWicket:
    """Wicket admitting the issuer's agents and exchanging their JWTs for the upstream's tokens."""
    return await make_wicket(
        upstream_url,
        exchange_policy(issuer, upstream_url),
        environ={"EXCHANGE_SECRET": issuer.client_secret},
        oidc_issuer=issuer.url,
        oidc_audience="wicket",
    )


async def test_exchange_mode_end_to_end(
    oidc_issuer: OidcIssuer, echo_upstream: tuple[str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    url, seen = echo_upstream
    running = await exchanging_wicket(oidc_issuer, url, make_wicket)
    agent_jwt = oidc_issuer.mint(sub="billing-bot", aud="wicket", scope="notes:read notes:write tool:get_*")
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_weather", "arguments": {"city": "Oslo"}},
    }
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {agent_jwt}"}
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        result: Any = await response.json()
    assert result["result"]["isError"] is False

    forwarded = {k.lower(): v for k, v in seen[-1].items()}
    assert agent_jwt not in json.dumps(seen), "the agent's own JWT never travels upstream"
    exchanged = forwarded["authorization"].removeprefix("Bearer ")
    claims = oidc_issuer.decode(exchanged, "https://notes.example")
    assert claims["sub"] == "billing-bot" and claims["scope"] == "notes:read"
    assert oidc_issuer.exchanges[-1].status == 200

    decision = next(e for e in running.audit_events() if e["event"] == "decision")
    assert decision["agent_id"] == "billing-bot" and decision["decision"] == "allow"
    outcome = next(e for e in running.audit_events() if e["event"] == "outcome")
    assert outcome["credential_mode"] == "exchange"
    raw = running.audit_path.read_text()
    assert agent_jwt not in raw and exchanged not in raw


async def test_failed_exchange_fails_the_call_closed(
    oidc_issuer: OidcIssuer, echo_upstream: tuple[str, list[dict[str, str]]], make_wicket: WicketFactory
) -> None:
    url, seen = echo_upstream
    running = await exchanging_wicket(oidc_issuer, url, make_wicket)
    oidc_issuer.fail_exchange = (400, "invalid_grant")
    agent_jwt = oidc_issuer.mint(sub="billing-bot", aud="wicket", scope="notes:read")
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_weather", "arguments": {}}}
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {agent_jwt}"}
    async with aiohttp.ClientSession() as http, http.post(running.url, json=body, headers=headers) as response:
        assert response.status == 502
        payload = await response.json()
    assert "could not obtain an upstream credential" in payload["error"]["message"]
    assert seen == [], "nothing reached the upstream"
