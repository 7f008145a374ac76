"""Secrets and personal data in tool traffic: the detectors' precision, and masking or refusal
end to end with the real mcp client, a real upstream MCP server and its ledger, on both MCP
generations, streamed (SSE) and not (JSON).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.types import EmbeddedResource, ImageContent, TextContent, TextResourceContents, ToolAnnotations
from pydantic import BaseModel

from proxy.core import detectors
from proxy.core.action import Effect
from proxy.core.policy import parse_policy_text
from proxy.core.protection import DataProtection, Scanner
from proxy.demo.server import DemoUpstream, Ledger
from tests.conftest import MODES, WicketFactory, mcp_client

# Fake secrets in the vendors' documented formats (none of them is live).
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PG_PASSWORD = "s3cr3t-P4ssw0rd"
PG_URL = f"postgresql://app:{PG_PASSWORD}@db.internal:5432/prod"
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)
SECRETS = {
    "aws_access_key": AWS_KEY_ID,
    "aws_secret_key": AWS_SECRET,
    "github_token": GITHUB,
    "slack_token": SLACK,
    "jwt": JWT,
    "url_password": PG_PASSWORD,
    "private_key": PRIVATE_KEY,
}
LEAK_TEXT = (
    f"aws_access_key_id = {AWS_KEY_ID}\naws_secret_access_key = {AWS_SECRET}\n"
    f"GitHub: {GITHUB}\nSlack bot: {SLACK}\nsession: Bearer {JWT}\ndsn: {PG_URL}\n{PRIVATE_KEY}\nend of dump"
)

# What must pass untouched: ids, hashes, media, numbers that fail their checksum, prose.
UUID = "123e4567-e89b-12d3-a456-426614174000"
GIT_SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
LUHN_INVALID = "4111 1111 1111 1112"
PROSE = (
    "The quarterly report is ready. Revenue rose 4% to 1,234,567 dollars; the token ceremony is on "
    "2024-01-15 at 10:30. Version 1.2.3 fixes the password reset page. See section 12.4."
)
PNG = base64.b64encode(bytes(range(256)) * 8).decode()
BENIGN_TEXT = f"id {UUID}\ncommit {GIT_SHA}\ncard? {LUHN_INVALID} and 1234567812345678\n{PROSE}"


class Credentials(BaseModel):
    service: str
    access_key_id: str
    secret_access_key: str
    dsn: str
    replicas: int


def secrets_server() -> tuple[MCPServer, Ledger]:
    ledger = Ledger()
    server = MCPServer("secrets-upstream")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_config() -> str:
        """Read: a configuration dump full of credentials."""
        ledger.record("get_config")
        return LEAK_TEXT

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_credentials() -> Credentials:
        """Read: structured credentials (outputSchema)."""
        ledger.record("get_credentials")
        return Credentials(
            service="billing", access_key_id=AWS_KEY_ID, secret_access_key=AWS_SECRET, dsn=PG_URL, replicas=3
        )

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_attachment() -> list[Any]:
        """Read: an embedded resource holding a key, and an image."""
        ledger.record("get_attachment")
        resource = TextResourceContents(uri="file:///etc/app/key.pem", mimeType="text/plain", text=PRIVATE_KEY)
        return [
            EmbeddedResource(type="resource", resource=resource),
            ImageContent(type="image", data=PNG, mimeType="image/png"),
        ]

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_samples() -> list[Any]:
        """Read: text that looks secret-ish to a careless scanner, and an image."""
        ledger.record("get_samples")
        return [TextContent(type="text", text=BENIGN_TEXT), ImageContent(type="image", data=PNG, mimeType="image/png")]

    @server.tool()
    def store_value(name: str, value: str) -> str:
        """Mutating: store a value somewhere."""
        ledger.record("store_value", key=name)
        return "stored"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def search_records(query: str) -> str:
        """Read: look something up."""
        ledger.record("search_records", query=query)
        return "nothing found"

    @server.resource("config://app")
    def app_config() -> str:
        return f"dsn={PG_URL}\ngithub={GITHUB}"

    return server, ledger


@pytest.fixture(params=[False, True], ids=["sse", "json"])
async def secrets_upstream(request: pytest.FixtureRequest) -> AsyncIterator[DemoUpstream]:
    server = DemoUpstream(server=secrets_server(), json_response=request.param)
    await server.start()
    yield server
    await server.stop()


def texts(result: Any) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def outcome_events(running: Any, action: str) -> list[dict[str, Any]]:
    return [e for e in running.audit_events() if e["event"] == "outcome" and e["action"] == action]


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_secrets_in_results_are_masked(
    mode: str, secrets_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(secrets_upstream.url)
    async with mcp_client(running.url, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        result = await client.call_tool("get_config", {})
        assert not result.is_error
        text = texts(result)
        for kind, value in SECRETS.items():
            assert value not in text, kind
            assert f"[REDACTED:{kind}]" in text, kind
        assert "postgresql://app:[REDACTED:url_password]@db.internal:5432/prod" in text, "only the password goes"
        assert text.endswith("end of dump")

        structured = await client.call_tool("get_credentials", {})
        assert not structured.is_error, structured
        data = structured.structured_content
        assert data["access_key_id"] == "[REDACTED:aws_access_key]"
        assert data["secret_access_key"] == "[REDACTED:secret_field]"
        assert data["dsn"] == "postgresql://app:[REDACTED:url_password]@db.internal:5432/prod"
        assert data["service"] == "billing" and data["replicas"] == 3
        jsonschema.validate(data, tools["get_credentials"].output_schema)  # a masked string is still a string
        assert AWS_KEY_ID not in texts(structured) and AWS_SECRET not in texts(structured)

        attachment = await client.call_tool("get_attachment", {})
        embedded, image = attachment.content
        assert embedded.resource.text == "[REDACTED:private_key]"
        assert image.data == PNG, "images are not text and pass untouched"

        contents = await client.read_resource("config://app")
        text = contents.contents[0].text
        assert PG_PASSWORD not in text and GITHUB not in text and "[REDACTED:github_token]" in text

    # The outcome audit names kinds, counts and fingerprints, never a value.
    (dump,) = outcome_events(running, "tools/call:get_config")
    found = dump["data_protection"]["findings"]
    assert dump["data_protection"]["direction"] == "results" and dump["data_protection"]["action"] == "mask"
    assert set(found) == set(SECRETS), found
    for finding in found.values():
        # The text block and the SDK's structuredContent {"result": ...} carry the value once each.
        assert finding["count"] == len(finding["fingerprints"]) >= 1
        assert len(set(finding["fingerprints"])) == 1 and finding["fingerprints"][0].startswith("hmac-sha256:")
    log = running.audit_path.read_text()
    for value in (AWS_KEY_ID, AWS_SECRET, GITHUB, SLACK, JWT, PG_PASSWORD, "MIIEowIBAAKCAQEA"):
        assert value not in log
    metrics = running.wicket.metrics.exposition().decode()
    assert 'wicket_data_findings_total{action="mask",direction="results",kind="github_token"}' in metrics


@pytest.mark.parametrize("mode", MODES)
async def test_false_positives_pass_unmasked(
    mode: str, secrets_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    strict = parse_policy_text(
        "version: 1\nanonymous: {enabled: true}\ndata_protection:\n  pii: {arguments: audit, results: mask}\n"
    )
    running = await make_wicket(secrets_upstream.url, strict)
    async with mcp_client(running.url, mode=mode) as client:
        result = await client.call_tool("get_samples", {})
        text, image = result.content
        assert text.text == BENIGN_TEXT
        assert image.data == PNG
    (event,) = outcome_events(running, "tools/call:get_samples")
    assert "data_protection" not in event


@pytest.mark.parametrize("mode", MODES)
async def test_secret_argument_to_mutating_tool_never_reaches_upstream(
    mode: str, secrets_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    running = await make_wicket(secrets_upstream.url, "version: 1\n")
    grant = await running.create_session("writer", mode="read-write")
    async with mcp_client(running.url, token=grant["token"], mode=mode) as client:
        refused = await client.call_tool("store_value", {"name": "ci", "value": f"use {GITHUB} for the push"})
        assert refused.is_error
        record = refused.meta["wicket/decision"]
        assert record["decision"] == "deny" and "github_token (1)" in record["reason"]
        assert GITHUB not in json.dumps(record)
        stored = await client.call_tool("store_value", {"name": "colour", "value": "blue"})
        assert not stored.is_error, stored
        # A read's arguments are audited, not refused, by default.
        looked = await client.call_tool("search_records", {"query": f"who owns {SLACK}"})
        assert not looked.is_error
    assert secrets_upstream.ledger.calls == [
        ("store_value", {"key": "colour"}),
        ("search_records", {"query": f"who owns {SLACK}"}),
    ]
    decisions = [e for e in running.audit_events() if e["event"] == "decision" and e["action"].startswith("tools/")]
    denied = next(e for e in decisions if e["decision"] == "deny")
    assert denied["data_protection"]["findings"]["github_token"]["count"] == 1
    audited = next(e for e in decisions if e["action"] == "tools/call:search_records")
    assert audited["decision"] == "allow" and audited["data_protection"]["action"] == "audit"


async def test_masked_argument_is_what_the_upstream_receives(
    secrets_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    policy = "version: 1\nanonymous: {enabled: true}\ndata_protection:\n  secrets: {arguments: mask}\n"
    running = await make_wicket(secrets_upstream.url, policy)
    async with mcp_client(running.url) as client:
        result = await client.call_tool("search_records", {"query": f"token {GITHUB} owner"})
        assert not result.is_error
    assert secrets_upstream.ledger.calls == [("search_records", {"query": "token [REDACTED:github_token] owner"})]


async def test_results_deny_withholds_the_result(secrets_upstream: DemoUpstream, make_wicket: WicketFactory) -> None:
    policy = "version: 1\nanonymous: {enabled: true}\ndata_protection:\n  secrets: {results: deny}\n"
    running = await make_wicket(secrets_upstream.url, policy)
    async with mcp_client(running.url) as client:
        with pytest.raises(Exception) as caught:
            await client.call_tool("get_config", {})
        assert "withheld" in str(caught.value) and AWS_KEY_ID not in str(caught.value)
        assert not (await client.call_tool("get_samples", {})).is_error
    (event,) = outcome_events(running, "tools/call:get_config")
    assert event["status"] == "error" and event["data_protection"]["action"] == "deny"


# -- the detectors' precision ------------------------------------------------------------------------

ALL = (*detectors.SECRET_DETECTORS, *detectors.PII_DETECTORS)


def kinds(text: str) -> list[str]:
    return [s.kind for s in detectors.find(text, ALL, phone_region="US")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {AWS_KEY_ID}", ["aws_access_key"]),
        (f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", ["aws_secret_key"]),
        (GITHUB, ["github_token"]),
        ("glpat-" + "x1Y2z3A4b5C6d7E8f9G0", ["gitlab_token"]),
        (SLACK, ["slack_token"]),
        (JWT, ["jwt"]),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", ["stripe_key"]),
        ("AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", ["google_api_key"]),
        (PG_URL, ["url_password"]),
        ("Server=db;Database=x;User Id=sa;Password=Winter2024!;", ["connection_password"]),
        ("api_key: 'q8Zr3LmP0xVt7Kw2Yu'", ["keyword_secret"]),
        (PRIVATE_KEY, ["private_key"]),
        ("mail jane.doe@example.com now", ["email"]),
        ("call +1 415-555-2671", ["phone"]),
        ("card 4111 1111 1111 1111", ["credit_card"]),
        ("IBAN GB82 WEST 1234 5698 7654 32", ["iban"]),
        ("DNI 12345678Z", ["national_id"]),
        ("from 203.0.113.9", ["ip_address"]),
    ],
)
def test_detects(text: str, expected: list[str]) -> None:
    assert kinds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        UUID,
        GIT_SHA,
        f"sha256:{'ab' * 32}",
        PNG[:400],
        LUHN_INVALID,
        "1234567812345678",
        "GB82 WEST 1234 5698 7654 33",  # IBAN with a wrong check digit
        "DNI 12345678A",  # wrong check letter
        PROSE,
        "token: hello_world",  # a word, not a secret
        "password: ********",
        "https://example.com:8443/x?user=me and ftp://mirror.example.org/pub",
        "version 1.2.3 released 2024-01-15 at 10:30:45",
        "eyJub3QiOiJhIGp3dCJ9",  # base64 JSON, not a JWT
    ],
)
def test_passes(text: str) -> None:
    assert kinds(text) == []


# Plain ASCII text (no digit, none of -_=:@, no trigger of a kind that can be letters alone) is not
# scanned at all.
LETTERS_ONLY = {
    "aws_access_key": "key AKIAIOSFODNNQEXAMPLE here",
    "google_api_key": "AIza" + "SyDQtSrkePouQMnMXaeZSWjkFMBWYabcdef",
    "jwt": "eyJhbGciOiJIUyIgfQ.eyJzdWIiOiJxMjM.SflKxwRJSMeKKFQTfwpMeJf",  # {"alg":"HS" }
    "sendgrid_key": "SG." + "abcdefghijklmnopqrstuv" + "." + "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopq",
}


@pytest.mark.parametrize("kind", sorted(LETTERS_ONLY))
def test_letters_only_findings_are_scanned(kind: str) -> None:
    text = LETTERS_ONLY[kind]
    assert not detectors._plain(text)
    assert kinds(text) == [kind]
    assert set(LETTERS_ONLY) == set(detectors._LETTERS_ONLY)


def test_plain_text_cannot_hold_a_finding() -> None:
    """Plain text with every trigger word in it: the unfiltered scan finds nothing either."""
    import random

    assert len(ALL) == 26, "a new detector: check it against detectors._plain, then update this test"
    words = [t for d in ALL for t in d.triggers if detectors._NEEDED.search(t) is None]
    words += ["AKIA", "ASIA", "AIza", "eyJ", "SG.", "secret", "password", "token", "bsn", "pesel", "GB", "DE"]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;!?'\"()/+*#$%&<>[]{}|~^`\\\n\t"
    rng = random.Random(19)
    plain = 0
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                parts.append(rng.choice(words))
            else:
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))))
            parts.append(rng.choice(" \n.,/+"))
        text = "".join(parts)
        if not detectors._plain(text):
            continue
        plain += 1
        assert detectors._find(text, ALL, "US") == [], text
    assert plain > 1000


def test_key_like_fields() -> None:
    scanner = Scanner(b"k" * 32)
    plan = DataProtection().plan("arguments", "u", "t", Effect.MUTATING)
    arguments = {
        "password": "hunter22",
        "apiKey": "Zx8-Qw3_Lp0Vn7Rt",
        "next_page_token": "Zx8-Qw3_Lp0Vn7RtYu",
        "token_type": "Bearer",
        "name": "Zx8-Qw3_Lp0Vn7Rt",
        "author": "Zx8-Qw3_Lp0Vn7Rt",
    }
    found, _ = scanner.arguments(arguments, plan)
    assert found.kinds.keys() == {"secret_field"} and len(found.kinds["secret_field"]) == 2
    assert found.denied, "secrets in a mutating call's arguments are refused by default"
    assert not DataProtection().plan("arguments", "u", "t", Effect.READ).actions["secret_field"] == "deny"


def test_a_key_field_too_long_to_measure_counts_as_a_secret() -> None:
    """Past the length whose entropy is measured, a value under a key-like name is a secret (the
    check is judged closed, never passed over); the cheap rules still apply at any length."""
    long = "Zx8-Qw3_Lp0Vn7Rt" * 300  # 4800 characters
    assert detectors.secret_field("apiKey", long) and detectors.secret_field("password", long)
    assert detectors.secret_field("client_secret", "a" * 5000)  # not measured: low entropy or not
    assert not detectors.secret_field("apiKey", "word " * 1000)  # prose, at any length
    assert not detectors.secret_field("author", long)  # not a key-like name
    scanner = Scanner(b"k" * 32)
    found, _ = scanner.arguments({"token": long}, DataProtection().plan("arguments", "u", "t", Effect.READ))
    assert found.kinds.keys() == {"secret_field"}


def test_strict_policy_turns_personal_data_on() -> None:
    from proxy.core.policy import load_policy
    from tests.conftest import ROOT

    default = load_policy([ROOT / "policies" / "default.yaml"])
    strict = load_policy([ROOT / "policies" / "default.yaml", ROOT / "policies" / "strict.yaml"])
    scanner = Scanner(b"k" * 32)
    text = {"content": [{"type": "text", "text": "write to jane.doe@example.com, card 4111 1111 1111 1111"}]}
    found, masked = scanner.tool_result(text, default.protection.plan("results", "u", "t"))
    assert not found and masked is None, "personal data is off by default"
    found, masked = scanner.tool_result(text, strict.protection.plan("results", "u", "t"))
    assert set(found.kinds) == {"email", "credit_card"}
    assert masked["content"][0]["text"] == "write to [REDACTED:email], card [REDACTED:credit_card]"
    arguments = strict.protection.plan("arguments", "u", "search", Effect.READ)
    assert scanner.arguments({"q": "jane.doe@example.com"}, arguments)[0].denied


# -- sampling prompts the upstream sends ------------------------------------------------------------


@pytest.fixture
async def sampling_upstream() -> AsyncIterator[DemoUpstream]:
    from tests.test_sampling_guard import build_sampling_server

    server = DemoUpstream(server=build_sampling_server())
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_secrets_in_sampling_prompts(
    mode: str, sampling_upstream: DemoUpstream, make_wicket: WicketFactory
) -> None:
    from tests.test_sampling_guard import Llm, policy

    running = await make_wicket(sampling_upstream.url, policy())
    llm = Llm()
    async with mcp_client(running.url, mode=mode, sampling_callback=llm) as client:
        outcome: Any
        try:
            outcome = await client.call_tool("ask", {"prompt": f"Summarise: the deploy key is {GITHUB}"})
        except Exception as exc:  # the 2026-07-28 input request is refused rather than rewritten
            outcome = exc
    if mode == "legacy":
        assert llm.prompts == ["Summarise: the deploy key is [REDACTED:github_token]"], "masked on the SSE stream"
        assert not outcome.is_error
    else:
        assert llm.prompts == [] and "secrets" in str(outcome), "never shown to the model unmasked"
    assert all(GITHUB not in prompt for prompt in llm.prompts)


ISSUE_POLICY = """version: 1
data_protection:
  secrets: {arguments: deny, results: mask}          # mask | deny | audit | off
  pii:
    kinds: [email, phone, credit_card, iban]
    arguments: audit
    results: mask
