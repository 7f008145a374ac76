"""Policy files: load, validate against the JSON Schema, merge, and answer per-call questions.

The JSON Schema in ``policy_schema.json`` is the single source of truth for the language.
Rather than converting YAML to plain data and losing positions, a small interpreter for the
subset of JSON Schema that file uses walks the node tree from ``yaml.compose``, so every
problem is reported as ``file:line: message`` — an operator fixing a policy needs the line.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib.resources
import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.core import flows as flow_rules
from proxy.core import limits as limit_rules
from proxy.core import protection
from proxy.core.action import Effect
from proxy.core.patterns import GlobSet

__all__ = [
    "AgentRule",
    "AnomalySettings",
    "ApprovalSettings",
    "Constraint",
    "CredentialSettings",
    "DeepSettings",
    "GuardianSettings",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "SpotSettings",
    "UpstreamRule",
    "WebhookSettings",
    "check_files",
    "load_policy",
    "normalise_url",
    "parse_policy_text",
    "policy_schema",
]

_T = TypeVar("_T")

_MEMO_LIMIT: Final = 4096
"""Agent ids and tool names come from the wire, so per-instance memo caches must stay bounded."""

_GLOB_CHARS: Final = frozenset("*?[")

# GlobSet is immutable, so sharing these as dataclass defaults is safe.
_EVERYTHING: Final = GlobSet(["*"])
_NOTHING: Final = GlobSet()


# --------------------------------------------------------------------------- issues


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in one policy file, located precisely enough for an editor to jump to it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """Raised by :func:`load_policy` with every issue of every file, so one run shows them all."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues: list[PolicyIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


# --------------------------------------------------------------------------- the loaded policy


@dataclass(frozen=True, slots=True)
class AgentRule:
    """One ``agents`` entry.

    ``declares_capabilities`` is False for an entry that only adds a blocklist: such an entry
    must not replace ``defaults.capabilities`` (an empty grant would lock the agent out).
    """

    match: GlobSet
    capabilities: GlobSet
    blocklist: GlobSet = _NOTHING
    declares_capabilities: bool = True


@dataclass(frozen=True, slots=True)
class DelegationRule:
    """A ``delegation.rules`` entry: delegated calls to ``tools`` must start at ``origins`` and be at most
    ``max_depth`` links deep."""

    tools: GlobSet
    origins: GlobSet | None = None
    max_depth: int | None = None


@dataclass(frozen=True, slots=True)
class IntrospectionSettings:
    url: str
    client_id: str
    client_secret_env: str
    cache_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """A ``trust`` entry: another Wicket deployment whose credentials and delegation links are accepted."""

    issuer: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    agents: GlobSet | None = None
    scopes: tuple[str, ...] | None = None
    mode: str = "read-only"
    introspection: IntrospectionSettings | None = None


def _trust_entry(entry: Mapping[str, Any]) -> TrustEntry:
    spec = entry.get("introspection")
    return TrustEntry(
        issuer=entry["issuer"],
        jwks_url=entry.get("jwks_url"),
        jwks_file=entry.get("jwks_file"),
        agents=GlobSet(entry["agents"]) if "agents" in entry else None,
        scopes=tuple(entry["scopes"]) if "scopes" in entry else None,
        mode=entry.get("mode", "read-only"),
        introspection=IntrospectionSettings(
            spec["url"], spec["client_id"], spec["client_secret_env"], float(spec.get("cache_seconds", 5.0))
        )
        if spec
        else None,
    )


@dataclass(frozen=True, slots=True)
class UpstreamRule:
    """One ``upstreams`` entry: whether that server's tool annotations may lower an effect."""

    url: str
    trusted: bool = False
    mode: str | None = None
    """``enforce`` | ``shadow`` for calls to this upstream; None: the policy's top-level ``mode``."""
    env: tuple[str, ...] = ()
    """A stdio upstream: environment variables its children get beyond the allowlist."""


@functools.lru_cache(maxsize=512)
def normalise_url(url: str) -> str:
    """Canonical form for comparing upstream URLs: lower-case scheme and host, no default port,
    no trailing slash. Configs and policies are written by different people, so
    ``HTTP://Host:80/mcp/`` and ``http://host/mcp`` must be the same upstream.

    Pure, and asked for the same few upstream URLs on every call (credential audiences, routing),
    so the answers are remembered."""
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.rstrip("/")
    scheme = parts.scheme.lower()
    userinfo, at, hostport = parts.netloc.rpartition("@")
    hostport = hostport.lower()
    default_port = {"http": ":80", "https": ":443"}.get(scheme)
    if default_port and hostport.endswith(default_port):
        hostport = hostport[: -len(default_port)]
    return urlunsplit((scheme, userinfo + at + hostport, parts.path.rstrip("/"), parts.query, parts.fragment))


# Which ``credentials`` keys mean something in which mode: a key given for another mode is a
# mistake (a forgotten ``mode: static``), never silently ignored.
_CREDENTIAL_KEYS: Final[dict[str, frozenset[str]]] = {
    "minted": frozenset({"ttl_seconds", "scope", "alg", "value_env", "value_file"}),
    "static": frozenset({"header", "value_env", "value_file"}),
    "exchange": frozenset(
        {"scope", "token_endpoint", "client_id", "client_secret_env", "audience", "subject_token_type"}
    ),
    "passthrough": frozenset(),
}
# Headers a static secret must not replace: the proxy or the MCP transport owns them.
_RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    }
)

CredentialBlock = tuple[tuple[str, Any], ...]
"""One validated ``credentials`` mapping, frozen as sorted (key, value) pairs (lists become tuples)."""


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    """The effective ``credentials`` for one upstream and tool: the upstream's keys, the tool's on top.

    The broker (``proxy.credentials``) turns these into the header sent upstream; ``None``
    means not configured (``audience`` then defaults to the upstream's normalised URL).
    """

    mode: str = "minted"
    alg: str | None = None
    """minted: ``HS256`` signs with a secret shared with the upstream (``value_env``/``value_file``)
    instead of Wicket's signing key; None: the signing key's algorithm (EdDSA or ES256)."""
    ttl_seconds: int = 60
    scope: tuple[str, ...] = ()
    header: str = "Authorization"
    value_env: str | None = None
    value_file: str | None = None
    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    audience: str | None = None
    subject_token_type: str = "jwt"


_DEFAULT_CREDENTIALS: Final = CredentialSettings()


def _freeze_credentials(block: Mapping[str, Any]) -> CredentialBlock:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in block.items()))


