"""Revoked agents, sessions and tokens, held in memory so the check costs a set lookup.

The store persists revocations and fans them out (pub/sub on Redis); each replica keeps
this list current from that feed plus a periodic full resync for missed messages.

Revocations are permanent, so the in-memory list only grows, and the store's plain set is
backed by a signed list (:class:`SignedRevocations`): a revocation deleted from the store
is still enforced, reported and put back, never silently lifted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from proxy.core.sessions import RecordSigner, SessionIntegrityError
from proxy.state.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

KINDS = ("agent", "session", "token")
SIGNED_KEY = "wicket:revocations:signed"
_CAS_ATTEMPTS = 16


class RevocationList:
    """What this replica refuses. ``on_new(via, count)`` hears of entries new to it, and how they came:
    ``local`` (this replica's API), ``feed`` (another replica's announcement), ``resync`` (the periodic
    reload found what the feed missed, or there is no feed) or ``start``."""

    def __init__(self, on_new: Callable[[str, int], None] | None = None) -> None:
        self._items: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self._on_new = on_new
        self._own: set[tuple[str, str]] = set()  # being revoked through this replica's API

    def add(self, kind: str, ident: str, via: str = "feed") -> None:
        if self._insert(kind, ident) and self._on_new is not None:
            self._on_new("local" if (kind, ident) in self._own else via, 1)

    @contextlib.contextmanager
    def revoking(self, kind: str, ident: str) -> Iterator[None]:
        """This replica's API is revoking the entry: it counts as ``local`` even if this replica's
        own feed delivers the announcement before the API call returns."""
        self._own.add((kind, ident))
        try:
            yield
        finally:
            self._own.discard((kind, ident))

    def update(self, items: Iterable[tuple[str, str]], via: str = "resync") -> None:
        """Add every item; nothing is ever removed (a revocation is permanent)."""
        new = sum(self._insert(kind, ident) for kind, ident in items)
        if new and self._on_new is not None:
            self._on_new(via, new)

    def _insert(self, kind: str, ident: str) -> bool:
        """True if the entry is new here (an unknown kind is ignored)."""
        idents = self._items.get(kind)
        if idents is None or ident in idents:
            return False
        idents.add(ident)
        return True

    def items(self) -> set[tuple[str, str]]:
        return {(kind, ident) for kind, idents in self._items.items() for ident in idents}

    def reason(self, agent_id: str, session_id: str | None, token_id: str | None) -> str | None:
        """Why this caller is refused, or None."""
        if agent_id in self._items["agent"]:
            return f"agent '{agent_id}' has been revoked"
        if session_id is not None and session_id in self._items["session"]:
            return "this session has been revoked"
        if token_id is not None and token_id in self._items["token"]:
            return "this token has been revoked"
        return None

    def reason_for_chain(self, agents: Iterable[str], link_ids: Iterable[str]) -> str | None:
        """Why a delegation chain is refused: an agent in it, or one of its links (``wicket revoke token <jti>``)."""
        revoked_agents = self._items["agent"]
        for agent in agents:
            if agent in revoked_agents:
                return f"agent '{agent}' in the delegation chain has been revoked"
        revoked_tokens = self._items["token"]
        for link_id in link_ids:
            if link_id in revoked_tokens:
                return f"link {link_id} of the delegation chain has been revoked"
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._items.values())


@dataclass(frozen=True, slots=True)
class Loaded:
    """Every revocation the store vouches for or holds, and what was wrong with it (None: nothing)."""

    items: frozenset[tuple[str, str]]
    problem: str | None = None


class SignedRevocations:
    """The store's revocation set plus one HMAC-signed, versioned list of the same entries.

    ``revoke`` signs the entry into the list before it is announced, so every genuine entry of
    the set is also signed. ``load`` compares the two: an entry signed but missing from the set
    (deleted), a list that fails its check, vanished or went back to an older version than this
    process saw, or entries in the set nobody signed are reported; every entry either side holds
    stays in force, and what this process already knew is signed and stored again.
    """

    def __init__(self, store: Store, signer: RecordSigner, in_force: RevocationList | None = None) -> None:
        self._store = store
        self._signer = signer
        self._in_force = in_force  # this replica's list: what it revokes is in force here before it is announced
        self._version = 0  # the highest version of the signed list this process saw

    async def revoke(self, kind: str, ident: str, *, if_present: str | None = None) -> bool:
        """Enforce the entry here, announce it, sign it into the list, then persist and announce it
        again (``Store.revoke``).

        This replica refuses the access before anything is sent (not only once its own feed echoes
        the announcement back), and the first announcement goes out before the signed list is read
        and written (two round trips and an HMAC over the whole list), so replicas stop admitting
        the revoked access without waiting for that bookkeeping. A revocation only ever takes
        access away, and a replica keeps enforcing what it was told (``load(known)``), so announcing
        early cannot let anything through; if the signing fails, the caller hears of it and retries.

        ``if_present`` (a store key, e.g. a session's record): revoke only if it exists, checked
        in the same step as the announcement (one round trip, not a read before it); False, and
        nothing enforced or written, if it does not. That entry is enforced here as the
        announcement goes out rather than just before.
        """
        if if_present is not None:
            # Only a record that exists is revoked (a session id): checked in the announcing step.
            own = self._in_force.revoking(kind, ident) if self._in_force is not None else contextlib.nullcontext()
            with own:
                if not await self._store.announce(kind, ident, if_present=if_present):
                    return False
                if self._in_force is not None:
                    self._in_force.add(kind, ident, "local")
        else:
            if self._in_force is not None:
                self._in_force.add(kind, ident, "local")
            await self._store.announce(kind, ident)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._store.get(SIGNED_KEY)
            signed, version, _ = self._decode(raw)
            if (kind, ident) in signed:
                break
            if await self._write(raw, signed | {(kind, ident)}, version):
                break
        else:
            raise StoreUnavailable("the signed revocation list kept changing under concurrent writers; try again")
        await self._store.revoke(kind, ident)
        return True

    async def load(self, known: Iterable[tuple[str, str]] = ()) -> Loaded:
        """Read and cross-check both; ``known`` (what this replica already enforces) is kept and re-signed."""
        raw = await self._store.get(SIGNED_KEY)  # the list first: an entry is signed before it is added to the set
        held = set(await self._store.revocations())
        signed, version, problems = self._decode(raw)
        if raw is None and (held or self._version):
            problems.append("the signed revocation list was deleted from the store")
        if signed - held:
            held = set(await self._store.revocations())  # a revocation may have been signed but not yet added
        deleted = signed - held
        if deleted:
            shown = ", ".join(f"{k} {i}" for k, i in sorted(deleted)[:5])
            problems.append(f"{len(deleted)} signed revocation(s) were deleted from the store ({shown})")
        unsigned = held - signed
        if unsigned and not problems:
            problems.append(f"{len(unsigned)} revocation(s) in the store are not in the signed list")
        everything = frozenset(signed | held | set(known))
        if problems:
            await self._repair(raw, everything, version, everything - held)
        return Loaded(everything, "; ".join(problems) or None)

    async def _repair(
        self, raw: bytes | None, items: frozenset[tuple[str, str]], version: int, missing: frozenset[tuple[str, str]]
    ) -> None:
        """Sign what is in force and put deleted entries back; a failure here is logged, not raised."""
        try:
            await self._write(raw, set(items), version)
            for kind, ident in sorted(missing):
                await self._store.revoke(kind, ident)
        except StoreUnavailable as exc:
            log.error("the revocation list could not be repaired: %s", exc)

    def _decode(self, raw: bytes | None) -> tuple[set[tuple[str, str]], int, list[str]]:
        """(signed entries, version, problems); an unusable list counts as empty, with the reason."""
        if raw is None:
            return set(), self._version, []
        try:
            body = self._signer.decode(SIGNED_KEY, raw)
            items, version = body["items"], body["version"]
            if type(version) is not int or not isinstance(items, list):
                raise SessionIntegrityError("the signed revocation list is malformed")
            signed = {(str(k), str(i)) for k, i in items}
        except (SessionIntegrityError, KeyError, TypeError, ValueError) as exc:
            return set(), self._version, [f"the signed revocation list failed its integrity check ({exc})"]
        if version < self._version:
            return (
                signed,
                self._version,
                [f"the signed revocation list went back from version {self._version} to {version}"],
            )
        self._version = version
        return signed, version, []

    async def _write(self, raw: bytes | None, items: set[tuple[str, str]], version: int) -> bool:
        version = max(version, self._version) + 1
        body = {"items": sorted([k, i] for k, i in items), "version": version}
        if not await self._store.compare_and_set(SIGNED_KEY, raw, self._signer.encode(SIGNED_KEY, body)):
            return False
        self._version = version
        return True
