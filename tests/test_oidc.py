"""Inbound OIDC JWTs and RFC 9728, against a real local issuer over HTTP (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from proxy.core.identity import IdentityError
from proxy.identity_providers.oidc import (
    OidcError,
    OidcVerifier,
    oauth_routes,
    protected_resource_metadata,
    resource_metadata_url,
    www_authenticate,
)
from tests import oidc_issuer as issuer_module
from tests.oidc_issuer import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, OidcIssuer

oidc_issuer = issuer_module.oidc_issuer

VerifierFactory = Callable[..., OidcVerifier]


class Clock:
    """Real time plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def make_verifier(oidc_issuer: OidcIssuer) -> AsyncIterator[VerifierFactory]:
    made: list[OidcVerifier] = []

    def factory(**overrides: Any) -> OidcVerifier:
        options: dict[str, Any] = {"issuer": oidc_issuer.url, "audience": "wicket", **overrides}
        verifier = OidcVerifier(**options)
        made.append(verifier)
        return verifier

    yield factory
    for verifier in made:
        await verifier.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWS built by hand, for tokens no honest library would produce."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{_b64(signature)}"


async def rejected(verifier: OidcVerifier, token: str, status: int = 401) -> str:
    with pytest.raises(OidcError) as info:
        await verifier.verify(token)
    assert info.value.status == status
    assert not token or token not in str(info.value)
    return str(info.value)


# -- good tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_good_token_gives_agent_and_scopes(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory, alg: str):
    verifier = make_verifier()
    token = oidc_issuer.mint(sub="billing-agent", scope="tool:get_* tool:list_* openid", alg=alg)
    identity = await verifier.verify(token)
    claims = oidc_issuer.decode(token, "wicket")
    assert identity.agent_id == "billing-agent"
    assert identity.scopes == ("tool:get_*", "tool:list_*", "openid")
    assert identity.expires_at == claims["exp"]
    assert identity.token_id == claims["jti"]
    assert identity.issuer == oidc_issuer.url