def _effective_credentials(upstream: CredentialBlock, tool: CredentialBlock) -> dict[str, Any]:
    """Tool keys win over upstream keys; a tool naming a secret source replaces the upstream's source."""
    merged = dict(upstream)
    given = dict(tool)
    if "value_env" in given or "value_file" in given:
        merged.pop("value_env", None)
        merged.pop("value_file", None)
    merged.update(given)
    return merged


def _credential_problems(merged: Mapping[str, Any], given: Iterable[str], block: Iterable[str] = ()) -> list[str]:
    """What is wrong with one effective credentials setting; ``given`` are the keys to blame for
    keys of another mode, ``block`` the keys of the block being checked (a secret source it names
    for a minted credential that is not HS256 would be ignored: an error, never silent)."""
    mode = merged.get("mode", "minted")
    problems: list[str] = []
    stray = sorted(k for k in given if k != "mode" and k not in _CREDENTIAL_KEYS[mode])
    if stray:
        names = ", ".join(stray)
        problems.append(f"{names} {'does' if len(stray) == 1 else 'do'} not apply to mode '{mode}'")
    sources = [k for k in ("value_env", "value_file") if k in merged]
    if mode == "minted":
        if merged.get("alg") == "HS256":
            if len(sources) != 1:
                both = " (both are given)" if sources else ""
                problems.append(f"alg 'HS256' needs exactly one of value_env or value_file: the shared secret{both}")
        elif named := [k for k in sources if k in block]:
            problems.append(
                f"{' and '.join(named)} {'applies' if len(named) == 1 else 'apply'} to mode 'minted' "
                "only with alg 'HS256' (a minted credential is otherwise signed with Wicket's signing key)"
            )
    if mode == "static":
        if len(sources) != 1:
            both = " (both are given)" if sources else ""
            problems.append(f"mode 'static' needs exactly one of value_env or value_file{both}")
        if str(merged.get("header", "Authorization")).lower() in _RESERVED_HEADERS:
            problems.append(f"header {merged['header']!r} is set by Wicket or the MCP transport; choose another")
    elif mode == "exchange":
        missing = [k for k in ("token_endpoint", "client_id", "client_secret_env") if k not in merged]
        if missing:
            problems.append(f"mode 'exchange' needs {', '.join(missing)}")
    return problems


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """SPEC §8 anomaly escalation: when a session's rates raise the effect one tier."""

    min_calls: int = 5
    denial_rate: float = 0.3
    write_ratio: float = 0.8


@dataclass(frozen=True, slots=True)
class SpotSettings:
    """The Spot risk engine's window and the score thresholds that map risk to a verdict."""

    window_seconds: int = 300
    approval_at: float = 0.5
    deny_at: float = 0.8
    max_session_age_seconds: int = 86400
    max_calls_per_minute: int = 60


@dataclass(frozen=True, slots=True)
class DeepSettings:
    """How far Deep Guard's (LLM) verdicts are trusted, and how long they are reused."""

    min_confidence: float = 0.7
    low_confidence: str = "approval_required"  # "deny" | "approval_required"
    timeout_seconds: float = 10.0
    cache_ttl_seconds: int = 60


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """``approvals.webhook``: where new approval requests are announced, and in which shape."""

    url: str
    format: str = "wicket"  # "wicket" | "slack"
    timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """``approvals:``: how long an elevation and a pending request last (SPEC §8: at most 300 s of elevation)."""

    elevation_seconds: int = 300
    request_ttl_seconds: int = 600
    webhook: WebhookSettings | None = None
    bind_mutating: str = "tool"  # approvals.bind.mutating: "tool" (any arguments) | "call" (these arguments)
    bind_destructive: str = "call"

    def call_bound(self, effect: Effect) -> bool:
        """Whether an approval for an action of this effect covers only the call's exact arguments."""
        bind = self.bind_destructive if effect >= Effect.DESTRUCTIVE else self.bind_mutating
        return bind == "call"


