"""An a2a-sdk 0.3.x client, run in its own interpreter path by tests/test_a2a.py (the 0.3 SDK
cannot share a process with 1.x). Sends one message through Wicket and prints one JSON line:
``{"texts": [...]}`` with every text the agent answered, or ``{"error": "..."}``.

Usage: python a2a03_client.py BASE_URL TOKEN TEXT SKILL STREAMING(0|1)
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from a2a.client import ClientConfig, ClientFactory, create_text_message_object


async def main(base: str, token: str, text: str, skill: str, streaming: bool) -> dict[str, object]:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    config = ClientConfig(streaming=streaming, supported_transports=["JSONRPC"], httpx_client=http)
    client = await ClientFactory.connect(base, client_config=config)
    message = create_text_message_object(content=text)
    if skill:
        message.metadata = {"wicket/skill": skill}
    texts: list[str] = []
    try:
        async for event in client.send_message(message):
            task = event[0] if isinstance(event, tuple) else None
            if task is not None:  # the client's view of the task so far: keep the last one
                texts = [p.root.text for a in task.artifacts or [] for p in a.parts if getattr(p.root, "text", None)]
    except Exception as exc:  # the test asserts on the message
        return {"error": f"{exc.__class__.__name__}: {exc}"}
    finally:
        await http.aclose()
    return {"texts": texts, "card_url": client._card.url if hasattr(client, "_card") else None}


if __name__ == "__main__":
    base, token, text, skill, streaming = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(base, token, text, skill, streaming == "1"))))
