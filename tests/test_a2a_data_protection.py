"""Data protection of A2A answers, with the real a2a-sdk on both sides: the echo agent answers with
whatever it was sent, so a message carrying a fake AWS key and GitHub token (let through: the policy
only audits secrets in arguments here) comes back as an artifact, a task's history and status text.
The client must get it masked on both bindings, unary and streaming; a clean answer must reach it
exactly as the agent sent it; under ``deny`` the answer is withheld."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import httpx
import pytest
from a2a.client import A2AClientError, ClientConfig, create_client
from a2a.helpers import get_stream_response_text, new_text_message
from a2a.types import Role, SendMessageRequest

from proxy.demo.a2a_agent import JSONRPC_PATH, REST_PREFIX, DemoA2AAgent
from tests import test_a2a
from tests.conftest import RunningWicket, WicketFactory
from tests.test_a2a import base_of

agent = test_a2a.agent  # the echo agent fixture

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
LEAKY = f"deploy with {AWS_KEY} and {GITHUB_TOKEN} please"

POLICY = """
version: 1
anonymous: {enabled: true, scope: ["*"]}
data_protection:
  secrets: {arguments: audit, results: %s}
"""


@pytest.fixture
async def front(agent: DemoA2AAgent, make_wicket: WicketFactory) -> RunningWicket:
    return await make_wicket("", POLICY % "mask", a2a_upstream=agent.base)


async def token_for(running: RunningWicket) -> str:
    created = await running.create_session("planner", mode="read-write")
    return str(created["token"])


def wire_message(text: str, message_id: str) -> dict[str, Any]:
    return {"messageId": message_id, "role": "ROLE_USER", "parts": [{"text": text}]}


async def post(url: str, body: Any, token: str | None) -> tuple[int, bytes]:
    headers = {"A2A-Version": "1.0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        return response.status, await response.read()


async def get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"A2A-Version": "1.0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.read()


def outcomes(running: RunningWicket) -> list[dict[str, Any]]:
    return [e for e in running.audit_events() if e.get("event") == "outcome"]


def assert_masked(text: str) -> None:
    assert AWS_KEY not in text and GITHUB_TOKEN not in text, text
    assert "[REDACTED:aws_access_key]" in text and "[REDACTED:github_token]" in text, text


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
@pytest.mark.parametrize("streaming", [False, True])
async def test_secrets_in_an_agent_answer_arrive_masked(
    front: RunningWicket, agent: DemoA2AAgent, binding: str, streaming: bool
) -> None:
    token = await token_for(front)
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    config = ClientConfig(streaming=streaming, supported_protocol_bindings=[binding], httpx_client=http)
    client = await create_client(base_of(front), client_config=config)
    message = new_text_message(LEAKY, role=Role.ROLE_USER)
    texts = [
        get_stream_response_text(event) async for event in client.send_message(SendMessageRequest(message=message))
    ]
    await client.close()
    assert agent.ledger.texts() == [LEAKY]  # the agent had the secrets and answered with them
    answer = "".join(texts)
    assert "echo: deploy with" in answer
    assert_masked(answer)
    [outcome] = outcomes(front)
    record = outcome["data_protection"]
    scans = record["scans"] if "scans" in record else [record]  # a stream is screened event by event
    kinds = {kind for scan in scans for kind in scan["findings"]}
    assert kinds == {"aws_access_key", "github_token"}
    assert all(scan["direction"] == "results" and scan["action"] == "mask" for scan in scans)
    fingerprints = [fp for scan in scans for f in scan["findings"].values() for fp in f["fingerprints"]]
    assert fingerprints and all(fp.startswith("hmac-sha256:") for fp in fingerprints)
    audit = front.audit_path.read_text()
    assert AWS_KEY not in audit and GITHUB_TOKEN not in audit  # kinds, counts, fingerprints: never a value


async def test_a_task_read_back_is_masked_and_a_clean_one_is_untouched(
    front: RunningWicket, agent: DemoA2AAgent
) -> None:
    """GetTask returns the task's history and artifacts: through Wicket the leaky one is masked on both
    bindings (still valid JSON of the same shape), the clean one is byte for byte what the agent says."""
    token = await token_for(front)
    tasks: dict[str, str] = {}
    for text in (LEAKY, "a harmless request"):
        body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": wire_message(text, text[:6])}}
        status, raw = await post(base_of(front) + JSONRPC_PATH, body, token)
        assert status == 200
        answer = json.loads(raw)["result"]
        tasks[text] = answer["task"]["id"]
        if text == LEAKY:
            assert_masked(raw.decode())
    leaky, clean = tasks[LEAKY], tasks["a harmless request"]
    for task_id, masked in ((leaky, True), (clean, False)):
        body = {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task_id}}
        direct_rpc = (await post(agent.base + JSONRPC_PATH, body, None))[1]
        via_rpc = (await post(base_of(front) + JSONRPC_PATH, body, token))[1]
        direct_rest = (await get(agent.base + REST_PREFIX + f"/tasks/{task_id}", None))[1]
        status, via_rest = await get(base_of(front) + REST_PREFIX + f"/tasks/{task_id}", token)
        assert status == 200
        if not masked:
            assert (via_rpc, via_rest) == (direct_rpc, direct_rest)
            continue
        assert AWS_KEY in direct_rpc.decode() and AWS_KEY in direct_rest.decode()
        for direct, via in (
            (json.loads(direct_rpc)["result"], json.loads(via_rpc)["result"]),
            (json.loads(direct_rest), json.loads(via_rest)),
        ):
            assert_masked(json.dumps(via))
            assert via["id"] == direct["id"] and via["status"]["state"] == direct["status"]["state"]
            assert len(via["history"]) == len(direct["history"]) and len(via["artifacts"]) == len(direct["artifacts"])
    kinds = [sorted(o["data_protection"]["findings"]) for o in outcomes(front) if "data_protection" in o]
    assert kinds == [["aws_access_key", "github_token"]] * 3  # the send and the two reads of the leaky task


@pytest.mark.parametrize("streaming", [False, True])
async def test_deny_withholds_the_answer(agent: DemoA2AAgent, make_wicket: WicketFactory, streaming: bool) -> None:
    front = await make_wicket("", POLICY % "deny", a2a_upstream=agent.base)
    token = await token_for(front)
    method = "SendStreamingMessage" if streaming else "SendMessage"
    body = {"jsonrpc": "2.0", "id": 3, "method": method, "params": {"message": wire_message(LEAKY, "deny-rpc")}}
    status, raw = await post(base_of(front) + JSONRPC_PATH, body, token)
    assert status == 200
    assert AWS_KEY not in raw.decode() and GITHUB_TOKEN not in raw.decode()
    assert b"-32050" in raw and b"withheld the agent's answer" in raw
    rest_path = "/message:stream" if streaming else "/message:send"
    body = {"message": wire_message(LEAKY, "deny-rest")}
    status, raw = await post(base_of(front) + REST_PREFIX + rest_path, body, token)
    assert AWS_KEY not in raw.decode() and GITHUB_TOKEN not in raw.decode()
    assert b"withheld the agent's answer" in raw
    assert status == (200 if streaming else 403)  # a stream has started before its event is read
    assert agent.ledger.texts() == [LEAKY, LEAKY]
    results = [o for o in outcomes(front)]
    assert [o["status"] for o in results] == ["error", "error"]
    assert all(o["data_protection"] for o in results)
    # The SDK client sees a refusal, never the answer.
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    config = ClientConfig(streaming=streaming, supported_protocol_bindings=["JSONRPC"], httpx_client=http)
    client = await create_client(base_of(front), client_config=config)
    with pytest.raises(A2AClientError):
        async for _ in client.send_message(SendMessageRequest(message=new_text_message(LEAKY, role=Role.ROLE_USER))):
            pass
    await client.close()


def test_every_part_shape_of_both_versions_is_screened() -> None:
    """0.3 tags parts with ``kind``; 1.0 does not. Text, structured data (key-aware) and file URLs are
    screened wherever messages and artifacts sit; file bytes are media and stay as they are."""
    from proxy.core.policy import parse_policy_text
    from proxy.core.protection import Scanner

    plan = parse_policy_text("version: 1\n", "t").protection.plan("results", "http://agent", "a2a:GetTask")
    raw = "QUtJQUlPU0ZPRE5ON0VYQU1QTEU="  # base64, not text
    task = {
        "kind": "task",
        "id": "t-1",
        "status": {"state": "completed", "message": {"kind": "message", "parts": [{"kind": "text", "text": LEAKY}]}},
        "history": [{"parts": [{"text": "clean"}, {"data": {"config": {"client_secret": "Zq8#pL2v!Xr9wT4k"}}}]}],
        "artifacts": [
            {
                "artifactId": "a",
                "parts": [
                    {"kind": "file", "file": {"uri": "https://bob:hunter2pw@files.example/x", "bytes": raw}},
                    {"url": f"https://example.com/?key={AWS_KEY}"},
                    {"raw": raw},
                ],
            }
        ],
        "metadata": {"note": AWS_KEY},  # not a part: identifiers and metadata are not screened
    }
    found, masked = Scanner(b"k" * 32).a2a_answer(task, plan)
    assert masked is not None
    assert sorted(found.kinds) == ["aws_access_key", "github_token", "secret_field", "url_password"]
    assert_masked(masked["status"]["message"]["parts"][0]["text"])
    assert masked["history"][0]["parts"][0] == {"text": "clean"}
    assert masked["history"][0]["parts"][1] == {"data": {"config": {"client_secret": "[REDACTED:secret_field]"}}}
    assert masked["artifacts"][0]["parts"][0]["file"] == {
        "uri": "https://bob:[REDACTED:url_password]@files.example/x",
        "bytes": raw,
    }
    assert masked["artifacts"][0]["parts"][1] == {"url": "https://example.com/?key=[REDACTED:aws_access_key]"}
    assert masked["artifacts"][0]["parts"][2] == {"raw": raw}
    assert masked["metadata"] == task["metadata"] and task["status"]["message"]["parts"][0]["text"] == LEAKY
    assert Scanner(b"k" * 32).a2a_answer({"task": {"history": [{"parts": [{"text": "clean"}]}]}}, plan)[1] is None