@dataclass(frozen=True, slots=True)
class GuardianSettings:
    """Everything under ``guardian:``; tier deadlines and breakers are flattened for the router."""

    anomaly: AnomalySettings = AnomalySettings()
    spot: SpotSettings = SpotSettings()
    deep: DeepSettings = DeepSettings()
    spot_timeout: float = 0.5
    deep_timeout: float = 15.0
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Constraint:
    """The rules one ``tools.<key>.constraints`` entry puts on one top-level argument.

    Every rule given must hold; all but ``required`` apply only when the argument is present.
    """

    argument: str
    regex: re.Pattern[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    glob: str | None = None
    required: bool = False


_MISSING: Final = object()


def _split_keys(pairs: Iterable[tuple[str, _T]]) -> tuple[dict[str, _T], tuple[tuple[re.Pattern[str], _T], ...]]:
    """Exact tool keys (first entry wins) and compiled glob keys (in order) of a precedence list."""
    exact: dict[str, _T] = {}
    globs: list[tuple[re.Pattern[str], _T]] = []
    for key, value in pairs:
        if _GLOB_CHARS.isdisjoint(key):
            exact.setdefault(key, value)
        else:
            globs.append((re.compile(fnmatch.translate(key)), value))
    return exact, tuple(globs)


def _remember(memo: dict[str, Any], key: str, value: Any) -> None:
    """Insert into a bounded memo, evicting the oldest entry (FIFO) when full."""
    if len(memo) >= _MEMO_LIMIT:
        try:
            del memo[next(iter(memo))]
        except (KeyError, StopIteration, RuntimeError):
            memo.clear()
    memo[key] = value


@dataclass(frozen=True)
class Policy:
    """The effective policy after all files are merged. Immutable; answers are memoised per
    instance because the guardian asks the same questions on every tool call."""

    anonymous_enabled: bool = False
    anonymous_scope: GlobSet = _EVERYTHING
    session_ttl_seconds: int = 3600
    session_max_ttl_seconds: int = 86400
    default_scope: GlobSet = _EVERYTHING
    default_capabilities: GlobSet = _EVERYTHING
    agents: tuple[AgentRule, ...] = ()
    blocklist: GlobSet = _NOTHING
    resource_allow: GlobSet = _EVERYTHING
    """Resource URIs that may be read (``resources.allow``); every URI by default."""
    resource_deny: GlobSet = _NOTHING
    """Resource URIs that may never be read (``resources.deny``, from every file)."""
    effect_overrides: tuple[tuple[str, Effect], ...] = ()
    """Precedence order: exact names always win; globs are tried in this order."""
    upstreams: tuple[UpstreamRule, ...] = ()
    """Later entries for the same (normalised) URL win."""
    guardian: GuardianSettings = GuardianSettings()
    path_roots: tuple[str, ...] = ()
    """Normalised absolute directories that path-like arguments must stay inside; empty = no check."""
    tool_constraints: tuple[tuple[str, tuple[Constraint, ...]], ...] = ()
    """Same precedence as ``effect_overrides``: exact keys win, then globs in this order."""
    upstream_credentials: tuple[tuple[str, CredentialBlock], ...] = ()
    """Normalised upstream URL -> its ``credentials`` (the last entry that gives them wins)."""
    tool_credentials: tuple[tuple[str, CredentialBlock], ...] = ()
    """Same precedence as ``effect_overrides``: exact keys win, then globs in this order."""
    credentials_default_used: bool = True
    sampling_enabled: bool = True
    sampling_max_requests: int = 10
    sampling_window_seconds: int = 300
    sampling_scan_prompts: bool = True
    elicitation_enabled: bool = True
    max_requests_per_agent: int = 32
    """Upstream requests one agent may have in flight on this replica (fair sharing of the sidecar)."""
    max_sessions_per_agent: int = 32
    """MCP sessions one agent may hold open on this replica."""
    max_streams_per_agent: int = 8
    """Long-lived streams (GET, subscriptions/listen) one agent may hold open on this replica."""
    a2a_skill_key: str = "wicket/skill"
    """The ``message.metadata`` key an A2A caller names the skill it wants under."""
    a2a_require_skill: bool = False
    a2a_scan_messages: bool = True
    """Scan the text parts of every A2A message for prompt injection; a finding refuses the message."""
    a2a_push_allowed_hosts: GlobSet = _NOTHING
    """Push-notification hosts allowed although they are not public https receivers."""
    tool_on_change: str = "block"
    """``block`` | ``warn``: a tool whose definition differs from its pin."""
    tool_on_poisoning: str = "block"
    """``block`` | ``warn`` | ``off``: a tool whose description carries hidden instructions."""
    """Whether an upstream without ``credentials`` may be proxied (listed without them, or none listed)."""
    sources: tuple[str, ...] = ()
    approvals: ApprovalSettings = ApprovalSettings()
    mode: str = "enforce"
    """``enforce`` | ``shadow``: in shadow, policy refusals are recorded as would-be refusals and forwarded."""
    protection: protection.DataProtection = field(default_factory=protection.DataProtection)
    """``data_protection:``: secrets and personal data in arguments and results."""
    limits: tuple[limit_rules.Limit, ...] = ()
    """``limits:``: rate limits and quotas, every matching entry applies."""
    labelling: flow_rules.Labelling = field(default_factory=flow_rules.Labelling)
    """``labels:`` and ``flows:``: toxic-flow control."""
    delegation_max_hops: int = 5
    delegation_rules: tuple[DelegationRule, ...] = ()
    trust: tuple[TrustEntry, ...] = ()
    introspection_clients: tuple[tuple[str, str], ...] = ()
    """(client id, environment variable with its secret) allowed to call POST /v1/introspect."""

    _exact_effects: dict[str, Effect] = field(init=False, repr=False, compare=False)
    _glob_effects: tuple[tuple[re.Pattern[str], Effect], ...] = field(init=False, repr=False, compare=False)
    _trusted: dict[str, bool] = field(init=False, repr=False, compare=False)
    _shadow: dict[str, bool] = field(init=False, repr=False, compare=False)
    _caps_memo: dict[str, GlobSet] = field(init=False, repr=False, compare=False)
    _block_memo: dict[str, GlobSet] = field(init=False, repr=False, compare=False)
    _effect_memo: dict[str, Effect | None] = field(init=False, repr=False, compare=False)
    _exact_constraints: dict[str, tuple[Constraint, ...]] = field(init=False, repr=False, compare=False)
    _glob_constraints: tuple[tuple[re.Pattern[str], tuple[Constraint, ...]], ...] = field(
        init=False, repr=False, compare=False
    )
    _constraints_memo: dict[str, tuple[Constraint, ...]] = field(init=False, repr=False, compare=False)
    _upstream_creds: dict[str, CredentialBlock] = field(init=False, repr=False, compare=False)
    _exact_creds: dict[str, CredentialBlock] = field(init=False, repr=False, compare=False)
    _glob_creds: tuple[tuple[re.Pattern[str], CredentialBlock], ...] = field(init=False, repr=False, compare=False)
    _creds_memo: dict[str, CredentialSettings] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact_effects, glob_effects = _split_keys(self.effect_overrides)
        exact_constraints, glob_constraints = _split_keys(self.tool_constraints)
        exact_creds, glob_creds = _split_keys(self.tool_credentials)
        trusted = {normalise_url(u.url): u.trusted for u in self.upstreams}
        shadow = {normalise_url(u.url): u.mode == "shadow" for u in self.upstreams if u.mode is not None}
        for name, value in (
            ("_exact_effects", exact_effects),
            ("_glob_effects", glob_effects),
            ("_exact_constraints", exact_constraints),
            ("_glob_constraints", glob_constraints),
            ("_trusted", trusted),
            ("_shadow", shadow),
            ("_upstream_creds", {normalise_url(url): block for url, block in self.upstream_credentials}),
            ("_exact_creds", exact_creds),
            ("_glob_creds", glob_creds),
            ("_creds_memo", {}),
            ("_caps_memo", {}),
            ("_block_memo", {}),
            ("_effect_memo", {}),
            ("_constraints_memo", {}),
        ):
            object.__setattr__(self, name, value)

    def capabilities_for(self, agent_id: str) -> GlobSet:
        """Union of the capabilities of every matching ``agents`` entry that declares some,
        else ``default_capabilities``."""
        cached = self._caps_memo.get(agent_id)
        if cached is not None:
            return cached
        granted = [r.capabilities for r in self.agents if r.declares_capabilities and r.match.matches(agent_id)]
        if not granted:
            result = self.default_capabilities
        elif len(granted) == 1:
            result = granted[0]
        else:
            result = GlobSet(p for g in granted for p in g.patterns)
        _remember(self._caps_memo, agent_id, result)
        return result

    def blocklist_for(self, agent_id: str) -> GlobSet:
        """The global blocklist plus the blocklists of every matching ``agents`` entry."""
        cached = self._block_memo.get(agent_id)
        if cached is not None:
            return cached
        extra = [p for r in self.agents if r.blocklist and r.match.matches(agent_id) for p in r.blocklist.patterns]
        result = self.blocklist | GlobSet(extra) if extra else self.blocklist
        _remember(self._block_memo, agent_id, result)
        return result

    def effect_override(self, tool_name: str) -> Effect | None:
        """The policy's final word on a tool's effect, or None to classify by name/annotations."""
        cached = self._effect_memo.get(tool_name, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        result = self._exact_effects.get(tool_name)
        if result is None:
            result = next((effect for regex, effect in self._glob_effects if regex.match(tool_name)), None)
        _remember(self._effect_memo, tool_name, result)
        return result

    def constraints_for(self, tool_name: str) -> tuple[Constraint, ...]:
        """The argument constraints of the exact key, else of the first matching glob key; () if none."""
        cached = self._constraints_memo.get(tool_name)
        if cached is not None:
            return cached
        result = self._exact_constraints.get(tool_name)
        if result is None:
            result = next((rules for regex, rules in self._glob_constraints if regex.match(tool_name)), ())
        _remember(self._constraints_memo, tool_name, result)
        return result

    def shadow_for(self, upstream: str) -> bool:
        """Whether calls to ``upstream`` run in shadow mode (its ``upstreams`` entry, else ``mode``)."""
        if self._shadow:
            found = self._shadow.get(normalise_url(upstream))
            if found is not None:
                return found
        return self.mode == "shadow"

    def is_trusted_upstream(self, url: str) -> bool:
        """Whether annotations from this upstream may lower an effect (SPEC §6)."""
        return self._trusted.get(normalise_url(url), False)

    def upstream_env(self, url: str) -> tuple[str, ...]:
        """The environment variables the ``upstreams`` entries for ``url`` pass to a stdio server."""
        wanted = normalise_url(url)
        return tuple(name for rule in self.upstreams if normalise_url(rule.url) == wanted for name in rule.env)

    def credentials_for(self, upstream_url: str, tool_name: str | None) -> CredentialSettings:
        """How to derive the credential for a call to ``tool_name`` (``None``: protocol housekeeping)
        at ``upstream_url``: the upstream's ``credentials``, then the tool's (exact key, else the
        first matching glob) on top; ``mode: minted`` with its defaults when neither says anything."""
        memo_key = f"{upstream_url}\x00{tool_name}" if tool_name is not None else f"{upstream_url}\x01"
        cached = self._creds_memo.get(memo_key)
        if cached is not None:
            return cached
        upstream = self._upstream_creds.get(normalise_url(upstream_url), ())
        tool: CredentialBlock = ()
        if tool_name is not None:
            found = self._exact_creds.get(tool_name)
            if found is None:
                found = next((block for regex, block in self._glob_creds if regex.match(tool_name)), ())
            tool = found
        result = _credential_settings(_effective_credentials(upstream, tool))
        _remember(self._creds_memo, memo_key, result)
        return result

    def credential_variants(self) -> tuple[tuple[str | None, str | None, CredentialSettings], ...]:
        """Every effective credentials setting a call can get, as (upstream URL or ``None`` for one
        without ``credentials``, tool key or ``None``, settings): what the broker prepares at start-up
        (static secrets, exchange clients) and what start-up warnings are about."""
        uppers: list[tuple[str | None, CredentialBlock]] = list(self.upstream_credentials)
        if self.credentials_default_used or not uppers:
            uppers.insert(0, (None, ()))
        return tuple(
            (url, key, _credential_settings(_effective_credentials(block, tool_block)))
            for url, block in uppers
            for key, tool_block in ((None, ()), *self.tool_credentials)
        )


def _credential_settings(merged: Mapping[str, Any]) -> CredentialSettings:
    if not merged:
        return _DEFAULT_CREDENTIALS
    return CredentialSettings(**{k: tuple(v) if k == "scope" else v for k, v in merged.items()})


# --------------------------------------------------------------------------- schema interpreter

_SUPPORTED_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "additionalProperties",
        "required",
        "items",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "minItems",
        "minProperties",
        "pattern",
        "const",
        "propertyNames",
    }
)
_ANNOTATION_KEYWORDS: Final = frozenset({"$schema", "$id", "title", "description", "default", "examples", "$comment"})

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _MERGE = _TAG + "map", _TAG + "seq", _TAG + "merge"

