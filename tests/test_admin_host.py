"""The admin port checks Host like the data port (DNS rebinding): a request naming a foreign host
is refused before any handler runs, even with the operator token."""

from __future__ import annotations

import aiohttp

from proxy.adapters.http_guard import admin_origin_policy
from proxy.demo.server import DemoUpstream
from tests.conftest import ADMIN_TOKEN, RunningWicket, WicketFactory


async def create_session(running: RunningWicket, host: str) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Host": host}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{running.admin_url}/v1/sessions", json={"agent_id": "alice"}, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_a_foreign_host_is_refused_and_local_names_are_served(
    upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(upstream.url, "version: 1\n")
    port = running.wicket.admin_port
    status, body = await create_session(running, "attacker.example")
    assert status == 403 and "attacker.example" in str(body["error"]) and "--admin-allowed-host" in str(body["error"])
    status, body = await create_session(running, f"attacker.example:{port}")
    assert status == 403
    assert [e for e in running.audit_events() if e["event"] == "session"] == [], "nothing was issued"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        status, body = await create_session(running, host)
        assert status == 201, (host, body)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.admin_url}/metrics", headers={"Host": "rebound.example"}) as response:
            assert response.status == 403
        async with http.get(
            f"{running.admin_url}/.well-known/jwks.json", headers={"Host": "wicket.ns.svc"}
        ) as response:
            assert response.status == 200, "public keys are served under any name (upstreams fetch them)"
        async with http.get(f"{running.admin_url}/metrics") as response:
            assert response.status == 200
            assert 'wicket_http_rejections_total{reason="origin"} 3.0' in await response.text()


async def test_configured_admin_hosts_are_served(upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    running = await make_wicket(upstream.url, "version: 1\n", admin_allowed_hosts=["wicket-admin.internal"])
    assert (await create_session(running, "wicket-admin.internal:9090"))[0] == 201
    assert (await create_session(running, "other.internal"))[0] == 403


def test_the_listen_address_is_allowed_unless_it_is_a_wildcard() -> None:
    assert admin_origin_policy("10.0.0.7", []).host_problem("10.0.0.7:9090") is None
    assert admin_origin_policy("::1", []).host_problem("[::1]:9090") is None
    assert admin_origin_policy("fd00::7", []).host_problem("[fd00::7]:9090") is None
    assert admin_origin_policy("0.0.0.0", []).host_problem("0.0.0.0:9090") is not None
    assert admin_origin_policy("0.0.0.0", []).host_problem("10.0.0.7:9090") is not None
    assert admin_origin_policy("0.0.0.0", ["*"]).host_problem("anything") is None
    assert admin_origin_policy("127.0.0.1", []).host_problem(None) is not None