async def test_scp_list_custom_agent_claim_and_audience_list(
    oidc_issuer: OidcIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier(agent_claim="azp")
    token = oidc_issuer.mint(
        aud=["other-api", "wicket"], scope=None, extra_claims={"azp": "ci-bot@acme", "scp": ["tool:read_*", "x"]}
    )
    identity = await verifier.verify(token)
    assert identity.agent_id == "ci-bot@acme"
    assert identity.scopes == ("tool:read_*", "x")


async def test_no_scope_and_no_jti(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    token = oidc_issuer.mint(scope=None, extra_claims={"jti": None})
    identity = await make_verifier().verify(token)
    assert identity.scopes == ()
    assert identity.token_id == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


async def test_expired_within_leeway_is_accepted(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    token = oidc_issuer.mint(ttl=-10)
    assert (await make_verifier(leeway=30).verify(token)).agent_id == "agent-1"
    assert "expired" in await rejected(make_verifier(leeway=0), token)


async def test_identify_maps_rejections_to_identity_errors(
    oidc_issuer: OidcIssuer, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    assert (await verifier.identify(oidc_issuer.mint(sub="a1"))).agent_id == "a1"
    with pytest.raises(IdentityError) as info:
        await verifier.identify(oidc_issuer.mint(aud="elsewhere"))
    assert info.value.status == 401
    assert "audience" in info.value.reason


# -- key discovery, caching and refresh -------------------------------------------------


async def test_discovery_then_cache(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    for n in range(25):
        await verifier.verify(oidc_issuer.mint(sub=f"agent-{n}", alg=("RS256", "ES256")[n % 2]))
    assert oidc_issuer.discovery_fetches == 1
    assert oidc_issuer.jwks_fetches == 1


async def test_explicit_jwks_url_skips_discovery(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier(jwks_url=oidc_issuer.jwks_url)
    assert await verifier.warm()
    await verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.discovery_fetches == 0
    assert oidc_issuer.jwks_fetches == 1


async def test_issuer_with_a_path() -> None:
    async with OidcIssuer(path="/realms/acme") as issuer:
        verifier = OidcVerifier(issuer=issuer.url, audience="wicket")
        try:
            assert (await verifier.verify(issuer.mint(sub="svc"))).agent_id == "svc"
        finally:
            await verifier.close()
        assert issuer.url.endswith("/realms/acme")
        assert issuer.discovery_fetches == 1


async def test_concurrent_cold_start_fetches_once(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    tokens = [oidc_issuer.mint(sub=f"a{n}") for n in range(40)]
    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [i.agent_id for i in identities] == [f"a{n}" for n in range(40)]
    assert oidc_issuer.jwks_fetches == 1


async def test_jwks_refetched_after_ttl(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    clock = Clock()
    verifier = make_verifier(jwks_ttl=300, clock=clock)
    await verifier.verify(oidc_issuer.mint())
    clock.offset = 301
    await verifier.verify(oidc_issuer.mint(ttl=900))
    assert oidc_issuer.jwks_fetches == 2


async def test_rotated_key_refreshes_once(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    await verifier.verify(oidc_issuer.mint())
    old_kid = oidc_issuer.kid("RS256")
    new_kid = oidc_issuer.rotate("RS256")
    assert new_kid != old_kid
    token = oidc_issuer.mint(sub="after-rotation")
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    assert (await verifier.verify(token)).agent_id == "after-rotation"
    assert oidc_issuer.jwks_fetches == 2
    # Tokens signed with the old key still verify, and nothing is refetched.
    assert (await verifier.verify(oidc_issuer.mint(kid=old_kid))).agent_id == "agent-1"
    await verifier.verify(oidc_issuer.mint(sub="again"))
    assert oidc_issuer.jwks_fetches == 2


async def test_unknown_kid_refetch_is_rate_limited(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock, refresh_interval=10)
    await verifier.verify(oidc_issuer.mint())
    assert oidc_issuer.jwks_fetches == 1
    assert "not published" in await rejected(verifier, oidc_issuer.mint(kid="no-such-kid"))
    assert oidc_issuer.jwks_fetches == 2  # one refresh, then fail
    for n in range(20):  # a flood of forged kids inside the interval costs the IdP nothing
        await rejected(verifier, oidc_issuer.mint(kid=f"forged-{n}"))
    assert oidc_issuer.jwks_fetches == 2
    clock.offset = 11
    await rejected(verifier, oidc_issuer.mint(kid="still-missing"))
    assert oidc_issuer.jwks_fetches == 3
    # A real rotation inside the next interval waits for it; after it, the new key is found.
    new_kid = oidc_issuer.rotate("ES256")
    token = oidc_issuer.mint(alg="ES256", sub="late")
    await rejected(verifier, token)
    clock.offset = 22
    assert (await verifier.verify(token)).agent_id == "late"
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    assert oidc_issuer.jwks_fetches == 4


async def test_idp_unreachable_is_503_and_stale_keys_are_kept(make_verifier: VerifierFactory) -> None:
    issuer = OidcIssuer()
    await issuer.start()
    clock = Clock()
    verifier = make_verifier(issuer=issuer.url, jwks_url=issuer.jwks_url, clock=clock, jwks_ttl=60)
    token = issuer.mint(ttl=3600)
    await verifier.verify(token)
    await issuer.stop()
    clock.offset = 120  # the cache is stale and the IdP is gone: the last good keys still verify
    assert (await verifier.verify(issuer.mint(ttl=3600, sub="other"))).agent_id == "other"

    cold = make_verifier(issuer=issuer.url, clock=clock)
    assert not await cold.warm()
    await rejected(cold, token, status=503)
    assert issuer.jwks_fetches == 1


async def test_discovery_naming_another_issuer_is_refused(oidc_issuer: OidcIssuer) -> None:
    verifier = OidcVerifier(issuer=oidc_issuer.url + "/", audience="wicket")
    try:
        token = oidc_issuer.mint(extra_claims={"iss": oidc_issuer.url + "/"})
        await rejected(verifier, token, status=503)
    finally:
        await verifier.close()


# -- attacks ------------------------------------------------------------------------------


async def test_alg_none_is_rejected(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    claims = oidc_issuer.claims()
    verifier = make_verifier()
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "typ": "JWT", "kid": oidc_issuer.kid()}, claims)
        assert "algorithm" in await rejected(verifier, token)
    assert "algorithm" in await rejected(verifier, forge({"typ": "JWT"}, claims))


async def test_hs256_signed_with_the_public_key_is_rejected(
    oidc_issuer: OidcIssuer, make_verifier: VerifierFactory
) -> None:
    claims = oidc_issuer.claims(sub="mallory")
    pem = oidc_issuer.public_pem("RS256")
    jwk_json = json.dumps(oidc_issuer.jwks()["keys"][0]).encode()
    verifier = make_verifier()
    for secret in (pem, pem.strip(), jwk_json):
        for kid in (oidc_issuer.kid("RS256"), None):
            header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
            token = forge(header, claims, lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest())
            assert "algorithm" in await rejected(verifier, token)


def test_verifier_refuses_symmetric_or_none_algorithms(oidc_issuer: OidcIssuer) -> None:
    for algorithms in (("none",), ("HS256",), ("RS256", "HS512"), ()):
        with pytest.raises(ValueError):
            OidcVerifier(issuer=oidc_issuer.url, audience="wicket", algorithms=algorithms)


async def test_algorithm_outside_the_allowlist(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier(algorithms=("ES256",))
    await rejected(verifier, oidc_issuer.mint(alg="RS256"))
    assert (await verifier.verify(oidc_issuer.mint(alg="ES256"))).agent_id == "agent-1"


async def test_es256_header_on_an_rsa_key(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(oidc_issuer.claims(), attacker, algorithm="ES256", headers={"kid": oidc_issuer.kid("RS256")})
    verifier = make_verifier()
    assert "does not match" in await rejected(verifier, token)
    # ... and the reverse: RS256 header naming the EC key.
    attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(oidc_issuer.claims(), attacker_rsa, algorithm="RS256", headers={"kid": oidc_issuer.kid("ES256")})
    assert "does not match" in await rejected(verifier, token)
    assert oidc_issuer.jwks_fetches == 1  # a key-type mismatch is not a reason to refetch


async def test_signature_by_another_key_and_tampering(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(oidc_issuer.claims(), attacker, algorithm="RS256", headers={"kid": oidc_issuer.kid()})
    assert "signature" in await rejected(verifier, forged)
    # An embedded key or a key URL in the header changes nothing: keys come from the JWKS only.
    with_jku = jwt.encode(
        oidc_issuer.claims(),
        attacker,
        algorithm="RS256",
        headers={"kid": oidc_issuer.kid(), "jku": "http://127.0.0.1:1/evil", "jwk": {"kty": "RSA"}},
    )
    assert "signature" in await rejected(verifier, with_jku)
    good = oidc_issuer.mint(sub="agent-1")
    head, _, rest = good.partition(".")
    payload, _, signature = rest.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "root-agent"
    tampered = f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"
    assert "signature" in await rejected(verifier, tampered)


@pytest.mark.parametrize(
    ("mint", "needle"),
    [
        ({"ttl": -120}, "expired"),
        ({"extra_claims": {"nbf": int(time.time()) + 600}}, "not valid yet"),
        ({"extra_claims": {"iat": int(time.time()) + 600}}, "future"),
        ({"extra_claims": {"iss": "https://evil.example"}}, "issuer"),
        ({"extra_claims": {"iss": None}}, "'iss'"),
        ({"aud": "another-service"}, "audience"),
        ({"aud": ["a", "b"]}, "audience"),
        ({"extra_claims": {"aud": None}}, "'aud'"),
        ({"extra_claims": {"exp": None}}, "'exp'"),
        ({"extra_claims": {"exp": "tomorrow"}}, "not a number"),
        ({"extra_claims": {"sub": None}}, "lacks the 'sub'"),
        ({"sub": "anonymous"}, "reserved"),
        ({"sub": "Anonymous"}, "reserved"),
        ({"sub": "two words"}, "not a valid agent id"),
        ({"sub": "agent\n"}, "not a valid agent id"),
        ({"sub": "-leading-dash"}, "not a valid agent id"),
        ({"sub": "x" * 129}, "not a valid agent id"),
        ({"extra_claims": {"sub": 42}}, "sub"),
        ({"extra_claims": {"scope": {"a": 1}}}, "scope"),
        ({"scope": " ".join(f"s{n}" for n in range(300))}, "scopes"),
    ],
)
async def test_claim_checks(
    oidc_issuer: OidcIssuer, make_verifier: VerifierFactory, mint: dict[str, Any], needle: str
) -> None:
    message = await rejected(make_verifier(), oidc_issuer.mint(**mint))
    assert needle in message


async def test_malformed_tokens(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    for token in ("", "abc", "a.b", "a.b.c.d", "!!!.???.***", "x" * 20_000, oidc_issuer.mint() + "." + "x"):
        await rejected(verifier, token)
    key = oidc_issuer._current("RS256").private
    for crit in (["exp"], ["urn:example:policy"]):
        header = {"alg": "RS256", "kid": oidc_issuer.kid(), "crit": crit, "urn:example:policy": 1}
        token = forge(header, oidc_issuer.claims(), lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        await rejected(verifier, token)
    sign = lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
    await rejected(verifier, forge({"alg": "RS256", "kid": 7}, oidc_issuer.claims(), sign))
    assert oidc_issuer.jwks_fetches <= 1


async def test_no_kid_with_several_fitting_keys(oidc_issuer: OidcIssuer, make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    key = oidc_issuer._current("RS256").private
    token = jwt.encode(oidc_issuer.claims(sub="kidless"), key, algorithm="RS256")
    assert (await verifier.verify(token)).agent_id == "kidless"  # one RSA key: unambiguous
    oidc_issuer.rotate("RS256")
    ambiguous = jwt.encode(oidc_issuer.claims(sub="kidless2"), key, algorithm="RS256")
    assert "several keys" in await rejected(make_verifier(), ambiguous)


# -- RFC 9728 ----------------------------------------------------------------------------


def test_protected_resource_metadata_shape() -> None:
    metadata = protected_resource_metadata("https://wicket.example/mcp", "https://idp.example/realms/acme")
    assert metadata == {
        "resource": "https://wicket.example/mcp",
        "authorization_servers": ["https://idp.example/realms/acme"],
        "bearer_methods_supported": ["header"],
    }
    with_scopes = protected_resource_metadata("https://w/mcp", "https://idp", scopes=["tool:get_*"])
    assert with_scopes["scopes_supported"] == ["tool:get_*"]


def test_www_authenticate_values() -> None:
    url = "https://wicket.example/.well-known/oauth-protected-resource/mcp"
    assert www_authenticate(url) == f'Bearer resource_metadata="{url}"'
    assert www_authenticate(url, error="invalid_token") == f'Bearer resource_metadata="{url}", error="invalid_token"'
    value = www_authenticate(url, error="invalid_token", error_description='bad "token"\r\n')
    assert value.endswith("error_description=\"bad 'token'\"")
    assert "\r" not in value and "\n" not in value
    assert resource_metadata_url("https://wicket.example/mcp") == url
    assert (
        resource_metadata_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/.well-known/oauth-protected-resource"
    )


async def _serve(routes: list[web.RouteDef]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.mark.parametrize("configured", [True, False])
async def test_oauth_routes_serve_both_well_known_forms(configured: bool) -> None:
    resource = "https://wicket.example/mcp" if configured else None
    runner, port = await _serve(oauth_routes(resource, "https://idp.example"))
    expected = resource or f"http://127.0.0.1:{port}/mcp"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 200
                    assert response.content_type == "application/json"
                    assert await response.json() == {
                        "resource": expected,
                        "authorization_servers": ["https://idp.example"],
                        "bearer_methods_supported": ["header"],
                    }
            async with http.post(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource") as response:
                assert response.status == 405
    finally:
        await runner.cleanup()


# -- the test issuer's RFC 8693 token endpoint ------------------------------------------------


async def _exchange(issuer: OidcIssuer, form: dict[str, str], auth: tuple[str, str] | None = None) -> Any:
    client_id, secret = auth or (issuer.client_id, issuer.client_secret)
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(issuer.token_endpoint, data=form, headers={"Authorization": f"Basic {basic}"}) as response,
    ):
        return response.status, await response.json()


async def test_issuer_token_exchange(oidc_issuer: OidcIssuer) -> None:
    subject = oidc_issuer.mint(sub="agent-7", scope="repo:read repo:write")
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": "https://git.example/mcp",
        "scope": "repo:read",
    }
    status, body = await _exchange(oidc_issuer, form)
    assert status == 200
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == oidc_issuer.exchange_ttl
    claims = oidc_issuer.decode(body["access_token"], audience="https://git.example/mcp")
    assert claims["sub"] == "agent-7"
    assert claims["scope"] == "repo:read"
    assert claims["act"] == {"sub": oidc_issuer.client_id}
    assert claims["jti"]
    assert claims["exp"] - claims["iat"] == oidc_issuer.exchange_ttl
    assert len(oidc_issuer.exchanges) == 1
    recorded = oidc_issuer.exchanges[0]
    assert recorded.status == 200
    assert recorded.client_id == oidc_issuer.client_id
    assert recorded.form["audience"] == "https://git.example/mcp"
    assert recorded.access_token == body["access_token"]

    status, body = await _exchange(oidc_issuer, {**form, "scope": "repo:read repo:admin"})
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body = await _exchange(oidc_issuer, form, auth=(oidc_issuer.client_id, "wrong"))
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await _exchange(oidc_issuer, {**form, "subject_token": oidc_issuer.mint(ttl=-5)})
    assert (status, body["error"]) == (400, "invalid_grant")
    foreign = jwt.encode(
        oidc_issuer.claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"
    )
    status, body = await _exchange(oidc_issuer, {**form, "subject_token": foreign})
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await _exchange(oidc_issuer, {**form, "grant_type": "client_credentials"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    no_audience = {k: v for k, v in form.items() if k != "audience"}
    status, body = await _exchange(oidc_issuer, no_audience)
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = await _exchange(oidc_issuer, {**no_audience, "resource": "https://r.example"})
    assert status == 200
    assert oidc_issuer.decode(body["access_token"], audience="https://r.example")["scope"] == "repo:read"
    assert [e.status for e in oidc_issuer.exchanges] == [200, 400, 401, 400, 400, 400, 400, 200]

    oidc_issuer.fail_exchange = (503, "temporarily_unavailable")
    status, body = await _exchange(oidc_issuer, form)
    assert (status, body["error"]) == (503, "temporarily_unavailable")


# -- end to end through Wicket (live once the --oidc-* wiring is in Settings) -------------------


STRICT_POLICY = """
version: 1
anonymous: {enabled: false}
"""


async def test_agents_authenticate_with_idp_jwts_end_to_end(oidc_issuer: OidcIssuer, upstream: Any, make_wicket: Any):
    from tests.conftest import mcp_client

    running = await make_wicket(upstream.url, STRICT_POLICY, oidc_issuer=oidc_issuer.url, oidc_audience="wicket")
    base = f"http://127.0.0.1:{running.wicket.data_port}"
    metadata_url = f"{base}/.well-known/oauth-protected-resource/mcp"
    list_tools = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.post(running.url, json=list_tools, headers=accept) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{metadata_url}"'
        bad = oidc_issuer.mint(aud="someone-else")
        async with http.post(running.url, json=list_tools, headers={**accept, "Authorization": f"Bearer {bad}"}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{metadata_url}", error="invalid_token"'
            assert bad not in await r.text()
        async with http.get(metadata_url) as response:
            assert await response.json() == {
                "resource": f"{base}/mcp",
                "authorization_servers": [oidc_issuer.url],
                "bearer_methods_supported": ["header"],
            }

    token = oidc_issuer.mint(sub="weather-bot", scope="openid tool:get_*")
    async with mcp_client(running.url, token=token, mode="2026-07-28") as client:
        assert not (await client.call_tool("get_weather", {"city": "Oslo"})).is_error
        assert not (await client.call_tool("get_weather", {"city": "Rome"})).is_error
        denied = await client.call_tool("list_notes", {})  # outside the token's tool:get_* ceiling
    assert denied.is_error
    assert "scope ceiling" in denied.meta["wicket/decision"]["reason"]
    assert upstream.ledger.names() == ["get_weather", "get_weather"]
    calls = [
        e
        for e in running.audit_events()
        if e.get("event") == "decision" and e.get("action") == "tools/call:get_weather"
    ]
    assert {e["agent_id"] for e in calls} == {"weather-bot"}
    sessions = {e["session_id"] for e in calls}
    assert len(sessions) == 1 and next(iter(sessions)).startswith("ses_oidc_")  # one token, one session
    assert token not in running.audit_path.read_text()
    assert oidc_issuer.jwks_fetches == 1
