"""Delegation chains: who asked whom, each hop signed by the Wicket that let it happen.

When Wicket forwards an allowed call, the credential it mints for the upstream agent carries the
chain so far plus one new link. A link is a compact JWS (``typ: wicket-link+jwt``) signed by the
Wicket that created it, with ``iss`` (that Wicket), ``sub`` (the delegating agent), ``aud`` (the
agent the work goes to), ``scope`` (tool-name globs the receiving agent may use onward), ``exp``,
``jti`` and ``prev`` (hex SHA-256 of the previous link's compact form; empty for the first).
When the upstream agent calls onward through another Wicket with that credential, that Wicket
verifies every link (:func:`verify_chain`) and extends the chain. ``docs/delegation.md`` shows a
decoded example.

The rules, each violation naming the link and the rule:

* at most ``max_hops`` links (5 by default; policy may lower it);
* every link narrows: its scope is covered by the previous link's, its ``exp`` is no later;
* the links join up: each ``sub`` is the previous ``aud``, each ``prev`` the previous link's hash;
* no agent appears twice (no self-delegation, no cycles);
* every signature verifies against a trusted issuer's key, and no link has expired.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from proxy.core.action import Delegation

LINK_TYPE = "wicket-link+jwt"
MAX_HOPS = 5
MAX_CHAIN_BYTES = 64 * 1024
LEEWAY_SECONDS = 5
_ALGORITHMS = ("EdDSA", "ES256")


class ChainError(Exception):
    """A chain broke a rule. ``index`` is the 1-based link (0: the chain as a whole)."""

    def __init__(self, index: int, rule: str, message: str) -> None:
        where = f"delegation link {index}" if index else "delegation chain"
        super().__init__(f"{where}: {message} (rule: {rule})")
        self.index = index
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Link:
    raw: str
    iss: str
    sub: str
    aud: str
    scope: tuple[str, ...]
    exp: int
    jti: str
    prev: str

    @property
    def digest(self) -> str:
        return link_digest(self.raw)


def link_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


KeyLookup = Callable[[str, str | None, str], Any]
"""(issuer, kid, alg) -> the public key to verify with, or None: an issuer (or key) not trusted here."""


def sign_link(
    sign: Callable[[Mapping[str, Any], str], str],
    *,
    issuer: str,
    sub: str,
    aud: str,
    scope: Sequence[str],
    exp: int,
    previous: str | None,
    now: int,
) -> Link:
    """A new link after the compact link ``previous`` (signed by ``sign(claims, typ)``)."""
    claims = {
        "iss": issuer,
        "sub": sub,
        "aud": aud,
        "scope": " ".join(scope),
        "exp": exp,
        "iat": now,
        "jti": "lnk_" + secrets.token_urlsafe(12),
        "prev": link_digest(previous) if previous is not None else "",
    }
    raw = sign(claims, LINK_TYPE)
    return Link(raw, issuer, sub, aud, tuple(scope), exp, claims["jti"], claims["prev"])


def covered(glob: str, allowed: Sequence[str]) -> bool:
    """Whether every tool name ``glob`` admits is admitted by ``allowed`` (a glob read as a name must match)."""
    return any(glob == pattern or fnmatch.fnmatchcase(glob, pattern) for pattern in allowed)


def narrowed(scope: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """The intersection of two glob sets, as globs: each of ``scope``'s that ``allowed`` covers, and
    each of ``allowed``'s that ``scope`` covers (``*`` cut by ``get_*`` is ``get_*``)."""
    kept = [g for g in scope if covered(g, allowed)]
    kept += [p for p in allowed if covered(p, scope) and not covered(p, kept)]
    return tuple(dict.fromkeys(kept))


