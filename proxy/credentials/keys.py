"""Wicket's signing keys for minted credentials: load or generate, publish as a JWKS, rotate.

Upstreams verify minted credentials against the JWKS Wicket serves at
``/.well-known/jwks.json``. A rotated-out key stays published until the last credential it
signed has expired, so rotation never breaks a call in flight.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from binascii import b2a_base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from nacl.bindings import crypto_sign, crypto_sign_BYTES, crypto_sign_seed_keypair

from proxy.audit.chain import fast_json

log = logging.getLogger(__name__)

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

SIGNING_KEY_ENV = "WICKET_SIGNING_KEY"
PREVIOUS_KEY_ENV = "WICKET_SIGNING_KEY_PREVIOUS"
JWKS_PATH = "/.well-known/jwks.json"
MAX_CREDENTIAL_TTL = 3600
"""The policy's upper bound on ``credentials.ttl_seconds``: a retired key is kept this long by default."""


class SigningKeyError(ValueError):
    """A configured signing key cannot be used. The message never contains key material."""


_URLSAFE = bytes.maketrans(b"+/", b"-_")
"""base64 to base64url (RFC 4648 section 5); ``=`` (only ever trailing padding) is deleted in the same pass."""


def b64url_bytes(data: bytes) -> bytes:
    """Unpadded base64url: ``base64.urlsafe_b64encode(data).rstrip(b"=")`` in two C calls instead of five."""
    return b2a_base64(data, newline=False).translate(_URLSAFE, b"=")


def b64url(data: bytes) -> str:
    """:func:`b64url_bytes` as text. ``b64url(os.urandom(n))`` is ``secrets.token_urlsafe(n)`` (the same
    bytes source, alphabet and length)."""
    return b64url_bytes(data).decode("ascii")


