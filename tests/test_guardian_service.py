"""The central guardian service and its sidecar client, over real HTTP on 127.0.0.1.

A sidecar-side ``RemoteTier`` talks to the service app started with aiohttp's runner:
good tokens get Spot/Deep decisions; forged, expired, unsigned, re-bodied and replayed
tokens get 401 and nothing is reviewed; a missing tier or a dead service is a failed
tier that the router turns into Fast's allow (mutating) or a fail-closed deny.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from proxy.core.action import Action, Activity, Decision, Effect, Finding, ReviewContext, Tier, Verdict
from proxy.core.guardian import FastGuard, GuardianRouter
from proxy.core.policy import Policy, parse_policy_text
from proxy.core.sessions import Session
from proxy.core.spot import SpotGuard
from proxy.guardians.remote import RemoteTier, RemoteTierError, remote_tiers
from proxy.guardians.service import MAX_BODY_BYTES, build_guardian_app, deep_from_env, serve_guardian
from proxy.guardians.wire import (
    AUDIENCE,
    KEY_ENV,
    ReplayCacheFull,
    TokenError,
    TokenVerifier,
    body_sha256,
    decode_decision,
    decode_review,
    dumps,
    encode_decision,
    encode_review,
    guardian_key,
    loads,
    sign_request,
)
from tests.fake_anthropic import (
    FakeAnthropic,
    fake_anthropic,  # noqa: F401  (the fixture)
)

KEY = b"test-guardian-key-0123456789abcdef-0123"
OTHER_KEY = b"someone-elses-key-0123456789abcdef-0123"
POLICY: Policy = parse_policy_text("version: 1\n")
NO_DEEP_ENV: dict[str, str] = {KEY_ENV: KEY.decode()}


# --------------------------------------------------------------------------- builders


def make_session(intent: str = "clean up the staging database") -> Session:
    now = time.time()
    return Session("ses_1", "agent-a", ("*",), "read-write", now - 10, now + 3600, intent=intent)


def make_action(name: str = "create_note", **arguments: Any) -> Action:
    return Action("mcp", "tools/call", name, arguments, "agent-a", "ses_1", "http://upstream/mcp", is_tool_call=True)


def fast_allow(effect: Effect) -> Decision:
    return Decision(Verdict.ALLOW, effect, Tier.FAST, "Allowed by Fast Guard.")


HOSTILE = ReviewContext(Activity(calls=6, denials=4, repeat_denials=2))
FRESH = ReviewContext()


def review_args(
    effect: Effect, name: str = "create_note", context: ReviewContext = FRESH
) -> tuple[Action, Session, Effect, Decision, ReviewContext]:
    return make_action(name, title="x"), make_session(), effect, fast_allow(effect), context


def review_body(tier: str = "spot", effect: Effect = Effect.MUTATING, **extra: Any) -> bytes:
    return dumps({"tier": tier, **encode_review(*review_args(effect)), **extra})


def craft_token(body: bytes, *, key: bytes | None = KEY, algorithm: str = "HS256", **claims: Any) -> str:
    """A token built by hand, so each test can break exactly one thing."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "test-sidecar",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 30,
        "jti": secrets.token_hex(8),
        "body_sha256": body_sha256(body),
    }
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm)


