"""The health listener: probes and scrapes on their own port, readiness waits for the upstream."""

from __future__ import annotations

import sys
from typing import Any

import aiohttp

from proxy.demo.server import DemoUpstream, free_port
from tests.conftest import ROOT, RunningWicket, WicketFactory, mcp_client


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


def health_url(running: RunningWicket) -> str:
    return f"http://127.0.0.1:{running.wicket.health_port}"


async def test_health_listener_serves_probes_and_metrics_only(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, health_listen="127.0.0.1:0")
    base = health_url(running)
    assert running.wicket.health_port not in (0, running.wicket.admin_port, running.wicket.data_port)
    async with mcp_client(running.url) as client:
        await client.call_tool("get_weather", {"city": "Oslo"})

    assert await get_json(base + "/healthz") == (200, {"status": "ok"})
    status, body = await get_json(base + "/readyz")
    assert (status, body["checks"]) == (200, {"audit": "ok", "store": "ok", "upstream": "ok"})
    status, text = await get(base + "/metrics")
    assert status == 200 and 'wicket_decisions_total{decision="allow",effect="read"' in text
    # The control API, the console and the JWKS stay on the admin port.
    for path in ("/v1/sessions", "/v1/approvals", "/console", "/.well-known/jwks.json"):
        assert (await get(base + path))[0] == 404, path
    async with aiohttp.ClientSession() as http, http.post(base + "/v1/sessions", json={"agent_id": "a"}) as response:
        assert response.status in (404, 405)


async def test_no_health_listener_unless_asked(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url)
    assert running.wicket.health_port == 0
    assert (await get(running.admin_url + "/healthz"))[0] == 200


async def test_not_ready_until_the_upstream_is_reached(make_wicket: WicketFactory) -> None:
    port = free_port()
    late = DemoUpstream("127.0.0.1", port)
    running = await make_wicket(late.url, health_listen="127.0.0.1:0")
    status, body = await get_json(health_url(running) + "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["checks"]["upstream"].startswith(f"failing: cannot connect to 127.0.0.1:{port}")
    assert body["checks"]["audit"] == "ok"
    assert (await get(health_url(running) + "/healthz"))[0] == 200, "liveness does not depend on the upstream"

    await late.start()
    try:
        status, body = await get_json(health_url(running) + "/readyz")
        assert (status, body["checks"]["upstream"]) == (200, "ok")
    finally:
        await late.stop()
    # Once reached, a later upstream outage does not take the sidecar out of its Service.
    status, body = await get_json(health_url(running) + "/readyz")
    assert (status, body["checks"]["upstream"]) == (200, "ok")


async def test_stdio_upstream_is_ready_once_started(make_wicket: WicketFactory) -> None:
    command = [sys.executable, str(ROOT / "tests" / "stdio_server.py")]
    running = await make_wicket("", upstream_transport="stdio", upstream_command=command, health_listen="127.0.0.1:0")
    status, body = await get_json(health_url(running) + "/readyz")
    assert (status, body["checks"]["upstream"]) == (200, "ok")


async def test_probes_by_pod_ip_reach_the_health_listener_while_the_admin_port_checks_host(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    """The kubelet and Prometheus call the health listener as http://<pod IP>:9091; the admin port
    refuses a Host that is not its own (DNS rebinding), so probes belong on the health listener."""
    running = await make_wicket(upstream.url, health_listen="127.0.0.1:0")
    pod_ip = {"Host": f"10.244.1.17:{running.wicket.health_port}"}
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(health_url(running) + path, headers=pod_ip) as response:
                assert response.status == 200, path
            async with http.get(running.admin_url + path, headers={"Host": "rebind.attacker.example"}) as response:
                assert response.status == 403, path
