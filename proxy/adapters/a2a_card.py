"""The agent card as Wicket serves it: every dialable URL points at Wicket, interfaces Wicket
cannot check are gone, the security schemes say what Wicket accepts, and a signed card is
re-signed with Wicket's key (or its signatures dropped), never served with a broken signature.

Cards come in three shapes: A2A 1.0 (``supportedInterfaces``), 0.3 (``url``,
``preferredTransport``, ``additionalInterfaces``) and a2a-sdk's hybrid of both. All are
plain JSON here; nothing in this module parses protobuf.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import rfc8785

from proxy.credentials import KeyRing

CHECKED_BINDINGS = frozenset({"JSONRPC", "HTTP+JSON"})
"""The bindings Wicket parses; a gRPC (or unknown) interface would be a way around it."""

# Fields only a 0.3 card has; a hybrid card's signature (as a2a-sdk computes it) covers the 1.0 view.
V03_ONLY = frozenset(
    {
        "url",
        "preferredTransport",
        "protocolVersion",
        "additionalInterfaces",
        "security",
        "supportsAuthenticatedExtendedCard",
    }
)
BEARER_SCHEME = "wicket_bearer"
OIDC_SCHEME = "wicket_oidc"


class CardError(Exception):
    """The upstream's card cannot be served safely (nothing Wicket can front remains on it)."""


@dataclass(frozen=True, slots=True)
class CardRewriter:
    """Rewrites one upstream agent's card for the Wicket in front of it."""

    upstream_origin: str  # scheme://host[:port] of the agent, lower-case
    keys: KeyRing
    signatures: str = "resign"  # or "drop"
    oidc_issuer: str | None = None
    jwks_url_path: str = "/.well-known/jwks.json"

    def rewrite(self, card: Mapping[str, Any], public_base: str) -> dict[str, Any]:
        """The card Wicket serves at ``public_base`` (its own scheme://host[:port])."""
        out = copy.deepcopy(dict(card))
        base = public_base.rstrip("/")
        had_interfaces = "supportedInterfaces" in out
        if had_interfaces:
            out["supportedInterfaces"] = self._interfaces(out["supportedInterfaces"], base, "protocolBinding")
        if "additionalInterfaces" in out:
            out["additionalInterfaces"] = self._interfaces(out["additionalInterfaces"], base, "transport")
        if "url" in out:
            self._rewrite_v03_url(out, base)
        if had_interfaces and not out["supportedInterfaces"] and "url" not in out:
            raise CardError("the agent card lists no JSON-RPC or HTTP+JSON interface on the agent Wicket fronts")
        self._security(out, hybrid="url" in out)
        signed = bool(out.pop("signatures", None))
        if signed and self.signatures == "resign":
            out["signatures"] = [self._signature(out, base)]
        return out

    def _own(self, url: Any, base: str) -> str | None:
        """``url`` moved onto Wicket if it names the fronted agent; None if it points elsewhere."""
        if not isinstance(url, str):
            return None
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or _origin(parts.scheme, parts.netloc) != self.upstream_origin:
            return None
        wicket = urlsplit(base)
        return urlunsplit((wicket.scheme, wicket.netloc, wicket.path + parts.path, parts.query, ""))

    def _interfaces(self, entries: Any, base: str, binding_key: str) -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = []
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict) or str(entry.get(binding_key, "")).upper() not in CHECKED_BINDINGS:
                continue
            url = self._own(entry.get("url"), base)
            if url is not None:
                kept.append({**entry, "url": url})
        return kept

    def _rewrite_v03_url(self, out: dict[str, Any], base: str) -> None:
        """0.3 requires ``url``: keep it when it is a checked binding on the agent, else fall back
        to the first remaining 0.3-visible interface."""
        transport = str(out.get("preferredTransport") or "JSONRPC").upper()
        url = self._own(out["url"], base) if transport in CHECKED_BINDINGS else None
        if url is None:
            spare = out.get("additionalInterfaces") or []
            if not spare:
                raise CardError("the agent card's url is not an interface Wicket can front")
            url, out["preferredTransport"] = spare[0]["url"], spare[0]["transport"]
        out["url"] = url

    def _security(self, out: dict[str, Any], *, hybrid: bool) -> None:
        """What Wicket accepts: its bearer tokens, and the operator's IdP when one is set."""
        bearer: dict[str, Any] = {"httpAuthSecurityScheme": {"scheme": "Bearer"}}
        schemes: dict[str, Any] = {BEARER_SCHEME: bearer}
        if hybrid:
            bearer.update(type="http", scheme="Bearer")
        if self.oidc_issuer:
            discovery = self.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            oidc: dict[str, Any] = {"openIdConnectSecurityScheme": {"openIdConnectUrl": discovery}}
            if hybrid:
                oidc.update(type="openIdConnect", openIdConnectUrl=discovery)
            schemes[OIDC_SCHEME] = oidc
        out["securitySchemes"] = schemes
        out["securityRequirements"] = [{"schemes": {name: {}}} for name in schemes]
        if hybrid or "security" in out:
            out["security"] = [{name: []} for name in schemes]

    def _signature(self, card: dict[str, Any], base: str) -> dict[str, Any]:
        protected = {"alg": self.keys.alg, "kid": self.keys.kid, "typ": "JOSE", "jku": base + self.jwks_url_path}
        compact = self.keys.sign_bytes(canonical_payload(card), protected)
        header, _, signature = compact.split(".")
        return {"protected": header, "signature": signature}


def canonical_payload(card: Mapping[str, Any]) -> bytes:
    """What a card signature covers: RFC 8785 JSON of the card without ``signatures`` and without
    empty values; for a card with ``supportedInterfaces``, its A2A 1.0 view (as a2a-sdk verifies it)."""
    body = {k: v for k, v in card.items() if k != "signatures"}
    if "supportedInterfaces" in body:
        body = {k: v for k, v in body.items() if k not in V03_ONLY}
        schemes = body.get("securitySchemes")
        if isinstance(schemes, dict):
            body["securitySchemes"] = {
                name: {k: v for k, v in scheme.items() if k.endswith("SecurityScheme")}
                if isinstance(scheme, dict)
                else scheme
                for name, scheme in schemes.items()
            }
    return rfc8785.dumps(_without_empty(body))


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        cleaned_list = [_without_empty(v) for v in value]
        return [v for v in cleaned_list if v not in (None, "", [], {})]
    return value


def _origin(scheme: str, netloc: str) -> str:
    scheme = scheme.lower()
    host = netloc.lower().rsplit("@", 1)[-1]
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return _origin(parts.scheme, parts.netloc)