class CountingTier:
    """A real tier wrapped to count calls, so tests can prove a rejected call was never reviewed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tier = inner.tier
        self.calls = 0

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        self.calls += 1
        return await self.inner.review(action, session, effect, prior, context)


class BrokenTier:
    """A tier that fails with a message that must not leak to the caller."""

    tier = Tier.SPOT

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        raise RuntimeError("upstream said: api key sk-ant-SECRET is invalid")


class ImpostorTier:
    """Registered as Spot but answers as Deep."""

    tier = Tier.SPOT

    async def review(
        self, action: Action, session: Session, effect: Effect, prior: Decision, context: ReviewContext
    ) -> Decision:
        return Decision(Verdict.ALLOW, effect, Tier.DEEP, "trust me")


# --------------------------------------------------------------------------- fixtures


@dataclass
class Running:
    runner: web.AppRunner
    url: str
    stopped: bool = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


async def start_app(app: web.Application) -> Running:
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Running(runner, f"http://127.0.0.1:{runner.addresses[0][1]}")


@pytest.fixture
async def start_service() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def factory(*, deep: Any = None, spot: Any = None, **kwargs: Any) -> Running:
        running = await start_app(build_guardian_app(key=KEY, policy=POLICY, deep=deep, spot=spot, **kwargs))
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Tiers:
    made: list[RemoteTier] = field(default_factory=list)

    def __call__(self, tier: Tier, url: str, key: bytes = KEY, timeout: float = 5.0) -> RemoteTier:
        remote = RemoteTier(tier, url, key, client_id="sidecar-test", timeout=timeout)
        self.made.append(remote)
        return remote


@pytest.fixture
async def remote() -> AsyncIterator[Tiers]:
    tiers = Tiers()
    yield tiers
    for made in tiers.made:
        await made.close()


async def post(http: aiohttp.ClientSession, url: str, body: bytes, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url + "/v1/review", data=body, headers=headers) as response:
        return response.status, json.loads(await response.read() or b"{}")


# --------------------------------------------------------------------------- wire codecs


def full_review() -> tuple[Action, Session, Effect, Decision, ReviewContext]:
    action = Action(
        "mcp",
        "tools/call",
        "run_sql",
        {"sql": "DROP TABLE users; -- ünïcode", "limits": [1, 2.5, None, True], "nested": {"a": {"b": []}}},
        "agent-a",
        "ses_1",
        "http://upstream/mcp",
        annotations={"destructiveHint": True, "title": "Run SQL"},
        is_tool_call=True,
        fixed_effect=Effect.ADMIN,
    )
    session = Session(
        "ses_1", "agent-a", ("db_*", "read_*"), "read-write", 1000.5, 4600.25, "migrate", "token", "operator"
    )
    prior = Decision(
        Verdict.APPROVAL_REQUIRED,
        Effect.ADMIN,
        Tier.SPOT,
        "why",
        0.42,
        "dec_abc",
        approval_id="apr_1",
        escalated_from=Effect.DESTRUCTIVE,
    )
    context = ReviewContext(
        Activity(9, 3, 5, 7, 2, (1, 2, 3, 4), 1, ("tools/call:a=allow", "tools/call:b=deny")),
        (Finding("sql", Effect.DESTRUCTIVE, "DROP statement"),),
        ("limit must be <= 10",),
    )
    return action, session, Effect.ADMIN, prior, context


def test_review_round_trips_exactly_through_json() -> None:
    original = full_review()
    decoded = decode_review(loads(dumps(encode_review(*original))))
    assert decoded == original
    assert decoded[1].scope == ("db_*", "read_*") and decoded[4].activity.window_by_effect == (1, 2, 3, 4)
    assert decoded[0].fixed_effect is Effect.ADMIN and decoded[3].escalated_from is Effect.DESTRUCTIVE


def test_decision_round_trips_every_field() -> None:
    decision = full_review()[3]
    assert decode_decision(loads(dumps(encode_decision(decision)))) == decision
    assert set(encode_decision(decision)) == {f.name for f in dataclasses.fields(Decision)}


def test_codecs_cover_every_dataclass_field() -> None:
    """If someone adds a field to the shared vocabulary, this says the wire must learn it too."""
    encoded = encode_review(*full_review())
    assert set(encoded["action"]) == {f.name for f in dataclasses.fields(Action)}
    assert set(encoded["session"]) == {f.name for f in dataclasses.fields(Session)}
    assert set(encoded["context"]) == {f.name for f in dataclasses.fields(ReviewContext)}
    assert set(encoded["context"]["activity"]) == {f.name for f in dataclasses.fields(Activity)}
    assert set(encoded["context"]["findings"][0]) == {f.name for f in dataclasses.fields(Finding)}


def _broken(path: str, value: Any) -> dict[str, Any]:
    data = encode_review(*full_review())
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("surprise", 1, "review: unknown field(s) 'surprise'"),
        ("action.extra", "x", "action: unknown field(s) 'extra'"),
        ("session.intent", KeyError, "session: missing field(s) 'intent'"),
        ("action.is_tool_call", 1, "action.is_tool_call must be a boolean"),
        ("context.activity.calls", True, "context.activity.calls must be an integer"),
        ("context.activity.denials", -1, "must be between 0"),
        ("context.activity.window_by_effect", [1, 2, 3], "exactly 4 counts"),
        ("prior.confidence", 1.5, "review.prior.confidence must be a finite number in [0, 1]"),
        ("session.created_at", float("nan"), "session.created_at must be a finite number"),
        ("session.created_at", "yesterday", "session.created_at must be a number"),
        ("session.mode", "root", "session.mode must be one of"),
        ("effect", "catastrophic", "review.effect must be one of"),
        ("prior.tier", "fast-ish", "review.prior.tier must be one of"),
        ("version", 2, "review.version must be 1"),
        ("action.name", "n" * 5000, "action.name is 5000 characters long"),
        ("session.scope", ["*"] * 300, "session.scope has 300 items"),
        ("action.arguments", [1], "action.arguments must be an object"),
        ("context.findings.0.effect", "loud", "context.findings[0].effect must be one of"),
        ("context.activity.history", [1], "context.activity.history[0] must be a string"),
    ],
)
def test_decode_review_is_strict(path: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_review(_broken(path, value))
    assert message in str(info.value)


def test_decode_rejects_deep_nesting_and_non_json_values() -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = {"x": deep}
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        decode_review(_broken("action.arguments", {"deep": deep}))
    with pytest.raises(ValueError, match="non-finite"):
        decode_review(_broken("action.arguments", {"n": float("inf")}))
    with pytest.raises(ValueError, match="review must be an object"):
        decode_review([1, 2])


def test_loads_refuses_nan_duplicates_and_deep_nesting() -> None:
    with pytest.raises(ValueError, match="NaN"):
        loads(b'{"a": NaN}')
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        loads(b'{"a": 1, "a": 2}')
    with pytest.raises(ValueError, match="nested too deeply"):
        loads(b"[" * 200_000 + b"]" * 200_000)


def test_the_shared_key_must_exist_and_be_long_enough() -> None:
    with pytest.raises(ValueError, match=f"{KEY_ENV} is not set"):
        guardian_key({})
    with pytest.raises(ValueError, match="at least 32 bytes"):
        guardian_key({KEY_ENV: "too-short"})
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(b"short")
    assert guardian_key({KEY_ENV: f"  {KEY.decode()}\n"}) == KEY


def test_replay_cache_is_bounded_and_forgets_expired_tokens() -> None:
    clock = [1000.0]
    verifier = TokenVerifier(KEY, capacity=2, clock=lambda: clock[0])
    for jti in ("a", "b"):
        verifier.remember({"iss": "s", "jti": jti, "exp": 1010})
    with pytest.raises(ReplayCacheFull, match="replay cache full"):
        verifier.remember({"iss": "s", "jti": "c", "exp": 1010})
    with pytest.raises(TokenError, match="replayed"):
        verifier.remember({"iss": "s", "jti": "a", "exp": 1010})
    clock[0] = 1016.0  # past exp + 5 s leeway: both entries are gone
    verifier.remember({"iss": "s", "jti": "c", "exp": 1030})
    verifier.remember({"iss": "s", "jti": "a", "exp": 1030})


# --------------------------------------------------------------------------- good tokens


async def test_good_token_gets_spot_decisions(start_service: Callable[..., Awaitable[Running]], remote: Tiers) -> None:
    service = await start_service()
    spot = remote(Tier.SPOT, service.url)
    allowed = await spot.review(*review_args(Effect.MUTATING))
    assert allowed.verdict is Verdict.ALLOW and allowed.tier is Tier.SPOT
    assert "Spot Guard allowed" in allowed.reason and "mutating effect +0.10" in allowed.reason
    denied = await spot.review(*review_args(Effect.DESTRUCTIVE, "drop_table", HOSTILE))
    assert denied.verdict is Verdict.DENY and denied.tier is Tier.SPOT and denied.effect is Effect.DESTRUCTIVE
    assert "2 earlier denied attempt(s) at this same action" in denied.reason


async def test_health_and_readiness(
    start_service: Callable[..., Awaitable[Running]], http: aiohttp.ClientSession
) -> None:
    service = await start_service()
    async with http.get(service.url + "/healthz") as response:
        assert response.status == 200
    async with http.get(service.url + "/readyz") as response:
        assert response.status == 200
        assert await response.json() == {"spot": True, "deep": False}
    async with http.get(service.url + "/metrics") as response:
        assert response.status == 200 and "wicket_guardian_tier_errors_total" in await response.text()


# --------------------------------------------------------------------------- bad tokens


async def test_wrong_key_is_refused_and_nothing_is_reviewed(
    start_service: Callable[..., Awaitable[Running]], remote: Tiers
) -> None:
    spot = CountingTier(SpotGuard(POLICY.guardian.spot))
    service = await start_service(spot=spot)
    with pytest.raises(RemoteTierError, match="HTTP 401: invalid token") as info:
        await remote(Tier.SPOT, service.url, OTHER_KEY).review(*review_args(Effect.MUTATING))
    assert info.value.status == 401
    assert spot.calls == 0


def _expired(body: bytes) -> str:
    now = int(time.time())
    return craft_token(body, iat=now - 100, exp=now - 60)


def _alg_none(body: bytes) -> str:
    return craft_token(body, key=None, algorithm="none")


def _hs512(body: bytes) -> str:
    return craft_token(body, key=KEY + KEY, algorithm="HS512")


def _other_body(body: bytes) -> str:
    return craft_token(review_body(effect=Effect.READ))


def _long_lived(body: bytes) -> str:
    now = int(time.time())
    return craft_token(body, iat=now, exp=now + 3600)


def _future(body: bytes) -> str:
    now = int(time.time())
    return craft_token(body, iat=now + 120, exp=now + 150)


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        pytest.param(_expired, "token expired", id="expired"),
        pytest.param(_alg_none, "invalid token", id="alg-none"),
        pytest.param(_hs512, "invalid token", id="other-algorithm"),
        pytest.param(lambda body: craft_token(body, key=OTHER_KEY), "invalid token", id="wrong-key"),
        pytest.param(lambda body: craft_token(body, aud="someone-else"), "invalid token", id="wrong-audience"),
        pytest.param(lambda body: craft_token(body, jti=None), "lacks the 'jti' claim", id="no-jti"),
        pytest.param(lambda body: craft_token(body, body_sha256=None), "lacks the 'body_sha256'", id="no-body-hash"),
        pytest.param(lambda body: craft_token(body, jti=7), "invalid token", id="jti-not-string"),
        pytest.param(lambda body: craft_token(body, iss=""), "'iss' must be a non-empty string", id="empty-iss"),
        pytest.param(_other_body, "signed for another body", id="body-hash-mismatch"),
        pytest.param(_long_lived, "lifetime exceeds 60s", id="long-lived"),
        pytest.param(_future, "invalid token", id="issued-in-future"),
        pytest.param(lambda body: None, "missing bearer token", id="no-token"),
        pytest.param(lambda body: "not.a.jwt", "invalid token", id="garbage"),
    ],
)
async def test_bad_tokens_get_401_and_nothing_is_reviewed(
    start_service: Callable[..., Awaitable[Running]],
    http: aiohttp.ClientSession,
    forge: Callable[[bytes], str | None],
    message: str,
) -> None:
    spot = CountingTier(SpotGuard(POLICY.guardian.spot))
    service = await start_service(spot=spot)
    body = review_body()
    status, reply = await post(http, service.url, body, forge(body))
    assert status == 401, reply
    assert message in reply["error"]
    assert spot.calls == 0


async def test_a_replayed_token_is_refused(
    start_service: Callable[..., Awaitable[Running]], http: aiohttp.ClientSession
) -> None:
    spot = CountingTier(SpotGuard(POLICY.guardian.spot))
    service = await start_service(spot=spot)
    body = review_body()
    token = sign_request(KEY, body, client_id="sidecar-test")
    first, reply = await post(http, service.url, body, token)
    assert first == 200 and reply["decision"]["tier"] == "spot"
    again, reply = await post(http, service.url, body, token)
    assert again == 401 and "replayed" in reply["error"]
    assert spot.calls == 1


async def test_a_rejected_body_does_not_burn_the_token(
    start_service: Callable[..., Awaitable[Running]], http: aiohttp.ClientSession
) -> None:
    """A token presented with the wrong body is refused without being remembered, so an
    attacker who intercepts it cannot block the genuine call by racing it with junk."""
    service = await start_service()
    body = review_body()
    token = sign_request(KEY, body, client_id="sidecar-test")
    status, _ = await post(http, service.url, b"{}", token)
    assert status == 401
    status, reply = await post(http, service.url, body, token)
    assert status == 200, reply


# --------------------------------------------------------------------------- malformed calls


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "malformed review request"),
        (b"[1, 2]", "body must be a JSON object"),
        (review_body(tier="fast"), "tier must be 'spot' or 'deep'"),
        (review_body(tier=["spot"]), "tier must be 'spot' or 'deep'"),
        (review_body(surprise=True), "unknown field(s) 'surprise'"),
        (b'{"tier": "spot", "version": 1}', "missing field(s)"),
    ],
)
async def test_malformed_bodies_get_400(
    start_service: Callable[..., Awaitable[Running]], http: aiohttp.ClientSession, body: bytes, message: str
) -> None:
    service = await start_service()
    status, reply = await post(http, service.url, body, sign_request(KEY, body, client_id="sidecar-test"))
    assert status == 400
    assert message in reply["error"]


async def test_only_json_is_accepted(
    start_service: Callable[..., Awaitable[Running]], http: aiohttp.ClientSession
) -> None:
    service = await start_service()
    body = review_body()
    headers = {"Authorization": f"Bearer {sign_request(KEY, body, client_id='t')}", "Content-Type": "text/plain"}
    async with http.post(service.url + "/v1/review", data=body, headers=headers) as response:
        assert response.status == 415


async def test_oversized_bodies_get_413(
    start_service: Callable[..., Awaitable[Running]], http: aiohttp.ClientSession
) -> None:
    service = await start_service()
    body = review_body(padding="x" * MAX_BODY_BYTES)
    status, reply = await post(http, service.url, body, sign_request(KEY, body, client_id="sidecar-test"))
    assert status == 413 and "body exceeds" in reply["error"]


async def test_a_failing_tier_is_502_with_its_class_name_only(
    start_service: Callable[..., Awaitable[Running]], remote: Tiers
) -> None:
    service = await start_service(spot=BrokenTier())
    with pytest.raises(RemoteTierError) as info:
        await remote(Tier.SPOT, service.url).review(*review_args(Effect.MUTATING))
    assert info.value.status == 502
    assert "Spot Guard failed (RuntimeError)" in str(info.value)
    assert "SECRET" not in str(info.value)


async def test_a_tier_answering_as_another_tier_is_502(
    start_service: Callable[..., Awaitable[Running]], remote: Tiers
) -> None:
    service = await start_service(spot=ImpostorTier())
    with pytest.raises(RemoteTierError, match="answered as tier 'deep'") as info:
        await remote(Tier.SPOT, service.url).review(*review_args(Effect.MUTATING))
    assert info.value.status == 502


# --------------------------------------------------------------------------- the sidecar's side


async def _rogue(reply: bytes, status: int = 200) -> Running:
    """A server that answers every review with ``reply``, whatever was asked."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/review", handler)
    return await start_app(app)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (dumps({"decision": encode_decision(Decision(Verdict.ALLOW, Effect.MUTATING, Tier.FAST, "ok"))}), "got a fast"),
        (dumps({"decision": encode_decision(Decision(Verdict.ALLOW, Effect.READ, Tier.SPOT, "ok"))}), "got a read"),
        (b'{"decision": {"verdict": "allow"}}', "malformed reply"),
        (b'{"verdict": "allow"}', "malformed reply"),
        (b"<html>allow</html>", "malformed reply"),
    ],
)
async def test_remote_tier_refuses_replies_it_did_not_ask_for(reply: bytes, message: str, remote: Tiers) -> None:
    rogue = await _rogue(reply)
    try:
        with pytest.raises(RemoteTierError, match=message):
            await remote(Tier.SPOT, rogue.url).review(*review_args(Effect.MUTATING))
    finally:
        await rogue.stop()