def compact_jws(header: bytes, claims: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS: ``header`` (its base64url form and the ``.``), ``claims`` and ``sign``'s
    signature over the two. Byte for byte what ``jwt.encode`` makes of the same claims (compact
    JSON in their order), without its copies and checks: this runs for every forwarded call."""
    plain = claims if type(claims) is dict else dict(claims)
    payload = fast_json(plain)  # json.dumps' bytes, several times faster, when orjson writes them alike
    if payload is None or not payload.isascii() or b"\x7f" in payload:  # PyJWT's json.dumps escapes those
        payload = json.dumps(plain, separators=(",", ":")).encode()
    signing_input = header + b64url_bytes(payload)
    return (signing_input + b"." + b64url_bytes(sign(signing_input))).decode("ascii")


HS256_MIN_SECRET_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key is at least as long as the hash output."""

_HS256_HEADER: bytes = b64url_bytes(b'{"alg":"HS256","typ":"JWT"}') + b"."


def sign_hs256(secret: bytes, claims: Mapping[str, Any]) -> str:
    """A JWT of ``claims`` signed with HMAC-SHA256 (``alg: HS256``): for an upstream that shares
    ``secret`` with Wicket (policy ``credentials.alg: HS256``). One C call instead of an Ed25519
    signature; no ``kid``, since a secret's digest is not for publishing and the upstream holds
    one secret (or, while it rotates, tries both)."""
    return compact_jws(_HS256_HEADER, claims, lambda data: hmac.digest(secret, data, "sha256"))


def _jws_signer(private_key: PrivateKey) -> Callable[[bytes], bytes]:
    """The raw JWS signature function of ``private_key``: Ed25519 as is, ES256 as R || S (RFC 7518 3.4).

    Ed25519 signs through libsodium (PyNaCl's ``nacl.bindings``, below ``SigningKey``'s encoder and
    result wrappers), about 1.5 times as fast as OpenSSL through ``cryptography`` here; its signatures
    are deterministic, so the bytes are the same. Everything else about the key (loading, JWKS,
    verification) stays with ``cryptography``.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        _, secret = crypto_sign_seed_keypair(private_key.private_bytes_raw())

        def sign_ed25519(data: bytes) -> bytes:
            return crypto_sign(data, secret)[:crypto_sign_BYTES]  # signature || message

        return sign_ed25519
    algorithm = ec.ECDSA(hashes.SHA256())

    def sign_es256(data: bytes) -> bytes:
        r, s = decode_dss_signature(private_key.sign(data, algorithm))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign_es256


def public_jwk(public: PublicKey) -> dict[str, str]:
    """The RFC 7517 members that identify a public key (RFC 8037 OKP or RFC 7518 EC P-256)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        numbers = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
    raise SigningKeyError("signing keys must be Ed25519 or EC P-256 (ES256)")


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: base64url SHA-256 of the required members, sorted, without whitespace."""
    required = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class _PublishedKey:
    kid: str
    alg: str
    jwk: dict[str, str]

    def public(self) -> dict[str, str]:
        return {**self.jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def _published(public: PublicKey) -> _PublishedKey:
    jwk = public_jwk(public)
    return _PublishedKey(kid=jwk_thumbprint(jwk), alg="EdDSA" if jwk["kty"] == "OKP" else "ES256", jwk=jwk)


def _pem_bytes(value: str, env_name: str) -> bytes:
    """``value`` is PEM text itself, or the path of a file holding it."""
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{env_name}: cannot read key file {value!r}: {exc.strerror or exc}") from None


def load_private_key(pem: bytes, source: str = SIGNING_KEY_ENV) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8, or SEC1 for EC) that Wicket can sign with."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # never echo the PEM in the message
        kind = "it is encrypted (use an unencrypted key)" if isinstance(exc, TypeError) else "it is not a PEM key"
        raise SigningKeyError(f"{source}: cannot load the private key: {kind}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise SigningKeyError(f"{source}: the key must be Ed25519 or EC P-256 (ES256), not {type(key).__name__}")


def _load_public_or_private(pem: bytes, source: str) -> PublicKey:
    if b"PRIVATE KEY" in pem:
        return load_private_key(pem, source).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{source}: cannot load the key: it is not a PEM key") from None
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        public_jwk(key)  # refuses other curves
        return key
    raise SigningKeyError(f"{source}: the key must be Ed25519 or EC P-256 (ES256), not {type(key).__name__}")


def public_key_from_pem(value: str, source: str) -> dict[str, str]:
    """The public JWK (with ``kid``) of a PEM key given as text or a file path, private or public:
    what ``wicket audit verify --key`` checks checkpoint signatures against."""
    published = _published(_load_public_or_private(_pem_bytes(value, source), source))
    return published.public()


class KeyRing:
    """The active signing key plus the retired public keys still published in the JWKS.

    ``max_ttl`` is the longest lifetime of a credential this ring signs: a retired key is
    published for that long after rotation (plus ``grace`` for verifiers' clock leeway).
    """

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        max_ttl: float = MAX_CREDENTIAL_TTL,
        grace: float = 0.0,
        clock: Callable[[], float] = time.time,
        ephemeral: bool = False,
    ) -> None:
        self._clock = clock
        self._retain = max_ttl + grace
        self.ephemeral = ephemeral
        self._retired: list[tuple[_PublishedKey, float]] = []  # (key, published until)
        self._use(private_key, _published(private_key.public_key()))

    def _use(self, private_key: PrivateKey, published: _PublishedKey) -> None:
        """Sign with ``private_key`` from now on; its JWT header is encoded once, here."""
        self._private, self._active = private_key, published
        self._signer = _jws_signer(private_key)
        header = {"alg": published.alg, "kid": published.kid, "typ": "JWT"}  # sorted, as PyJWT writes it
        self._jwt_header = b64url_bytes(json.dumps(header, separators=(",", ":")).encode()) + b"."
        self._typed_headers: dict[str, bytes] = {}

    @property
    def kid(self) -> str:
        return self._active.kid

    @property
    def alg(self) -> str:
        return self._active.alg

    @classmethod
    def generate(cls, alg: str = "EdDSA", **kwargs: Any) -> KeyRing:
        """A fresh in-memory key (``EdDSA`` or ``ES256``)."""
        key: PrivateKey = (
            ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
        )
        return cls(key, **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str], **kwargs: Any) -> KeyRing:
        """``WICKET_SIGNING_KEY`` (PEM text or a path to it), else an ephemeral Ed25519 key.

        ``WICKET_SIGNING_KEY_PREVIOUS`` (a private or public PEM, or a path) keeps the key of
        the previous run published for ``max_ttl``, so rotating by restarting does not break
        credentials issued just before the restart.
        """
        value = env.get(SIGNING_KEY_ENV, "").strip()
        if value:
            ring = cls(load_private_key(_pem_bytes(value, SIGNING_KEY_ENV)), **kwargs)
            log.info("minted credentials are signed with %s key %s from %s", ring.alg, ring.kid, SIGNING_KEY_ENV)
        else:
            ring = cls(ed25519.Ed25519PrivateKey.generate(), ephemeral=True, **kwargs)
            log.warning(
                "no %s: minted credentials are signed with an ephemeral Ed25519 key %s generated for this "
                "process; upstreams must re-fetch the JWKS after every restart",
                SIGNING_KEY_ENV,
                ring.kid,
            )
        previous = env.get(PREVIOUS_KEY_ENV, "").strip()
        if previous:
            ring.retire(_load_public_or_private(_pem_bytes(previous, PREVIOUS_KEY_ENV), PREVIOUS_KEY_ENV))
        return ring

    def rotate(self, new_private_key: PrivateKey) -> str:
        """Sign with ``new_private_key`` from now on; the old public key stays published for
        ``max_ttl``. Returns the new ``kid``."""
        if not isinstance(new_private_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise SigningKeyError("signing keys must be Ed25519 or EC P-256 (ES256)")
        published = _published(new_private_key.public_key())
        if published.kid != self._active.kid:
            self._retired.append((self._active, self._clock() + self._retain))
        self._use(new_private_key, published)
        self._retired = [(k, until) for k, until in self._retired if k.kid != published.kid]
        log.info("signing key rotated: now %s, previous stays published for %.0f s", published.kid, self._retain)
        return published.kid

    def retire(self, public_key: PublicKey) -> None:
        """Publish a key that no longer signs (the previous run's) for ``max_ttl`` from now."""
        published = _published(public_key)
        if published.kid != self._active.kid:
            self._retired.append((published, self._clock() + self._retain))

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: the active key first, then retired keys not yet past their time."""
        now = self._clock()
        self._retired = [(k, until) for k, until in self._retired if until > now]
        return {"keys": [self._active.public(), *(k.public() for k, _ in self._retired)]}

    def sign(self, claims: Mapping[str, Any], typ: str = "JWT") -> str:
        """A compact JWS of ``claims`` with the active key; its ``kid`` and ``typ`` go in the header.

        This runs for every forwarded call, so it signs with the key directly behind a header
        encoded once per key and ``typ``. The token is byte for byte what ``jwt.encode`` makes of the
        same claims (header keys sorted, claims compact in their order), without its copies and checks.
        """
        return compact_jws(self._jwt_header if typ == "JWT" else self._typed_header(typ), claims, self._signer)

    def _typed_header(self, typ: str) -> bytes:
        cached = self._typed_headers.get(typ)
        if cached is None:
            header = {"alg": self._active.alg, "kid": self._active.kid, "typ": typ}
            cached = b64url_bytes(json.dumps(header, separators=(",", ":")).encode()) + b"."
            self._typed_headers[typ] = cached
        return cached

    def sign_bytes(self, payload: bytes, protected: Mapping[str, Any]) -> str:
        """A compact JWS over exact bytes (an agent card's canonical JSON): ``jwt.encode`` would
        re-serialise a dict, so the bytes signed would not be the bytes a verifier canonicalises."""
        return jwt.api_jws.encode(payload, self._private, algorithm=self.alg, headers={**protected, "kid": self.kid})

    def __repr__(self) -> str:
        return f"KeyRing(kid={self.kid!r}, alg={self.alg!r}, retired={len(self._retired)})"


def jwks_handler(keys: KeyRing, *, max_age: int = 300) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``keys.jwks()`` (mount it at :data:`JWKS_PATH`).

    ``max_age`` lets upstreams cache the set; a verifier that meets an unknown ``kid`` after a
    rotation must re-fetch it regardless (every common JWT library does).
    """

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(keys.jwks(), headers={"Cache-Control": f"public, max-age={max_age}"})

    return handle