_EXPECTED: Final = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "null": "an empty value",
}
_SCALAR_TAG_NAMES: Final = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean",
    _NULL: "an empty value (null)",
    _TAG + "timestamp": "a date/time",
    _TAG + "binary": "binary data",
}

_SCALAR_TAGS: Final = {
    "string": (_STR,),
    "integer": (_INT,),
    "number": (_INT, _FLOAT),
    "boolean": (_BOOL,),
    "null": (_NULL,),
}

_CONSTRUCTOR: Final = SafeConstructor()
"""Only its pure scalar converters are used during validation (YAML int/bool spellings)."""


def _check_schema_keywords(schema: Any, where: str = "#") -> None:
    """Refuse a schema that uses keywords this interpreter would silently ignore."""
    if not isinstance(schema, dict):
        if isinstance(schema, bool):
            return
        raise RuntimeError(f"policy schema: {where} is not a schema object")
    unknown = set(schema) - _SUPPORTED_KEYWORDS - _ANNOTATION_KEYWORDS
    if unknown:
        raise RuntimeError(f"policy schema: {where} uses unsupported keyword(s) {sorted(unknown)}")
    kinds = schema.get("type", "object")
    if not all(isinstance(k, str) and k in _EXPECTED for k in (kinds if isinstance(kinds, list) else [kinds])):
        raise RuntimeError(f"policy schema: {where} has an unsupported type {kinds!r}")
    for name, sub in schema.get("properties", {}).items():
        _check_schema_keywords(sub, f"{where}/properties/{name}")
    for key in ("additionalProperties", "items", "propertyNames"):
        if key in schema:
            _check_schema_keywords(schema[key], f"{where}/{key}")