async def test_remote_tier_times_out(remote: Tiers) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/review", slow)
    service = await start_app(app)
    try:
        with pytest.raises(RemoteTierError, match=r"timed out after 0\.2s"):
            await remote(Tier.SPOT, service.url, timeout=0.2).review(*review_args(Effect.MUTATING))
    finally:
        await service.stop()


async def test_deep_without_a_provider_key_is_503_and_the_router_fails_closed(
    start_service: Callable[..., Awaitable[Running]], remote: Tiers
) -> None:
    service = await start_service(deep=deep_from_env(POLICY, NO_DEEP_ENV))
    deep = remote(Tier.DEEP, service.url)
    with pytest.raises(RemoteTierError, match="Deep Guard is not available") as info:
        await deep.review(*review_args(Effect.DESTRUCTIVE, "drop_table"))
    assert info.value.status == 503

    router = GuardianRouter(FastGuard(POLICY), spot=remote(Tier.SPOT, service.url), deep=deep)
    destructive = await router.decide(make_action("drop_table", table="users"), make_session(), Effect.DESTRUCTIVE)
    assert destructive.verdict is Verdict.DENY and destructive.tier is Tier.DEEP
    assert "fail closed" in destructive.reason

    await service.stop()
    mutating = await router.decide(make_action("create_note", title="x"), make_session(), Effect.MUTATING)
    assert mutating.verdict is Verdict.ALLOW and mutating.tier is Tier.FAST  # SPEC §7: Spot down -> Fast's verdict
    destructive = await router.decide(make_action("drop_table", table="users"), make_session(), Effect.DESTRUCTIVE)
    assert destructive.verdict is Verdict.DENY and destructive.tier is Tier.SPOT and "fail closed" in destructive.reason


