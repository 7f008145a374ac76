"""Upstream credentials: what each forwarded call carries instead of the agent's token.

``minted`` JWTs signed by Wicket's :class:`KeyRing` (published as a JWKS), ``static``
secrets, RFC 8693 ``exchange`` at the operator's IdP, or an explicit ``passthrough``.
This package is an edge: it may use aiohttp; ``proxy.core`` never imports it.
"""

from proxy.core.action import arguments_sha256
from proxy.credentials.broker import (
    CredentialBroker,
    CredentialConfigError,
    IssuedCredential,
    fingerprint,
    narrow_scope,
    passthrough_warnings,
)
from proxy.credentials.exchange import CredentialError, ExchangedToken, TokenExchanger
from proxy.credentials.keys import JWKS_PATH, KeyRing, SigningKeyError, jwk_thumbprint, jwks_handler

__all__ = [
    "JWKS_PATH",
    "CredentialBroker",
    "CredentialConfigError",
    "CredentialError",
    "ExchangedToken",
    "IssuedCredential",
    "KeyRing",
    "SigningKeyError",
    "TokenExchanger",
    "arguments_sha256",
    "fingerprint",
    "jwk_thumbprint",
    "jwks_handler",
    "narrow_scope",
    "passthrough_warnings",
]