@functools.cache
def policy_schema() -> dict[str, Any]:
    """The JSON Schema shipped as package data (also published as ``policies/schema.json``)."""
    text = importlib.resources.files("proxy.core").joinpath("policy_schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    _check_schema_keywords(schema)
    return schema


@functools.cache
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _join(path: str, key: str | int) -> str:
    """Human path: ``agents[0].capabilities[2]``, ``tools["billing-*"].effect``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = _SCALAR_TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")
    if node.tag == _NULL:
        return kind
    return f"{kind} ({_short(str(node.value))!r})"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Validator:
    """Walks one composed YAML document against the schema, collecting every issue."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[PolicyIssue] = []
        # (node, schema) pairs already checked: aliases share nodes, and re-walking them would
        # repeat errors and let a "billion laughs" document cost exponential time.
        self._done: set[tuple[int, int]] = set()

    def error(self, node: Node, message: str) -> None:
        self.issues.append(PolicyIssue(self.source, _line(node), message))

    def validate(self, node: Node, schema: dict[str, Any] | bool, path: str) -> None:
        if schema is True:
            return
        if schema is False:
            self.error(node, f"{path}: no value is allowed here")
            return
        key = (id(node), id(schema))
        if key in self._done:
            return
        self._done.add(key)
        where = f"{path}: " if path else ""
        kind = schema.get("type")
        kinds: list[str] = [] if kind is None else kind if isinstance(kind, list) else [kind]
        if kinds and not any(self._is_type(node, k) for k in kinds):
            expected = [_EXPECTED[k] for k in kinds]
            wanted = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " or " + expected[-1]
            self.error(node, f"{where}expected {wanted}, got {_describe(node)}")
            return
        if isinstance(node, MappingNode):
            self._mapping(node, schema, path)
        elif isinstance(node, SequenceNode):
            if len(node.value) < schema.get("minItems", 0):
                self.error(node, f"{where}must not be empty" if schema["minItems"] == 1 else f"{where}is too short")
            if "items" in schema:
                for index, item in enumerate(node.value):
                    self.validate(item, schema["items"], _join(path, index))
        else:
            self._scalar(node, schema, path)

    @staticmethod
    def _is_type(node: Node, kind: str) -> bool:
        if kind == "object":
            return isinstance(node, MappingNode) and node.tag == _MAP
        if kind == "array":
            return isinstance(node, SequenceNode) and node.tag == _SEQ
        if not isinstance(node, ScalarNode):
            return False
        return node.tag in _SCALAR_TAGS[kind]

    def _mapping(self, node: MappingNode, schema: dict[str, Any], path: str) -> None:
        where = f"{path}: " if path else ""
        properties: dict[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self.error(key_node, f"{where}YAML merge keys ('<<') are not supported in policy files")
                continue
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                if isinstance(key_node, ScalarNode):
                    kind = _SCALAR_TAG_NAMES.get(key_node.tag, f"a value tagged {key_node.tag}")
                    message = f"{where}key {key_node.value!r} is read by YAML as {kind}, not a string; quote it"
                else:
                    message = f"{where}keys must be plain strings, not {_describe(key_node)}"
                self.error(key_node, message)
                continue
            name: str = key_node.value
            child = _join(path, name)
            if name in seen:
                self.error(key_node, f"duplicate key {child!r} (first given on line {seen[name]})")
            else:
                seen[name] = _line(key_node)
            if "propertyNames" in schema:
                self._scalar(key_node, schema["propertyNames"], f"{path} key {json.dumps(name)}".lstrip())
            if name in properties:
                self.validate(value_node, properties[name], child)
            elif additional is False:
                allowed = sorted(properties)
                hint = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                message = f"unknown key {child!r}"
                if hint:
                    message += f"; did you mean {hint[0]!r}?"
                message += f" (allowed here: {', '.join(allowed)})" if allowed else " (no keys are allowed here)"
                self.error(key_node, message)
            else:
                self.validate(value_node, additional, child)
        for required in schema.get("required", ()):
            if required not in seen:
                self.error(node, f"{where}missing required key {required!r}")
        if len(seen) < schema.get("minProperties", 0):
            if schema["minProperties"] == 1 and properties:
                names = [repr(p) for p in properties]
                either = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
                self.error(node, f"{where}missing required key {either}")
            else:
                self.error(node, f"{where}needs at least {schema['minProperties']} keys")

    def _scalar(self, node: ScalarNode, schema: dict[str, Any], path: str) -> None:
        where = f"{path}: " if path else ""
        value: Any
        if node.tag == _INT:
            value = _CONSTRUCTOR.construct_yaml_int(node)
        elif node.tag == _FLOAT:
            value = _CONSTRUCTOR.construct_yaml_float(node)
        elif node.tag == _BOOL:
            value = _CONSTRUCTOR.construct_yaml_bool(node)
        elif node.tag == _NULL:
            value = None
        else:
            value = node.value
        if "const" in schema and not _same(value, schema["const"]):
            self.error(node, f"{where}must be {json.dumps(schema['const'])}, got {_describe(node)}")
        if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
            options = ", ".join(str(o) for o in schema["enum"])
            self.error(node, f"{where}{_short(str(value))!r} is not one of: {options}")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(value, float) and not math.isfinite(value):
            self.error(node, f"{where}must be a finite number, got {_describe(node)}")
            return
        if numeric and "minimum" in schema and value < schema["minimum"]:
            self.error(node, f"{where}{value} is below the minimum of {schema['minimum']}")
        if numeric and "maximum" in schema and value > schema["maximum"]:
            self.error(node, f"{where}{value} is above the maximum of {schema['maximum']}")
        if isinstance(value, str):
            if "minLength" in schema and len(value) < schema["minLength"]:
                limit = schema["minLength"]
                self.error(node, f"{where}must not be empty" if limit == 1 else f"{where}needs {limit}+ characters")
            elif "pattern" in schema and not _pattern(schema["pattern"]).search(value):
                # JSON Schema has no error messages; the description's first sentence says what is expected.
                expected = schema.get("description", "wrong format").split(". ")[0].rstrip(".")
                self.error(node, f"{where}invalid value {_short(value)!r}: {expected}")


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: ``True`` is not ``1``."""
    return type(value) is type(expected) and value == expected


# --------------------------------------------------------------------------- loading and merging


@dataclass(slots=True)
class _Layer:
    """One validated file: its plain data plus its node tree, kept for line numbers."""

    source: str
    data: dict[str, Any]
    root: MappingNode


def _value_node(root: MappingNode, *keys: str | int) -> Node:
    """The node at a path known to exist (the document is already validated)."""
    node: Node = root
    for key in keys:
        if isinstance(key, int):
            node = node.value[key]
        else:
            node = next(v for k, v in reversed(node.value) if k.value == key)
    return node


def _read(path: str | Path) -> tuple[str | None, list[PolicyIssue]]:
    """Read a file as UTF-8 (a BOM is tolerated); failures are issues, not exceptions."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return None, [PolicyIssue(source, 1, f"cannot read policy file: {exc.strerror or exc}")]
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return None, [PolicyIssue(source, line, "policy file is not valid UTF-8")]


def _parse(text: str, source: str) -> tuple[_Layer | None, list[PolicyIssue]]:
    """Compose, validate, check per-file semantics and construct one file."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = str(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem:
            where = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            message += f" ({exc.context}{where})"
        return None, [PolicyIssue(source, line, f"YAML syntax error: {message}")]
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        return None, [PolicyIssue(source, line, f"YAML syntax error: {exc.reason}")]
    except RecursionError:
        return None, [PolicyIssue(source, 1, "YAML syntax error: nesting is too deep")]
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above carries a position
        return None, [PolicyIssue(source, 1, f"YAML error: {exc}")]
    if root is None:
        return None, [PolicyIssue(source, 1, "policy file is empty; it needs at least 'version: 1'")]
    if not (isinstance(root, MappingNode) and root.tag == _MAP):
        message = f"a policy file must be a mapping of keys, got {_describe(root)}"
        return None, [PolicyIssue(source, _line(root), message)]
    validator = _Validator(source)
    validator.validate(root, policy_schema(), "")
    if validator.issues:
        return None, validator.issues
    data: dict[str, Any] = SafeConstructor().construct_document(root)
    issues: list[PolicyIssue] = []
    first_seen: dict[str, int] = {}
    for index, upstream in enumerate(data.get("upstreams", ())):
        url = normalise_url(upstream["url"])
        node = _value_node(root, "upstreams", index, "url")
        if url in first_seen:
            issues.append(
                PolicyIssue(source, _line(node), f"upstreams[{index}].url: duplicate of upstreams[{first_seen[url]}]")
            )
        else:
            first_seen[url] = index
    issues.extend(_check_constraints(data, root, source))
    return (None if issues else _Layer(source, data, root)), issues


def _check_constraints(data: dict[str, Any], root: MappingNode, source: str) -> list[PolicyIssue]:
    """What the schema cannot say about constraints: regexes compile, and min is not above max."""
    issues: list[PolicyIssue] = []
    for key, entry in (data.get("tools") or {}).items():
        for argument, rules in (entry.get("constraints") or {}).items():
            where = _join(_join(_join("tools", key), "constraints"), argument)
            keys = ("tools", key, "constraints", argument)
            if "regex" in rules:
                try:
                    re.compile(rules["regex"])
                except (re.error, OverflowError, RecursionError, ValueError) as exc:
                    detail = getattr(exc, "msg", None) or str(exc)
                    position = getattr(exc, "pos", None)
                    at = f" at position {position}" if position is not None else ""
                    line = _line(_value_node(root, *keys, "regex"))
                    message = f"{where}.regex: invalid regular expression: {detail}{at}"
                    issues.append(PolicyIssue(source, line, message))
            if "min" in rules and "max" in rules and rules["min"] > rules["max"]:
                line = _line(_value_node(root, *keys, "max"))
                issues.append(PolicyIssue(source, line, f"{where}.max ({rules['max']}) is below min ({rules['min']})"))
    return issues


def _constraint(argument: str, rules: dict[str, Any]) -> Constraint:
    """One validated constraints entry as the analyser uses it (regex compiled once, here)."""
    return Constraint(
        argument=argument,
        regex=re.compile(rules["regex"]) if "regex" in rules else None,
        minimum=rules.get("min"),
        maximum=rules.get("max"),
        enum=tuple(rules["enum"]) if "enum" in rules else None,
        glob=rules.get("glob"),
        required=bool(rules.get("required", False)),
    )


def _normalise_root(root: str) -> str:
    """``/srv//data/./`` -> ``/srv/data``; POSIX keeps a leading ``//``, which no root needs."""
    path = posixpath.normpath(root)
    return "/" + path.lstrip("/")


# (section, key) -> Policy field, for the sections where a later file's explicitly given keys win.
_SCALARS: Final[dict[tuple[str, str], str]] = {
    ("anonymous", "enabled"): "anonymous_enabled",
    ("anonymous", "scope"): "anonymous_scope",
    ("sessions", "ttl_seconds"): "session_ttl_seconds",
    ("sessions", "max_ttl_seconds"): "session_max_ttl_seconds",
    ("sessions", "default_scope"): "default_scope",
    ("defaults", "capabilities"): "default_capabilities",
    ("sampling", "enabled"): "sampling_enabled",
    ("sampling", "max_requests"): "sampling_max_requests",
    ("sampling", "window_seconds"): "sampling_window_seconds",
    ("sampling", "scan_prompts"): "sampling_scan_prompts",
    ("elicitation", "enabled"): "elicitation_enabled",
    ("limits", "max_requests_per_agent"): "max_requests_per_agent",
    ("limits", "max_sessions_per_agent"): "max_sessions_per_agent",
    ("limits", "max_streams_per_agent"): "max_streams_per_agent",
    ("a2a", "skill_key"): "a2a_skill_key",
    ("a2a", "require_skill"): "a2a_require_skill",
    ("a2a", "scan_messages"): "a2a_scan_messages",
    ("a2a", "push_allowed_hosts"): "a2a_push_allowed_hosts",
    ("delegation", "max_hops"): "delegation_max_hops",
    ("tool_definitions", "on_change"): "tool_on_change",
    ("tool_definitions", "on_poisoning"): "tool_on_poisoning",
}

# guardian.<section>.<key> -> (settings group, field, type), where a later file's given keys win.
# Group None is GuardianSettings itself. Types make ``10`` and ``10.0`` the same policy.
_GUARDIAN: Final[dict[tuple[str, str], tuple[str | None, str, type]]] = {
    ("anomaly", "min_calls"): ("anomaly", "min_calls", int),
    ("anomaly", "denial_rate"): ("anomaly", "denial_rate", float),
    ("anomaly", "write_ratio"): ("anomaly", "write_ratio", float),
    ("spot", "window_seconds"): ("spot", "window_seconds", int),
    ("spot", "approval_at"): ("spot", "approval_at", float),
    ("spot", "deny_at"): ("spot", "deny_at", float),
    ("spot", "max_session_age_seconds"): ("spot", "max_session_age_seconds", int),
    ("spot", "max_calls_per_minute"): ("spot", "max_calls_per_minute", int),
    ("deep", "min_confidence"): ("deep", "min_confidence", float),
    ("deep", "low_confidence"): ("deep", "low_confidence", str),
    ("deep", "timeout_seconds"): ("deep", "timeout_seconds", float),
    ("deep", "cache_ttl_seconds"): ("deep", "cache_ttl_seconds", int),
    ("timeouts", "spot"): (None, "spot_timeout", float),
    ("timeouts", "deep"): (None, "deep_timeout", float),
    ("circuit_breaker", "failures"): (None, "breaker_failures", int),
    ("circuit_breaker", "cooldown_seconds"): (None, "breaker_cooldown_seconds", float),
}


def _merge(layers: Sequence[_Layer]) -> tuple[Policy | None, list[PolicyIssue]]:
    """Apply layers in order (later on top) and check what only the merged result can show."""
    settings: dict[str, Any] = {}
    origin: dict[str, tuple[int, str, int]] = {}  # field -> (layer index, file, line) where last set
    agents: list[AgentRule] = []
    blocklist: list[str] = []
    resource_deny: list[str] = []
    upstreams: list[UpstreamRule] = []
    guardian: dict[str | None, dict[str, Any]] = {"anomaly": {}, "spot": {}, "deep": {}, None: {}}
    approvals: dict[str, Any] = {}  # approvals.<key> as given; a later file's keys (and whole webhook) win
    # Where each credentials block was given, for line numbers: key -> (block, file, line, label).
    upstream_creds: dict[str, tuple[CredentialBlock, str, int, str]] = {}
    tool_creds: dict[str, tuple[CredentialBlock, str, int, str]] = {}
    listed: set[str] = set()
    delegation_rules: list[DelegationRule] = []
    trust: list[TrustEntry] = []
    introspection_clients: list[tuple[str, str]] = []
    for index, layer in enumerate(layers):
        for (section, key), name in _SCALARS.items():
            block = layer.data.get(section) or {}
            if key in block:
                value = block[key]
                if value is False and name == "tool_on_poisoning":
                    value = "off"  # YAML 1.1 reads a bare `off` as false
                settings[name] = GlobSet(value) if isinstance(value, list) else value
                origin[name] = (index, layer.source, _line(_value_node(layer.root, section, key)))
        for (section, key), (group, name, kind) in _GUARDIAN.items():
            block = (layer.data.get("guardian") or {}).get(section) or {}
            if key in block:
                guardian[group][name] = kind(block[key])
                line = _line(_value_node(layer.root, "guardian", section, key))
                origin[f"{section}.{name}"] = (index, layer.source, line)
        for key, value in (layer.data.get("approvals") or {}).items():
            if key == "webhook":
                value = WebhookSettings(**{**value, "timeout_seconds": float(value.get("timeout_seconds", 5.0))})
            if key == "bind":
                approvals.update({f"bind_{effect}": how for effect, how in value.items()})
                continue
            approvals[key] = value
        if "roots" in (layer.data.get("arguments") or {}):
            settings["path_roots"] = tuple(dict.fromkeys(_normalise_root(r) for r in layer.data["arguments"]["roots"]))
        for entry in layer.data.get("agents", ()):
            agents.append(
                AgentRule(
                    match=GlobSet([entry["match"]]),
                    capabilities=GlobSet(entry.get("capabilities", ())),
                    blocklist=GlobSet(entry.get("blocklist", ())),
                    declares_capabilities="capabilities" in entry,
                )
            )
        blocklist.extend(layer.data.get("blocklist", ()))
        resources = layer.data.get("resources") or {}
        if "allow" in resources:
            settings["resource_allow"] = GlobSet(resources["allow"])
        resource_deny.extend(resources.get("deny", ()))
        upstreams.extend(
            UpstreamRule(u["url"], bool(u.get("trusted", False)), u.get("mode"), tuple(u.get("env", ())))
            for u in layer.data.get("upstreams", ())
        )
        if "mode" in layer.data:
            settings["mode"] = layer.data["mode"]
        delegation_rules.extend(
            DelegationRule(GlobSet(r["tools"]), GlobSet(r["origins"]) if "origins" in r else None, r.get("max_depth"))
            for r in (layer.data.get("delegation") or {}).get("rules", ())
        )
        for position, entry in enumerate(layer.data.get("trust", ())):
            if ("jwks_url" in entry) == ("jwks_file" in entry):
                line = _line(_value_node(layer.root, "trust", position))
                return None, [
                    PolicyIssue(layer.source, line, f"trust[{position}]: give exactly one of jwks_url, jwks_file")
                ]
            trust.append(_trust_entry(entry))
        introspection_clients.extend(
            (c["id"], c["secret_env"]) for c in (layer.data.get("introspection") or {}).get("clients", ())
        )
        for position, entry in enumerate(layer.data.get("upstreams", ())):
            url = normalise_url(entry["url"])
            listed.add(url)
            if "credentials" in entry:
                line = _line(_value_node(layer.root, "upstreams", position, "credentials"))
                label = f"upstreams[{position}].credentials"
                upstream_creds[url] = (_freeze_credentials(entry["credentials"]), layer.source, line, label)
    # Later files win per key (separately for effect and constraints), and their globs are
    # tried before earlier files' globs.
    overrides: dict[str, Effect] = {}
    constraints: dict[str, tuple[Constraint, ...]] = {}
    for layer in reversed(layers):
        for key, override in (layer.data.get("tools") or {}).items():
            if "effect" in override:
                overrides.setdefault(key, Effect.parse(override["effect"]))
            if "constraints" in override and key not in constraints:
                rules = override["constraints"] or {}
                constraints[key] = tuple(_constraint(argument, r) for argument, r in rules.items())
            if "credentials" in override and key not in tool_creds:
                line = _line(_value_node(layer.root, "tools", key, "credentials"))
                label = _join(_join("tools", key), "credentials")
                tool_creds[key] = (_freeze_credentials(override["credentials"]), layer.source, line, label)
    # Data protection: per category, a later file's keys win; limits add up; labels unite; the
    # last file that gives ``flows`` replaces the list (``flows: []`` turns the default rule off).
    protection_blocks = [layer.data["data_protection"] for layer in layers if layer.data.get("data_protection")]
    label_globs: dict[str, list[str]] = {}
    flow_entries: list[dict[str, Any]] | None = None
    for layer in layers:
        for label, patterns in (layer.data.get("labels") or {}).items():
            label_globs.setdefault(label, []).extend(patterns or ())
        if "flows" in layer.data:
            flow_entries = list(layer.data["flows"] or ())
    settings["protection"] = protection.parse(protection.merge_blocks(protection_blocks))
    settings["limits"] = limit_rules.parse(
        entry for layer in layers for entry in limit_rules.entries(layer.data.get("limits"))
    )
    settings["labelling"] = flow_rules.parse(label_globs, flow_entries)
    default_used = not upstream_creds or bool(listed - upstream_creds.keys())
    credential_issues = _check_credentials(upstream_creds, tool_creds, default_used)
    if credential_issues:
        return None, credential_issues
    policy = Policy(
        **settings,
        agents=tuple(agents),
        blocklist=GlobSet(blocklist),
        resource_deny=GlobSet(resource_deny),
        delegation_rules=tuple(delegation_rules),
        trust=tuple(trust),
        introspection_clients=tuple(introspection_clients),
        effect_overrides=tuple(overrides.items()),
        upstreams=tuple(upstreams),
        guardian=GuardianSettings(
            anomaly=AnomalySettings(**guardian["anomaly"]),
            spot=SpotSettings(**guardian["spot"]),
            deep=DeepSettings(**guardian["deep"]),
            **guardian[None],
        ),
        tool_constraints=tuple(constraints.items()),
        upstream_credentials=tuple((url, entry[0]) for url, entry in upstream_creds.items()),
        tool_credentials=tuple((key, entry[0]) for key, entry in tool_creds.items()),
        credentials_default_used=default_used,
        sources=tuple(layer.source for layer in layers),
        approvals=ApprovalSettings(**approvals),
    )
    if policy.session_ttl_seconds > policy.session_max_ttl_seconds:
        # Blame whichever of the two was set last; within one file, ttl_seconds.
        ttl, cap = origin.get("session_ttl_seconds"), origin.get("session_max_ttl_seconds")
        at = cap if ttl is None or (cap is not None and cap[0] > ttl[0]) else ttl
        assert at is not None  # the defaults are consistent, so a file set one of them
        message = (
            f"sessions.ttl_seconds ({policy.session_ttl_seconds}) exceeds sessions.max_ttl_seconds "
            f"({policy.session_max_ttl_seconds}{'' if cap else ', the default'})"
        )
        return None, [PolicyIssue(at[1], at[2], message)]
    spot = policy.guardian.spot
    if spot.deny_at < spot.approval_at:
        deny, approval = origin.get("spot.deny_at"), origin.get("spot.approval_at")
        at = deny if approval is None or (deny is not None and deny[0] > approval[0]) else approval
        assert at is not None  # the defaults are consistent, so a file set one of them
        message = (
            f"guardian.spot.deny_at ({spot.deny_at:g}{'' if deny else ', the default'}) is below "
            f"guardian.spot.approval_at ({spot.approval_at:g}{'' if approval else ', the default'})"
        )
        return None, [PolicyIssue(at[1], at[2], message)]
    return policy, []


def _check_credentials(
    upstreams: Mapping[str, tuple[CredentialBlock, str, int, str]],
    tools: Mapping[str, tuple[CredentialBlock, str, int, str]],
    default_used: bool,
) -> list[PolicyIssue]:
    """Check every effective credentials setting a call can get (each upstream's, alone and under
    each tool's), blaming the block that makes it wrong: a tool block inherits upstream keys, so a
    missing ``value_env`` may only show once the two are combined.

    ``tools`` keys apply to every upstream, so a tool block without ``mode`` is only blamed for a
    key that applies under none of the upstreams it can combine with."""
    issues: dict[PolicyIssue, None] = {}
    uppers: list[tuple[str | None, tuple[CredentialBlock, str, int, str] | None]] = list(upstreams.items())
    if default_used:
        uppers.insert(0, (None, None))
    for _, upper in uppers:
        if upper is not None:
            given = dict(upper[0])
            for problem in _credential_problems(_effective_credentials(upper[0], ()), given, given):
                issues[PolicyIssue(upper[1], upper[2], f"{upper[3]}: {problem}")] = None
    for tool_block, source, line, label in tools.values():
        given = dict(tool_block)
        modes: dict[str, None] = {}
        for url, upper in uppers:
            merged = _effective_credentials(upper[0] if upper else (), tool_block)
            modes[merged.get("mode", "minted")] = None
            for problem in _credential_problems(merged, given if "mode" in given else (), given):
                context = f" (under the credentials of upstream {url})" if url and "mode" not in given else ""
                issues[PolicyIssue(source, line, f"{label}: {problem}{context}")] = None
        if "mode" not in given:
            stray = sorted(k for k in given if all(k not in _CREDENTIAL_KEYS[m] for m in modes))
            if stray:
                names, verb = ", ".join(stray), "does" if len(stray) == 1 else "do"
                applies = " or ".join(repr(m) for m in modes)
                issues[PolicyIssue(source, line, f"{label}: {names} {verb} not apply to mode {applies}")] = None
    return list(issues)


def _load(sources: Iterable[tuple[str, str | None]], merge: bool = True) -> tuple[Policy | None, list[PolicyIssue]]:
    """Validate every readable file; merge only when all of them are valid (and all were read,
    since a merged-result check without a missing file would be guesswork)."""
    layers: list[_Layer] = []
    issues: list[PolicyIssue] = []
    for source, text in sources:
        if text is None:
            continue
        layer, found = _parse(text, source)
        issues.extend(sorted(found, key=lambda i: i.line))
        if layer is not None:
            layers.append(layer)
    if issues or not merge:
        return None, issues
    return _merge(layers)


def _load_paths(paths: Sequence[str | Path]) -> tuple[Policy | None, list[PolicyIssue]]:
    read_issues: list[PolicyIssue] = []
    texts: list[tuple[str, str | None]] = []
    for path in paths:
        text, found = _read(path)
        read_issues.extend(found)
        texts.append((str(path), text))
    policy, issues = _load(texts, merge=not read_issues)
    if read_issues:
        order = {str(p): i for i, p in enumerate(paths)}
        return None, sorted(read_issues + issues, key=lambda i: (order.get(i.file, 0), i.line))
    return policy, issues


def load_policy(paths: Sequence[str | Path]) -> Policy:
    """Load and merge policy files in order (later on top). No files means the built-in
    defaults. Raises :class:`PolicyError` listing every issue of every file."""
    policy, issues = _load_paths(paths)
    if issues or policy is None:
        raise PolicyError(issues)
    return policy


def check_files(paths: Sequence[str | Path]) -> list[PolicyIssue]:
    """Every issue ``load_policy`` would raise for these files, for ``wicket policy check``."""
    return _load_paths(paths)[1]


def parse_policy_text(text: str, source: str = "<string>") -> Policy:
    """Load one policy from a string (tests, embedded defaults)."""
    policy, issues = _load([(source, text)])
    if issues or policy is None:
        raise PolicyError(issues)
    return policy