async def test_deep_review_through_the_service(
    start_service: Callable[..., Awaitable[Running]],
    remote: Tiers,
    fake_anthropic: FakeAnthropic,  # noqa: F811
) -> None:
    env = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": fake_anthropic.url}
    service = await start_service(deep=deep_from_env(POLICY, env))
    spot, deep = remote(Tier.SPOT, service.url), remote(Tier.DEEP, service.url)
    router = GuardianRouter(FastGuard(POLICY), spot=spot, deep=deep, deep_timeout=10.0)

    fake_anthropic.reply(verdict="allow", confidence=0.93, reasoning="Dropping a staging table matches the intent.")
    action = make_action("drop_table", table="staging_users", password="hunter2-secret")
    allowed = await router.decide(action, make_session(), Effect.DESTRUCTIVE)
    assert allowed.verdict is Verdict.ALLOW and allowed.tier is Tier.DEEP
    assert allowed.confidence == pytest.approx(0.93)
    assert "staging table matches the intent" in allowed.reason
    sent = fake_anthropic.requests[-1].user_text
    assert "clean up the staging database" in sent and "staging_users" in sent
    assert "hunter2-secret" not in sent  # arguments crossed the wire as-is; Deep redacted them

    fake_anthropic.reply(verdict="deny", confidence=0.9, reasoning="Production is out of scope.")
    denied = await deep.review(*review_args(Effect.DESTRUCTIVE, "drop_prod_table"))
    assert denied.verdict is Verdict.DENY and denied.tier is Tier.DEEP