limits:
  - match: {agents: ["*"], tools: ["send_*"]}
    rate: 5/minute
    per: agent                                        # agent | session | tool
labels:
  private: ["query_db", "read_*"]
  untrusted: ["fetch_url"]
  egress: ["send_*", "post_*"]
flows:
  - seen: [private, untrusted]
    call: egress
    action: deny                                      # deny | approval_required
"""


def test_the_documented_policy_keys_load_as_written() -> None:
    policy = parse_policy_text(ISSUE_POLICY)
    reads = policy.protection.plan("arguments", "u", "search", Effect.READ)
    assert reads.actions["github_token"] == "deny" and reads.actions["email"] == "audit"
    assert "national_id" not in reads.actions and "ip_address" not in reads.actions
    (limit,) = policy.limits
    assert limit.per == "agent" and limit.windows[0].limit == 5 and limit.windows[0].seconds == 60.0
    assert policy.labelling.labels_for("read_mail", Effect.READ, None) == {"private"}
    assert policy.labelling.labels_for("send_email", Effect.MUTATING, None) == {"egress"}
    (rule,) = policy.labelling.flows
    assert rule.seen == {"private", "untrusted"} and rule.call == "egress" and rule.action == "deny"


# -- the walk's shortcuts find what one call per value finds --------------------------------------


def _walk_every_value(scanner: Scanner, value: Any, key: str | None, plan: Any, findings: Any) -> Any:
    """The walk as it was before a container scanned its own strings (one call per JSON value) and
    before a scan remembered the last text it found nothing in (every string is searched)."""
    if isinstance(value, str):
        findings.clean = None
        return scanner._text(value, key, plan, findings)
    if isinstance(value, dict):
        out: dict[str, Any] | None = None
        for name, item in value.items():
            new = _walk_every_value(scanner, item, name if isinstance(name, str) else None, plan, findings)
            if new is not None:
                out = dict(value) if out is None else out
                out[name] = new
        return out
    if isinstance(value, list):
        out_list: list[Any] | None = None
        for index, item in enumerate(value):
            new = _walk_every_value(scanner, item, key, plan, findings)
            if new is not None:
                out_list = list(value) if out_list is None else out_list
                out_list[index] = new
        return out_list
    return None


def test_the_value_walk_finds_and_masks_what_a_walk_of_every_value_does() -> None:
    """Random JSON with secrets, personal data, key-like keys, numbers and nesting: the same findings
    (kinds, fingerprints in order, action) and the same masked copy, under mask, deny and audit."""
    import random

    from proxy.core.protection import Findings

    rng = random.Random(19)

    class Key(str):
        """A key that is a str without being exactly one (no JSON makes it; an API caller could)."""

    keys: list[Any] = ["password", "apiKey", "client_secret", "token_type", "result", "city", "name", "items", "", "x"]
    keys += [Key("password"), Key("apiKey"), 3]
    leaves: list[Any] = [*SECRETS.values(), "hunter22", "Zx8-Qw3_Lp0Vn7RtYu", "jane.doe@example.com"]
    leaves += ["It is sunny in Oslo.", UUID, GIT_SHA, LUHN_INVALID, "", "4111 1111 1111 1111", 7, 2.5, True, None]

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.45:
            return rng.choice(leaves)
        if roll < 0.75:
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 4))}
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    strict = DataProtection().plan("results", "u", "t")
    policy = parse_policy_text(ISSUE_POLICY)
    plans = [
        strict,
        DataProtection().plan("arguments", "u", "t", Effect.MUTATING),
        DataProtection().plan("arguments", "u", "t", Effect.READ),
        policy.protection.plan("results", "u", "search"),
        policy.protection.plan("arguments", "u", "search", Effect.READ),
    ]
    scanner = Scanner(b"k" * 32)
    found_any = 0
    for _ in range(400):
        payload = value(0)
        key = rng.choice([None, "password", "result"])
        for plan in plans:
            walked, reference = Findings("results"), Findings("results")
            masked = scanner._value(payload, key, plan, walked)
            assert masked == _walk_every_value(scanner, payload, key, plan, reference)
            assert walked.record() == reference.record()
            found_any += bool(walked)
    assert found_any > 500


def test_a_text_answer_repeated_in_structured_content_is_scanned_as_both() -> None:
    """A tool's text comes again as ``structuredContent.result``: a finding counts in both and both are
    masked; a clean text stays clean (the second search of it is skipped)."""
    scanner = Scanner(b"k" * 32)
    plan = DataProtection().plan("results", "u", "t")
    text = f"token {GITHUB}"
    result = {"content": [{"type": "text", "text": text}], "structuredContent": {"result": text}}
    found, masked = scanner.tool_result(result, plan)
    assert found.record()["findings"] == {
        "github_token": {"count": 2, "fingerprints": [scanner.fingerprint(GITHUB)] * 2}
    }
    assert masked is not None
    assert masked["content"][0]["text"] == masked["structuredContent"]["result"] == "token [REDACTED:github_token]"
    clean = {"content": [{"type": "text", "text": "It is sunny."}], "structuredContent": {"result": "It is sunny."}}
    found, masked = scanner.tool_result(clean, plan)
    assert not found and masked is None
    secret = {"content": [{"type": "text", "text": "hunter22"}], "structuredContent": {"password": "hunter22"}}
    found, masked = scanner.tool_result(secret, plan)
    assert list(found.kinds) == ["secret_field"] and masked is not None
    assert masked["structuredContent"] == {"password": "[REDACTED:secret_field]"}
    assert masked["content"] == secret["content"]