def verify_chain(
    raw_links: Sequence[Any], key_for: KeyLookup, *, now: float, max_hops: int = MAX_HOPS
) -> tuple[Link, ...]:
    """Every link verified against the rules (see the module docstring); raises ChainError."""
    if not isinstance(raw_links, list | tuple) or not raw_links:
        raise ChainError(0, "format", "the delegation claim must be a non-empty list of signed links")
    if len(raw_links) > max_hops:
        raise ChainError(0, "max_hops", f"{len(raw_links)} hops, more than the {max_hops} allowed")
    if sum(len(r) if isinstance(r, str) else 0 for r in raw_links) > MAX_CHAIN_BYTES:
        raise ChainError(0, "format", f"the chain is larger than {MAX_CHAIN_BYTES} bytes")
    links: list[Link] = []
    seen_agents: set[str] = set()
    for index, raw in enumerate(raw_links, start=1):
        link = _verified(index, raw, key_for, now)
        if links:
            before = links[-1]
            if link.prev != before.digest:
                raise ChainError(
                    index, "prev", "its prev is not the hash of the link before it (cut from another chain)"
                )
            if link.sub != before.aud:
                raise ChainError(
                    index, "continuity", f"delegated by '{link.sub}', but link {index - 1} went to '{before.aud}'"
                )
            wider = [g for g in link.scope if not covered(g, before.scope)]
            if wider:
                raise ChainError(index, "narrowing", f"its scope widens the previous link's with {', '.join(wider)}")
            if link.exp > before.exp:
                raise ChainError(index, "narrowing", "it expires later than the link before it")
        elif link.prev:
            raise ChainError(index, "prev", "the first link must not point at a previous one")
        else:
            seen_agents.add(link.sub)
        if link.aud in seen_agents or link.aud == link.sub:
            raise ChainError(index, "cycle", f"agent '{link.aud}' appears twice in the chain")
        seen_agents.add(link.aud)
        links.append(link)
    return tuple(links)


def _verified(index: int, raw: Any, key_for: KeyLookup, now: float) -> Link:
    if not isinstance(raw, str) or raw.count(".") != 2:
        raise ChainError(index, "format", "not a compact JWS")
    try:
        header = jwt.get_unverified_header(raw)
        unverified = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ChainError(index, "format", "not a readable JWS") from None
    alg, kid = header.get("alg"), header.get("kid")
    if header.get("typ") != LINK_TYPE or alg not in _ALGORITHMS:
        raise ChainError(index, "format", f"typ must be {LINK_TYPE} signed with EdDSA or ES256")
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise ChainError(index, "issuer", "it names no issuer")
    key = key_for(issuer, kid if isinstance(kid, str) else None, alg)
    if key is None:
        raise ChainError(index, "issuer", f"signed by {issuer} with a key not trusted here (policy trust:)")
    try:
        claims = jwt.decode(
            raw,
            key,
            algorithms=[alg],
            options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_aud": False},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise ChainError(index, "expiry", "it has expired") from None
    except jwt.InvalidSignatureError:
        raise ChainError(index, "signature", f"its signature does not verify with {issuer}'s key") from None
    except jwt.PyJWTError as exc:
        raise ChainError(index, "format", f"invalid: {exc}") from None
    fields = [claims.get(k) for k in ("sub", "aud", "jti")]
    scope, prev, exp = claims.get("scope", ""), claims.get("prev", ""), claims["exp"]
    if not all(isinstance(f, str) and f for f in fields) or not isinstance(scope, str) or not isinstance(prev, str):
        raise ChainError(index, "format", "sub, aud and jti must be strings, scope and prev strings")
    if not isinstance(exp, int) or exp + LEEWAY_SECONDS < now:
        raise ChainError(index, "expiry", "it has expired")
    return Link(raw, issuer, fields[0], fields[1], tuple(scope.split()), exp, fields[2], prev)


def describe(links: Sequence[Link]) -> Delegation:
    """What the checker and the audit see of a verified chain: origin, every agent, link ids."""
    agents = (links[0].sub, *(link.aud for link in links))
    return Delegation(
        origin=links[0].sub,
        agents=agents,
        link_ids=tuple(link.jti for link in links),
        scope=links[-1].scope,
        expires_at=min(link.exp for link in links),
    )


def act_claim(agents: Sequence[str]) -> dict[str, Any] | None:
    """RFC 8693 nested ``act``: the current actor first, then whoever it acted for, back to the origin."""
    act: dict[str, Any] | None = None
    for agent in agents:
        act = {"sub": agent, **({"act": act} if act else {})}
    return act