# --------------------------------------------------------------------------- refusing to start


async def test_serve_guardian_refuses_to_start_without_a_good_key(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    with pytest.raises(SystemExit, match=f"refusing to start: {KEY_ENV} is not set"):
        await serve_guardian("127.0.0.1:0", [str(policy)], {})
    with pytest.raises(SystemExit, match="at least 32 bytes"):
        await serve_guardian("127.0.0.1:0", [str(policy)], {KEY_ENV: "short"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_guardian_serves_until_stopped(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    port = _free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve_guardian(f"127.0.0.1:{port}", [str(policy)], NO_DEEP_ENV, stop=stop))
    try:
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    assert await response.json() == {"spot": True, "deep": False}
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the guardian service never came up")
        spot = RemoteTier(Tier.SPOT, f"http://127.0.0.1:{port}", KEY, client_id="sidecar-test", session=http, timeout=5)
        decision = await spot.review(*review_args(Effect.MUTATING))
        assert decision.tier is Tier.SPOT and decision.allowed
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def test_remote_tiers_refuse_without_the_key() -> None:
    with pytest.raises(SystemExit, match=f"--guardian-url: {KEY_ENV} is not set"):
        remote_tiers("http://127.0.0.1:9400", {}, client_id="sidecar-test")
    with pytest.raises(SystemExit, match="at least 32 bytes"):
        remote_tiers("http://127.0.0.1:9400", {KEY_ENV: "short"}, client_id="sidecar-test")
    spot, deep = remote_tiers("http://127.0.0.1:9400/", NO_DEEP_ENV, client_id="sidecar-test")
    assert (spot.tier, deep.tier) == (Tier.SPOT, Tier.DEEP)
    assert spot.url == "http://127.0.0.1:9400/v1/review"
