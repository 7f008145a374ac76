"""Policy loading, validation (with line numbers), merging and the per-call queries.

A policy is the operator's only lever, so these tests pin that every mistake is reported
where it was made and that nothing silently weakens a policy.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from proxy.core.action import Effect
from proxy.core.patterns import GlobSet
from proxy.core.policy import (
    AgentRule,
    AnomalySettings,
    Constraint,
    DeepSettings,
    GuardianSettings,
    Policy,
    PolicyError,
    PolicyIssue,
    SpotSettings,
    UpstreamRule,
    check_files,
    load_policy,
    normalise_url,
    parse_policy_text,
    policy_schema,
)

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SHIPPED = [POLICIES / "default.yaml", POLICIES / "demo.yaml"]
SCHEMA_FILE = ROOT / "proxy" / "core" / "policy_schema.json"


def _text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def _issues(body: str, source: str = "p.yaml") -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(_text(body), source)
    return info.value.issues


def _one(body: str) -> PolicyIssue:
    issues = _issues(body)
    assert len(issues) == 1, issues
    return issues[0]


def _write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(_text(body), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_are_clean(path: Path) -> None:
    assert check_files([path]) == []
    policy = load_policy([path])
    assert policy.sources == (str(path),)


def test_default_policy_is_strict() -> None:
    policy = load_policy([POLICIES / "default.yaml"])
    assert policy.anonymous_enabled is False
    assert policy.session_ttl_seconds == 3600
    assert policy.default_scope == GlobSet(["*"])
    assert policy.capabilities_for("any-agent") == GlobSet(["*"])


def test_demo_policy_admits_anonymous() -> None:
    policy = load_policy([POLICIES / "demo.yaml"])
    assert policy.anonymous_enabled is True
    assert policy.anonymous_scope.matches("get_weather")
    assert policy.anonymous_scope.matches("create_note")


def test_schema_json_is_published_once() -> None:
    link = POLICIES / "schema.json"
    assert link.is_symlink()
    assert Path(link.readlink()) == Path("..") / "proxy" / "core" / "policy_schema.json"
    assert link.resolve() == SCHEMA_FILE.resolve()


def test_empty_paths_give_builtin_defaults() -> None:
    assert load_policy([]) == Policy()
    assert check_files([]) == []


# --------------------------------------------------------------------------- the schema


def test_schema_is_valid_json_with_metadata() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema == policy_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]


def _walk_schema(schema: dict[str, Any], where: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found = [(where, schema)]
    for name, sub in schema.get("properties", {}).items():
        found += _walk_schema(sub, f"{where}/properties/{name}")
    for key in ("items", "additionalProperties", "propertyNames"):
        if isinstance(schema.get(key), dict):
            found += _walk_schema(schema[key], f"{where}/{key}")
    return found


def test_schema_is_closed_and_described_everywhere() -> None:
    for where, sub in _walk_schema(policy_schema()):
        assert sub.get("description", "").strip(), f"{where} has no description"
        if sub.get("type") == "object" and "additionalProperties" not in sub:
            pytest.fail(f"{where} is an object without additionalProperties")
        if "properties" in sub:
            assert sub["additionalProperties"] is False, where


def test_schema_passes_the_reference_metaschema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_schema())


def assert_agrees_with_reference(body: str) -> None:
    """The small interpreter must accept exactly what a full JSON Schema validator accepts."""
    reference_ok = jsonschema.Draft202012Validator(policy_schema()).is_valid(yaml.safe_load(body))
    try:
        parse_policy_text(body)
        ours_ok = True
    except PolicyError:
        ours_ok = False
    assert ours_ok == reference_ok


def _described(data: Any, schema: dict[str, Any], where: str) -> None:
    """Every key in ``data`` must be described in ``schema``, recursively."""
    assert schema.get("description", "").strip(), f"{where} is not described"
    if isinstance(data, dict):
        for key, value in data.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            assert isinstance(sub, dict), f"{where}.{key} is not in the schema"
            _described(value, sub, f"{where}.{key}")
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _described(item, schema["items"], f"{where}[{index}]")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_key_of_shipped_policies_is_described(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    _described(data, policy_schema(), path.name)


@pytest.mark.parametrize(
    "body",
    [
        "version: 1\n",
        "version: 2\n",
        "version: '1'\n",
        "version: 1\nanonymous: {enabeld: true}\n",
        "version: 1\nsessions: {ttl_seconds: 59}\n",
        "version: 1\nsessions: {max_ttl_seconds: 2592001}\n",
        "version: 1\ntools: {x: {effect: mutate}}\n",
        "version: 1\ntools: {x: {}}\n",
        "version: 1\nagents: [{capabilities: [a]}]\n",
        "version: 1\nblocklist: ['']\n",
        "version: 1\nupstreams: [{url: 'ftp://x'}]\n",
        "version: 1\nupstreams: [{url: 'https://x/mcp', trusted: true}]\n",
        _text(
            """
            version: 1
            description: everything
            anonymous: {enabled: true, scope: [get_*]}
            sessions: {ttl_seconds: 60, max_ttl_seconds: 120, default_scope: ["*"]}
            defaults: {capabilities: [list_*]}
            agents: [{match: a-*, capabilities: [x], blocklist: [y]}]
            blocklist: [z]
            tools: {drop_cache: {effect: read}}
            upstreams: [{url: "http://h:1/mcp", trusted: false}]
            """
        ),
    ],
)
def test_interpreter_agrees_with_reference_validator(body: str) -> None:
    assert_agrees_with_reference(body)


# --------------------------------------------------------------------------- validation errors


def test_unknown_top_level_key_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.yaml", "version: 1\n\nblocklst: [x]\n")
    [issue] = check_files([path])
    assert issue.file == str(path)
    assert issue.line == 3
    assert "unknown key 'blocklst'" in issue.message
    assert "did you mean 'blocklist'" in issue.message
    assert str(issue) == f"{path}:3: {issue.message}"


def test_unknown_nested_key_is_reported_at_its_line() -> None:
    issue = _one(
        """
        version: 1
        anonymous:
          scope: ["*"]
          enabeld: true
        """
    )
    assert issue.line == 4
    assert "anonymous.enabeld" in issue.message and "did you mean 'enabled'" in issue.message


def test_unknown_key_in_flow_mapping() -> None:
    issue = _one("version: 1\n\nanonymous: {enabeld: true}\n")
    assert issue.line == 3
    assert "anonymous.enabeld" in issue.message


def test_unknown_key_deep_inside_lists() -> None:
    issue = _one(
        """
        version: 1
        agents:
          - match: a
          - match: b
            capabilites: [x]
        """
    )
    assert issue.line == 5
    assert "agents[1].capabilites" in issue.message


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("version: 1\nanonymous:\n  enabled: 'true'\n", 3, "anonymous.enabled: expected a boolean"),
        ("version: 1\nsessions:\n  ttl_seconds: '3600'\n", 3, "expected an integer, got a string"),
        ("version: 1\nsessions:\n  ttl_seconds: 3600.0\n", 3, "expected an integer, got a number"),
        ("version: 1\nblocklist: shell\n", 2, "blocklist: expected a list, got a string"),
        ("version: 1\nblocklist: [ok, 3]\n", 2, "blocklist[1]: expected a string, got an integer"),
        ("version: 1\nanonymous:\n", 2, "anonymous: expected a mapping, got an empty value"),
        ("version: 1\ndefaults: [capabilities]\n", 2, "defaults: expected a mapping, got a list"),
        ("version: 1\ndescription: 5\n", 2, "description: expected a string"),
        (
            "version: 1\nupstreams:\n  - url: http://x\n    trusted: maybe\n",
            4,
            "upstreams[0].trusted: expected a boolean",
        ),
    ],
)
def test_wrong_types(body: str, line: int, fragment: str) -> None:
    issue = _one(body)
    assert issue.line == line
    assert fragment in issue.message


def test_bad_effect_enum() -> None:
    issue = _one(
        """
        version: 1
        tools:
          drop_cache:
            effect: mutate
        """
    )
    assert issue.line == 4
    assert issue.message == "tools.drop_cache.effect: 'mutate' is not one of: read, mutating, destructive, admin"


def test_tool_override_needs_an_effect() -> None:
    issue = _one("version: 1\ntools:\n  drop_cache: {}\n")
    assert issue.line == 3
    assert "tools.drop_cache: missing required key 'effect'" in issue.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("59", "59 is below the minimum of 60"), ("2592001", "2592001 is above the maximum of 2592000")],
)
def test_int_out_of_range(value: str, fragment: str) -> None:
    issue = _one(f"version: 1\nsessions:\n  max_ttl_seconds: {value}\n")
    assert issue.line == 3
    assert fragment in issue.message


def test_ttl_above_max_is_reported_at_the_later_setting() -> None:
    issue = _one("version: 1\nsessions:\n  max_ttl_seconds: 600\n  ttl_seconds: 3600\n")
    assert issue.line == 4
    assert "exceeds sessions.max_ttl_seconds (600)" in issue.message
    issue = _one("version: 1\nsessions:\n  ttl_seconds: 100000\n")
    assert issue.line == 3
    assert "the default" in issue.message


def test_duplicate_key_is_an_error() -> None:
    issue = _one(
        """
        version: 1
        anonymous:
          enabled: false
          enabled: true
        """
    )
    assert issue.line == 4
    assert "duplicate key 'anonymous.enabled' (first given on line 3)" in issue.message


def test_duplicate_top_level_section() -> None:
    issue = _one("version: 1\nblocklist: [a]\nblocklist: []\n")
    assert issue.line == 3
    assert "duplicate key 'blocklist'" in issue.message


def test_yaml_syntax_error_at_parser_line() -> None:
    issue = _one("version: 1\nblocklist: [a, b\nanonymous: {}\n")
    assert issue.message.startswith("YAML syntax error:")
    assert issue.line == 3


def test_yaml_syntax_error_bad_indentation() -> None:
    issue = _one("version: 1\nanonymous:\n  enabled: true\n scope: [x]\n")
    assert issue.message.startswith("YAML syntax error:")
    assert issue.line == 4


@pytest.mark.parametrize("body", ["", "\n\n", "# only a comment\n"])
def test_empty_file(body: str) -> None:
    issue = _one(body)
    assert issue.line == 1
    assert "empty" in issue.message


@pytest.mark.parametrize(
    ("body", "line", "kind"),
    [("- version: 1\n", 1, "a list"), ("# comment\n\njust text\n", 3, "a string"), ("42\n", 1, "an integer")],
)
def test_non_mapping_file(body: str, line: int, kind: str) -> None:
    issue = _one(body)
    assert issue.line == line
    assert f"must be a mapping of keys, got {kind}" in issue.message


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("description: x\nversion: 2\n", 2, "version: must be 1"),
        ("version: '1'\n", 1, "version: expected an integer"),
        ("version: true\n", 1, "version: expected an integer, got a boolean"),
        ("description: no version\n", 1, "missing required key 'version'"),
    ],
)
def test_version_must_be_1(body: str, line: int, fragment: str) -> None:
    issue = _one(body)
    assert issue.line == line
    assert fragment in issue.message


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("version: 1\nblocklist: ['']\n", 2, "blocklist[0]: must not be empty"),
        ("version: 1\nagents:\n  - match: ''\n", 3, "agents[0].match: must not be empty"),
        ("version: 1\ntools:\n  '': {effect: read}\n", 3, 'tools key "": must not be empty'),
        ("version: 1\nanonymous: {scope: ['']}\n", 2, "anonymous.scope[0]: must not be empty"),
    ],
)
def test_empty_globs_are_errors(body: str, line: int, fragment: str) -> None:
    issue = _one(body)
    assert issue.line == line
    assert fragment in issue.message


@pytest.mark.parametrize("url", ["ftp://host/mcp", "127.0.0.1:3001/mcp", "http://", "http:// spaced", ""])
def test_upstream_url_must_be_http(url: str) -> None:
    issue = _one(f"version: 1\nupstreams:\n  - url: {json.dumps(url)}\n")
    assert issue.line == 3
    assert "upstreams[0].url: invalid value" in issue.message
    assert "http://" in issue.message


def test_upstream_needs_url_and_no_duplicates() -> None:
    assert "upstreams[0]: missing required key 'url'" in _one("version: 1\nupstreams:\n  - trusted: true\n").message
    issue = _one("version: 1\nupstreams:\n  - url: http://h/mcp\n  - url: http://H:80/mcp/\n")
    assert issue.line == 4
    assert "duplicate of upstreams[0]" in issue.message


def test_non_string_keys_and_merge_keys_are_errors() -> None:
    issue = _one("version: 1\ntools:\n  on: {effect: read}\n")
    assert issue.line == 3
    assert "read by YAML as a boolean" in issue.message and "quote it" in issue.message
    issues = _issues("version: 1\nbase: &b {enabled: true}\nanonymous:\n  <<: *b\n")
    # 'base' is unknown (line 2) and the merge key is refused (line 4).
    assert [i.line for i in issues] == [2, 4]
    issues = _issues("version: 1\nanonymous:\n  <<: {enabled: true}\n")
    assert [(i.line, "merge keys" in i.message) for i in issues] == [(3, True)]


def test_custom_tags_are_refused() -> None:
    issue = _one("version: 1\nblocklist: !shell [x]\n")
    assert issue.line == 2
    assert "expected a list" in issue.message


def test_aliases_are_followed_without_repeating_errors() -> None:
    issues = _issues("version: 1\nanonymous: {scope: &s [ok, 5]}\nsessions: {default_scope: *s}\n")
    assert [i.line for i in issues] == [2, 2]  # one per schema location, no blow-up
    laughs = "version: 1\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    )
    assert len(_issues(laughs)) == 9  # unknown keys a..i, found instantly


def test_multiple_errors_are_all_reported_sorted_by_line() -> None:
    issues = _issues(
        """
        version: 1
        tools:
          x: {effect: bogus}
        anonymous:
          enabeld: true
          enabled: 'yes'
        sessions:
          ttl_seconds: 1
        typo_section: {}
        agents:
          - capabilities: [a]
        """
    )
    assert [i.line for i in issues] == [3, 5, 6, 8, 9, 11]
    assert [i.line for i in issues] == sorted(i.line for i in issues)
    assert all(i.file == "p.yaml" for i in issues)


def test_all_files_are_reported_in_order(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yaml", "version: 1\nbogus: 1\n")
    second = _write(tmp_path, "b.yaml", "version: 3\n")
    good = _write(tmp_path, "c.yaml", "version: 1\n")
    missing = tmp_path / "missing.yaml"
    issues = check_files([first, good, second, missing])
    assert [(Path(i.file).name, i.line) for i in issues] == [("a.yaml", 2), ("b.yaml", 1), ("missing.yaml", 1)]
    with pytest.raises(PolicyError) as info:
        load_policy([first, good, second, missing])
    assert str(info.value) == "\n".join(str(i) for i in issues)
    assert "cannot read policy file" in issues[-1].message


def test_invalid_utf8_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"version: 1\ndescription: \xff\n")
    [issue] = check_files([path])
    assert (issue.line, issue.message) == (2, "policy file is not valid UTF-8")


def test_policy_error_str_joins_issues() -> None:
    error = PolicyError([PolicyIssue("a", 1, "x"), PolicyIssue("b", 2, "y")])
    assert str(error) == "a:1: x\nb:2: y"
    assert error.issues[1].line == 2


# --------------------------------------------------------------------------- merging


def test_merge_semantics_across_files(tmp_path: Path) -> None:
    base = _write(
        tmp_path,
        "base.yaml",
        """
        version: 1
        anonymous: {enabled: true, scope: ["get_*"]}
        sessions: {ttl_seconds: 600, max_ttl_seconds: 7200}
        defaults: {capabilities: ["get_*"]}
        agents:
          - match: "billing-*"
            capabilities: ["get_*"]
        blocklist: ["*shell*"]
        tools:
          drop_cache: {effect: mutating}
          "db_*": {effect: mutating}
          "cache_*": {effect: read}
        upstreams:
          - {url: "http://a/mcp", trusted: true}
          - {url: "http://b/mcp", trusted: true}
        """,
    )
    top = _write(
        tmp_path,
        "top.yaml",
        """
        version: 1
        anonymous: {enabled: false}
        sessions: {ttl_seconds: 1200}
        agents:
          - match: "billing-*"
            capabilities: ["create_invoice"]
        blocklist: ["exec_*"]
        tools:
          drop_cache: {effect: destructive}
          "db_drop*": {effect: destructive}
        upstreams:
          - {url: "http://b/mcp/", trusted: false}
          - {url: "http://c/mcp", trusted: true}
        """,
    )
    policy = load_policy([base, top])
    assert policy.sources == (str(base), str(top))
    # Scalar sections: the later file's given keys win, the rest stay.
    assert policy.anonymous_enabled is False
    assert policy.anonymous_scope == GlobSet(["get_*"])
    assert (policy.session_ttl_seconds, policy.session_max_ttl_seconds) == (1200, 7200)
    assert policy.default_capabilities == GlobSet(["get_*"])
    assert policy.default_scope == GlobSet(["*"])
    # Agents concatenate; blocklists union.
    assert len(policy.agents) == 2
    assert policy.capabilities_for("billing-1") == GlobSet(["get_*", "create_invoice"])
    assert policy.blocklist == GlobSet(["*shell*", "exec_*"])
    # Tools: later wins per key; later globs are tried first.
    assert policy.effect_override("drop_cache") is Effect.DESTRUCTIVE
    assert policy.effect_override("db_drop_table") is Effect.DESTRUCTIVE
    assert policy.effect_override("db_insert") is Effect.MUTATING
    assert policy.effect_override("cache_get") is Effect.READ
    # Upstreams concatenate; the last entry for a URL wins.
    assert policy.is_trusted_upstream("http://a/mcp")
    assert not policy.is_trusted_upstream("http://b/mcp")
    assert policy.is_trusted_upstream("http://c/mcp")


def test_merge_order_matters(tmp_path: Path) -> None:
    one = _write(tmp_path, "1.yaml", "version: 1\nanonymous: {enabled: true}\n")
    two = _write(tmp_path, "2.yaml", "version: 1\nanonymous: {enabled: false}\n")
    assert load_policy([one, two]).anonymous_enabled is False
    assert load_policy([two, one]).anonymous_enabled is True


def test_merged_ttl_check_blames_the_later_file(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", "version: 1\nsessions:\n  ttl_seconds: 7200\n")
    top = _write(tmp_path, "top.yaml", "version: 1\n\nsessions:\n  max_ttl_seconds: 3600\n")
    assert check_files([base]) == []
    assert check_files([top]) == []
    [issue] = check_files([base, top])
    assert (issue.file, issue.line) == (str(top), 4)
    assert "sessions.ttl_seconds (7200) exceeds sessions.max_ttl_seconds (3600)" in issue.message


def test_shipped_default_under_a_local_override(tmp_path: Path) -> None:
    local = _write(tmp_path, "local.yaml", "version: 1\nblocklist: [drop_*]\nsessions: {ttl_seconds: 900}\n")
    policy = load_policy([POLICIES / "default.yaml", local])
    assert policy.anonymous_enabled is False
    assert policy.session_ttl_seconds == 900
    assert policy.blocklist_for("x").matches("drop_table")


# --------------------------------------------------------------------------- queries


AGENTS = """
version: 1
defaults:
  capabilities: ["get_*"]
agents:
  - match: "billing-*"
    capabilities: ["list_*", "create_invoice"]
    blocklist: ["delete_*"]
  - match: "*-eu"
    capabilities: ["gdpr_*"]
  - match: "*-contractor"
    blocklist: ["*payment*"]
  - match: "locked"
    capabilities: []
blocklist: ["*shell*"]
"""


def test_capabilities_union_across_matching_agents() -> None:
    policy = parse_policy_text(AGENTS)
    caps = policy.capabilities_for("billing-eu")
    assert caps == GlobSet(["list_*", "create_invoice", "gdpr_*"])
    assert caps.matches("gdpr_export") and caps.matches("create_invoice")
    assert not caps.matches("get_user")  # a matching grant replaces the defaults
    assert policy.capabilities_for("billing-us") == GlobSet(["list_*", "create_invoice"])


def test_capabilities_fall_back_to_defaults() -> None:
    policy = parse_policy_text(AGENTS)
    assert policy.capabilities_for("support") == GlobSet(["get_*"])
    # A blocklist-only entry narrows without locking the agent out.
    assert policy.capabilities_for("bob-contractor") == GlobSet(["get_*"])
    # An explicit empty grant does lock it out.
    assert not policy.capabilities_for("locked").matches("get_user")


def test_blocklist_for_unions_global_and_agent_rules() -> None:
    policy = parse_policy_text(AGENTS)
    assert policy.blocklist_for("support") == GlobSet(["*shell*"])
    assert policy.blocklist_for("billing-contractor") == GlobSet(["*shell*", "delete_*", "*payment*"])
    assert policy.blocklist_for("billing-1").matches("delete_invoice")
    assert not policy.blocklist_for("support").matches("delete_invoice")


def test_globs_are_case_sensitive_and_whole_name() -> None:
    policy = parse_policy_text(AGENTS)
    assert policy.capabilities_for("Billing-1") == GlobSet(["get_*"])
    assert not policy.capabilities_for("support").matches("Get_user")
    assert not policy.capabilities_for("support").matches("xget_user")


def test_query_results_are_memoised_and_bounded() -> None:
    policy = parse_policy_text(AGENTS)
    assert policy.capabilities_for("billing-eu") is policy.capabilities_for("billing-eu")
    assert policy.blocklist_for("billing-eu") is policy.blocklist_for("billing-eu")
    for n in range(5000):
        policy.capabilities_for(f"agent-{n}")
        policy.effect_override(f"tool_{n}")
    assert len(policy._caps_memo) <= 4096
    assert len(policy._effect_memo) <= 4096
    assert policy.capabilities_for("billing-eu") == GlobSet(["list_*", "create_invoice", "gdpr_*"])


def test_effect_override_exact_before_globs_then_file_order() -> None:
    policy = parse_policy_text(
        """
        version: 1
        tools:
          "drop_*": {effect: destructive}
          "*cache*": {effect: read}
          drop_cache: {effect: mutating}
        """
    )
    assert policy.effect_override("drop_cache") is Effect.MUTATING  # exact wins over earlier globs
    assert policy.effect_override("drop_cache_all") is Effect.DESTRUCTIVE  # first glob in file order
    assert policy.effect_override("warm_cache") is Effect.READ
    assert policy.effect_override("get_user") is None
    assert policy.effect_override("get_user") is None  # cached None stays None


def test_is_trusted_upstream_normalises_urls() -> None:
    policy = parse_policy_text(
        """
        version: 1
        upstreams:
          - url: "http://127.0.0.1:3001/mcp"
            trusted: true
          - url: "https://Example.COM/mcp/"
          - url: "https://trusted.example/api"
            trusted: true
        """
    )
    assert policy.is_trusted_upstream("http://127.0.0.1:3001/mcp/")
    assert policy.is_trusted_upstream("HTTP://127.0.0.1:3001/mcp")
    assert policy.is_trusted_upstream("https://TRUSTED.example:443/api")
    assert not policy.is_trusted_upstream("https://example.com/mcp")  # listed, not trusted
    assert not policy.is_trusted_upstream("http://127.0.0.1:3002/mcp")
    assert not policy.is_trusted_upstream("http://127.0.0.1:3001/MCP")  # paths stay case-sensitive
    assert policy.upstreams[1] == UpstreamRule("https://Example.COM/mcp/", False)


def test_normalise_url() -> None:
    assert normalise_url(" HTTPS://User@Host.Example:443/a/ ") == "https://User@host.example/a"
    assert normalise_url("http://h:8080/") == "http://h:8080"
    assert normalise_url("http://[::1") == "http://[::1"


def test_policy_is_immutable_hashable_and_comparable() -> None:
    policy = Policy(
        agents=(AgentRule(GlobSet(["a*"]), GlobSet(["x"])),),
        effect_overrides=(("drop_*", Effect.DESTRUCTIVE),),
        upstreams=(UpstreamRule("http://u/", True),),
    )
    policy.capabilities_for("abc")
    assert policy == Policy(
        agents=(AgentRule(GlobSet(["a*"]), GlobSet(["x"])),),
        effect_overrides=(("drop_*", Effect.DESTRUCTIVE),),
        upstreams=(UpstreamRule("http://u/", True),),
    )
    assert hash(policy) == hash(policy)
    assert "_caps_memo" not in repr(policy)
    with pytest.raises(AttributeError):
        policy.anonymous_enabled = True  # type: ignore[misc]
    assert policy.effect_override("drop_all") is Effect.DESTRUCTIVE
    assert policy.is_trusted_upstream("http://u")
    assert policy.capabilities_for("abc") == GlobSet(["x"])
    assert policy.capabilities_for("zzz") == GlobSet(["*"])


def test_parse_policy_text_uses_source_in_issues() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_text("version: 1\nnope: 1\n", source="embedded")
    assert str(info.value).startswith("embedded:2: unknown key 'nope'")


# --------------------------------------------------------------------------- guardian, arguments, constraints

FULL_GUARDIAN = """
version: 1
guardian:
  anomaly: {min_calls: 10, denial_rate: 0.5, write_ratio: 1}
  spot:
    window_seconds: 60
    approval_at: 0.4
    deny_at: 0.9
    max_session_age_seconds: 3600
    max_calls_per_minute: 30
  deep: {min_confidence: 0.9, low_confidence: deny, timeout_seconds: 5, cache_ttl_seconds: 0}
  timeouts: {spot: 0.25, deep: 20}
  circuit_breaker: {failures: 3, cooldown_seconds: 10}
arguments:
  roots: ["/srv//data/", "/tmp/agent", "//srv/other"]
tools:
  run_query:
    effect: read
    constraints:
      sql: {regex: "^\\\\s*SELECT\\\\b", required: true}
      limit: {min: 1, max: 1000}
      mode: {enum: ["fast", "safe", 3, true]}
      path: {glob: "/srv/data/*"}
      target: {required: true}
  "db_*":
    constraints:
      table: {enum: ["users"]}
"""


def test_guardian_arguments_and_constraints_parse() -> None:
    policy = parse_policy_text(FULL_GUARDIAN)
    guardian = policy.guardian
    assert guardian.anomaly == AnomalySettings(min_calls=10, denial_rate=0.5, write_ratio=1.0)
    assert isinstance(guardian.anomaly.write_ratio, float)  # `1` in YAML, a float setting
    assert guardian.spot == SpotSettings(60, 0.4, 0.9, 3600, 30)
    assert guardian.deep == DeepSettings(0.9, "deny", 5.0, 0)
    assert (guardian.spot_timeout, guardian.deep_timeout) == (0.25, 20.0)
    assert (guardian.breaker_failures, guardian.breaker_cooldown_seconds) == (3, 10.0)
    assert policy.path_roots == ("/srv/data", "/tmp/agent", "/srv/other")
    assert policy.effect_override("run_query") is Effect.READ
    assert policy.effect_override("db_users") is None  # constraints only: no effect override
    sql, limit, mode, path, target = policy.constraints_for("run_query")
    assert sql.argument == "sql" and sql.required and sql.regex is not None
    assert sql.regex.search("  select 1") is None and sql.regex.search("  SELECT 1")
    assert (limit.minimum, limit.maximum, limit.enum) == (1, 1000, None)
    assert mode.enum == ("fast", "safe", 3, True)
    assert path.glob == "/srv/data/*" and not path.required
    assert target == Constraint("target", required=True)
    assert policy.constraints_for("db_users") == (Constraint("table", enum=("users",)),)
    assert policy.constraints_for("other") == ()


def test_guardian_defaults_without_the_section() -> None:
    policy = parse_policy_text("version: 1\n")
    assert policy.guardian == GuardianSettings()
    assert policy.guardian.spot.window_seconds == 300
    assert policy.guardian.deep.low_confidence == "approval_required"
    assert policy.path_roots == ()
    assert policy.constraints_for("anything") == ()


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("guardian:\n  anomaly:\n    min_calls: 0\n", 4, "guardian.anomaly.min_calls: 0 is below the minimum of 1"),
        ("guardian:\n  anomaly:\n    min_calls: 1001\n", 4, "1001 is above the maximum of 1000"),
        ("guardian:\n  anomaly:\n    min_calls: 2.5\n", 4, "min_calls: expected an integer, got a number"),
        ("guardian:\n  anomaly:\n    denial_rate: 1.5\n", 4, "denial_rate: 1.5 is above the maximum of 1"),
        ("guardian:\n  anomaly:\n    denial_rate: '0.3'\n", 4, "denial_rate: expected a number, got a string"),
        ("guardian:\n  anomaly:\n    write_ratio: -0.1\n", 4, "write_ratio: -0.1 is below the minimum of 0"),
        ("guardian:\n  spot:\n    window_seconds: 5\n", 4, "window_seconds: 5 is below the minimum of 10"),
        ("guardian:\n  spot:\n    approval_at: 2\n", 4, "approval_at: 2 is above the maximum of 1"),
        ("guardian:\n  spot:\n    max_session_age_seconds: 59\n", 4, "59 is below the minimum of 60"),
        ("guardian:\n  spot:\n    max_calls_per_minute: 0\n", 4, "max_calls_per_minute: 0 is below the minimum"),
        ("guardian:\n  deep:\n    min_confidence: 1.1\n", 4, "min_confidence: 1.1 is above the maximum of 1"),
        ("guardian:\n  deep:\n    low_confidence: allow\n", 4, "'allow' is not one of: deny, approval_required"),
        ("guardian:\n  deep:\n    timeout_seconds: 0.1\n", 4, "timeout_seconds: 0.1 is below the minimum of 0.5"),
        ("guardian:\n  deep:\n    cache_ttl_seconds: 3601\n", 4, "cache_ttl_seconds: 3601 is above the maximum"),
        ("guardian:\n  timeouts:\n    spot: 0\n", 4, "guardian.timeouts.spot: 0 is below the minimum of 0.01"),
        ("guardian:\n  timeouts:\n    spot: 31\n", 4, "guardian.timeouts.spot: 31 is above the maximum of 30"),
        ("guardian:\n  timeouts:\n    deep: .nan\n", 4, "guardian.timeouts.deep: must be a finite number"),
        ("guardian:\n  timeouts:\n    deep: .inf\n", 4, "guardian.timeouts.deep: must be a finite number"),
        ("guardian:\n  circuit_breaker:\n    failures: 0\n", 4, "failures: 0 is below the minimum of 1"),
        ("guardian:\n  circuit_breaker:\n    cooldown_seconds: 0.5\n", 4, "cooldown_seconds: 0.5 is below the minimum"),
        ("guardian:\n  spot:\n    deny: 0.9\n", 4, "unknown key 'guardian.spot.deny'; did you mean 'deny_at'?"),
        ("guardian:\n  tiers: {}\n", 3, "unknown key 'guardian.tiers'"),
        ("guardian: []\n", 2, "guardian: expected a mapping, got a list"),
        ("arguments:\n  roots: [srv/data]\n", 3, "arguments.roots[0]: invalid value 'srv/data': An absolute POSIX"),
        ("arguments:\n  roots: /srv\n", 3, "arguments.roots: expected a list, got a string"),
        ("arguments:\n  root: [/srv]\n", 3, "unknown key 'arguments.root'; did you mean 'roots'?"),
        ("tools:\n  x: {}\n", 3, "tools.x: missing required key 'effect', 'constraints' or 'credentials'"),
        ("tools:\n  x:\n    constraints: []\n", 4, "tools.x.constraints: expected a mapping, got a list"),
        ("tools:\n  x:\n    constraints:\n      '': {required: true}\n", 5, 'tools.x.constraints key "": must not be'),
        (
            "tools:\n  x:\n    constraints:\n      sql: {}\n",
            5,
            "tools.x.constraints.sql: missing required key 'regex', 'min', 'max', 'enum', 'glob' or 'required'",
        ),
        ("tools:\n  x:\n    constraints:\n      sql:\n        regex: 5\n", 6, "sql.regex: expected a string"),
        ("tools:\n  x:\n    constraints:\n      sql:\n        regex: ''\n", 6, "sql.regex: must not be empty"),
        ("tools:\n  x:\n    constraints:\n      n:\n        min: '1'\n", 6, "n.min: expected a number, got a string"),
        ("tools:\n  x:\n    constraints:\n      n:\n        max: true\n", 6, "n.max: expected a number, got a boolean"),
        ("tools:\n  x:\n    constraints:\n      m:\n        enum: []\n", 6, "m.enum: must not be empty"),
        (
            "tools:\n  x:\n    constraints:\n      m:\n        enum: [a, [b]]\n",
            6,
            "m.enum[1]: expected a string, a number or a boolean (true or false), got a list",
        ),
        ("tools:\n  x:\n    constraints:\n      m:\n        enum: [~]\n", 6, "got an empty value"),
        ("tools:\n  x:\n    constraints:\n      p:\n        glob: ''\n", 6, "p.glob: must not be empty"),
        ("tools:\n  x:\n    constraints:\n      p:\n        required: 'true'\n", 6, "p.required: expected a boolean"),
        ("tools:\n  x:\n    constraints:\n      p:\n        maxx: 3\n", 6, "unknown key 'tools.x.constraints.p.maxx'"),
    ],
)
def test_new_keys_invalid_forms(body: str, line: int, fragment: str) -> None:
    issue = _one("version: 1\n" + body)
    assert issue.line == line, issue
    assert fragment in issue.message, issue


def test_constraint_regex_must_compile_reported_at_its_line() -> None:
    issue = _one(
        """
        version: 1
        tools:
          run_query:
            constraints:
              limit: {min: 1}
              sql:
                required: true
                regex: "^(SELECT"
        """
    )
    assert issue.line == 8
    assert issue.message.startswith("tools.run_query.constraints.sql.regex: invalid regular expression: missing )")
    assert "at position 1" in issue.message
    issue = _one('version: 1\ntools:\n  "db-*":\n    constraints: {q: {regex: "a{2,1}"}}\n')
    assert issue.line == 4
    assert 'tools["db-*"].constraints.q.regex: invalid regular expression' in issue.message


def test_constraint_min_above_max_reported_at_max() -> None:
    issue = _one("version: 1\ntools:\n  t:\n    constraints:\n      n:\n        max: 1\n        min: 5\n")
    assert issue.line == 6
    assert issue.message == "tools.t.constraints.n.max (1) is below min (5)"
    assert parse_policy_text("version: 1\ntools: {t: {constraints: {n: {min: 2, max: 2}}}}\n")


def test_deny_at_below_approval_at_is_an_error() -> None:
    issue = _one("version: 1\nguardian:\n  spot:\n    deny_at: 0.6\n    approval_at: 0.7\n")
    assert issue.line == 5  # within one file: the later of the two
    assert issue.message == "guardian.spot.deny_at (0.6) is below guardian.spot.approval_at (0.7)"
    issue = _one("version: 1\nguardian:\n  spot:\n    deny_at: 0.3\n")
    assert issue.line == 4
    assert "is below guardian.spot.approval_at (0.5, the default)" in issue.message
    policy = parse_policy_text("version: 1\nguardian: {spot: {deny_at: 0.5, approval_at: 0.5}}\n")
    assert policy.guardian.spot.deny_at == policy.guardian.spot.approval_at == 0.5


def test_deny_at_check_runs_on_the_merged_result(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", "version: 1\nguardian:\n  spot:\n    approval_at: 0.2\n")
    top = _write(tmp_path, "top.yaml", "version: 1\n\nguardian:\n  spot: {deny_at: 0.3}\n")
    assert check_files([base, top]) == []
    lower = _write(tmp_path, "lower.yaml", "version: 1\nguardian:\n  spot:\n    approval_at: 0.35\n")
    [issue] = check_files([top, lower])
    assert (issue.file, issue.line) == (str(lower), 4)
    assert "guardian.spot.deny_at (0.3) is below guardian.spot.approval_at (0.35)" in issue.message


def test_merge_of_guardian_arguments_and_constraints(tmp_path: Path) -> None:
    base = _write(
        tmp_path,
        "base.yaml",
        """
        version: 1
        guardian:
          anomaly: {min_calls: 8, denial_rate: 0.4}
          timeouts: {spot: 0.2}
        arguments:
          roots: ["/srv/data", "/tmp/agent"]
        tools:
          run_query:
            effect: read
            constraints:
              sql: {regex: "^SELECT"}
              limit: {max: 10}
          "db_*":
            constraints: {table: {required: true}}
          "db_admin_*":
            constraints: {table: {enum: [audit]}}
          purge_cache:
            effect: mutating
            constraints: {scope: {enum: [all]}}
        """,
    )
    top = _write(
        tmp_path,
        "top.yaml",
        """
        version: 1
        guardian:
          anomaly: {denial_rate: 0.2}
          deep: {low_confidence: deny}
        arguments:
          roots: ["/srv/other"]
        tools:
          run_query:
            constraints:
              limit: {max: 100}
          "db_admin_*":
            constraints: {table: {enum: [users]}}
          purge_cache:
            constraints: {}
        """,
    )
    policy = load_policy([base, top])
    # guardian: per key, the last file that gives it wins.
    assert policy.guardian.anomaly == AnomalySettings(min_calls=8, denial_rate=0.2, write_ratio=0.8)
    assert policy.guardian.spot_timeout == 0.2
    assert policy.guardian.deep.low_confidence == "deny"
    # arguments.roots: replaced as a whole.
    assert policy.path_roots == ("/srv/other",)
    # tools: constraints replaced per key as a whole; an entry without effect keeps the earlier one.
    assert policy.effect_override("run_query") is Effect.READ
    assert policy.constraints_for("run_query") == (Constraint("limit", maximum=100),)
    assert policy.constraints_for("purge_cache") == ()  # `{}` removed them
    assert policy.effect_override("purge_cache") is Effect.MUTATING
    # Later files' globs first: db_admin_* (top) before db_* (base).
    assert policy.constraints_for("db_admin_x") == (Constraint("table", enum=("users",)),)
    assert policy.constraints_for("db_x") == (Constraint("table", required=True),)
    # Order matters the other way round too.
    flipped = load_policy([top, base])
    assert flipped.path_roots == ("/srv/data", "/tmp/agent")
    assert [c.argument for c in flipped.constraints_for("run_query")] == ["sql", "limit"]
    assert flipped.constraints_for("purge_cache") == (Constraint("scope", enum=("all",)),)


def test_constraints_for_exact_before_glob_then_file_order_and_memoised() -> None:
    policy = parse_policy_text(
        """
        version: 1
        tools:
          "run_*": {constraints: {a: {required: true}}}
          "*query*": {constraints: {b: {required: true}}}
          run_query: {effect: read}
          run_report: {constraints: {c: {required: true}}}
        """
    )
    assert [c.argument for c in policy.constraints_for("run_query")] == ["a"]  # exact key has no constraints
    assert [c.argument for c in policy.constraints_for("run_report")] == ["c"]  # exact key wins
    assert [c.argument for c in policy.constraints_for("my_query")] == ["b"]
    assert policy.constraints_for("get_user") == ()
    assert policy.constraints_for("run_x") is policy.constraints_for("run_x")
    for n in range(5000):
        policy.constraints_for(f"tool_{n}")
    assert len(policy._constraints_memo) <= 4096
    assert [c.argument for c in policy.constraints_for("run_query")] == ["a"]


def test_policy_with_new_fields_stays_immutable_and_hashable() -> None:
    policy = parse_policy_text(FULL_GUARDIAN)
    again = parse_policy_text(FULL_GUARDIAN)
    assert policy == again and hash(policy) == hash(again)
    assert policy != parse_policy_text(FULL_GUARDIAN.replace("min_calls: 10", "min_calls: 11"))
    with pytest.raises(AttributeError):
        policy.guardian = GuardianSettings()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        policy.guardian.spot.deny_at = 0.1  # type: ignore[misc]
    assert "_constraints_memo" not in repr(policy)


@pytest.mark.parametrize(
    "body",
    [
        FULL_GUARDIAN,
        "version: 1\ntools: {x: {constraints: {}}}\n",
        "version: 1\ntools: {x: {constraints: {a: {}}}}\n",
        "version: 1\ntools: {x: {constraints: {a: {enum: []}}}}\n",
        "version: 1\ntools: {x: {constraints: {a: {enum: [1, a, true, 2.5]}}}}\n",
        "version: 1\ntools: {x: {constraints: {a: {enum: [[1]]}}}}\n",
        "version: 1\ntools: {x: {constraints: {a: {enum: [{b: 1}]}}}}\n",
        "version: 1\ntools: {x: {constraints: {a: {min: 1.5, max: 2}}}}\n",
        "version: 1\ntools: {x: {effect: read, constraints: {a: {required: false}}}}\n",
        "version: 1\narguments: {roots: []}\n",
        "version: 1\narguments: {roots: [relative]}\n",
        "version: 1\nguardian: {spot: {}, deep: {}, anomaly: {}}\n",
        "version: 1\nguardian: {deep: {low_confidence: allow}}\n",
        "version: 1\nguardian: {anomaly: {min_calls: 0}}\n",
        "version: 1\nguardian: {timeouts: {spot: 30.5}}\n",
    ],
)
def test_interpreter_agrees_with_reference_validator_on_new_keys(body: str) -> None:
    assert_agrees_with_reference(body)


# --------------------------------------------------------------------------- upstream credentials

CREDENTIALS = """\
version: 1
upstreams:
  - url: "http://127.0.0.1:3001/mcp"
    credentials:
      mode: minted
      ttl_seconds: 30
      scope: ["notes:read", "notes:write"]
  - url: "https://billing.example/mcp/"
    credentials: {mode: static, header: X-Api-Key, value_env: BILLING_KEY}
  - url: "https://other.example/mcp"
tools:
  export_notes:
    credentials: {scope: ["notes:export"]}
  "legacy_*":
    credentials: {mode: passthrough}
  legacy_ok: {effect: read}
"""


def test_credentials_default_to_minted() -> None:
    from proxy.core.policy import CredentialSettings

    assert Policy().credentials_for("http://any/mcp", "get_x") == CredentialSettings()
    assert CredentialSettings().mode == "minted" and CredentialSettings().ttl_seconds == 60


def test_credentials_tool_wins_over_upstream() -> None:
    policy = parse_policy_text(CREDENTIALS)
    notes = policy.credentials_for("HTTP://127.0.0.1:3001/mcp/", "get_note")
    assert (notes.mode, notes.ttl_seconds, notes.scope) == ("minted", 30, ("notes:read", "notes:write"))
    exported = policy.credentials_for("http://127.0.0.1:3001/mcp", "export_notes")
    assert (exported.mode, exported.ttl_seconds, exported.scope) == ("minted", 30, ("notes:export",))
    assert policy.credentials_for("http://127.0.0.1:3001/mcp", "legacy_sync").mode == "passthrough"
    assert policy.credentials_for("http://127.0.0.1:3001/mcp", "legacy_ok").mode == "passthrough"  # effect-only key
    billing = policy.credentials_for("https://billing.example/mcp", None)
    assert (billing.mode, billing.header, billing.value_env, billing.value_file) == (
        "static",
        "X-Api-Key",
        "BILLING_KEY",
        None,
    )
    assert policy.credentials_for("https://other.example/mcp", "get_x").mode == "minted"
    assert policy.credentials_for("https://unlisted.example/mcp", "export_notes").scope == ("notes:export",)
    first = policy.credentials_for("http://127.0.0.1:3001/mcp", "get_note")
    assert policy.credentials_for("http://127.0.0.1:3001/mcp", "get_note") is first  # memoised
    assert policy == parse_policy_text(CREDENTIALS) and hash(policy) == hash(parse_policy_text(CREDENTIALS))


def test_credential_variants_cover_every_effective_setting() -> None:
    policy = parse_policy_text(CREDENTIALS)
    variants = {(url, key): s.mode for url, key, s in policy.credential_variants()}
    assert variants[(None, None)] == "minted"  # other.example lists no credentials
    assert variants[("https://billing.example/mcp", None)] == "static"
    assert variants[("http://127.0.0.1:3001/mcp", "legacy_*")] == "passthrough"
    assert variants[("http://127.0.0.1:3001/mcp", "export_notes")] == "minted"


def test_tool_secret_source_replaces_the_upstreams() -> None:
    policy = parse_policy_text(
        "version: 1\nupstreams:\n  - url: http://u/mcp\n    credentials: {mode: static, value_env: A}\n"
        "tools:\n  t:\n    credentials: {value_file: /run/secrets/t}\n"
    )
    settings = policy.credentials_for("http://u/mcp", "t")
    assert (settings.mode, settings.value_env, settings.value_file) == ("static", None, "/run/secrets/t")


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials: {mode: static}\n",
            4,
            "upstreams[0].credentials: mode 'static' needs exactly one of value_env or value_file",
        ),
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials:\n      mode: static\n      value_env: A\n"
            "      value_file: /f\n",
            5,
            "needs exactly one of value_env or value_file (both are given)",
        ),
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials: {mode: exchange, client_id: w, client_secret_env: S}"
            "\n",
            4,
            "upstreams[0].credentials: mode 'exchange' needs token_endpoint",
        ),
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials: {value_env: A}\n",
            4,
            "upstreams[0].credentials: value_env applies to mode 'minted' only with alg 'HS256'",
        ),
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials: {mode: static, value_env: A}\n"
            "tools:\n  t:\n    credentials: {scope: [x]}\n",
            7,
            "tools.t.credentials: scope does not apply to mode 'static'",
        ),
        (
            "tools:\n  t:\n    credentials: {mode: static, header: Mcp-Session-Id, value_env: A}\n",
            4,
            "header 'Mcp-Session-Id' is set by Wicket or the MCP transport",
        ),
        (
            "tools:\n  t:\n    credentials: {value_env: A}\n",
            4,
            "tools.t.credentials: value_env applies to mode 'minted' only with alg 'HS256'",
        ),
        (
            "upstreams:\n  - url: http://a/mcp\n    credentials: {mode: passthrough}\n  - url: http://b/mcp\n"
            "    credentials: {mode: static, value_env: B}\ntools:\n  t:\n    credentials: {ttl_seconds: 9}\n",
            9,
            "tools.t.credentials: ttl_seconds does not apply to mode 'passthrough' or 'static'",
        ),
        ("upstreams:\n  - url: http://u/mcp\n    credentials: {ttl_seconds: 4}\n", 4, "4 is below the minimum of 5"),
        ("upstreams:\n  - url: http://u/mcp\n    credentials: {ttl_seconds: 3601}\n", 4, "above the maximum of 3600"),
        ("upstreams:\n  - url: http://u/mcp\n    credentials: {mode: mint}\n", 4, "'mint' is not one of: minted"),
        ("upstreams:\n  - url: http://u/mcp\n    credentials: {scope: ['a b']}\n", 4, "invalid value 'a b'"),
        ("upstreams:\n  - url: http://u/mcp\n    credentials: {header: 'X Key'}\n", 4, "invalid value 'X Key'"),
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials: {secret: x}\n",
            4,
            "unknown key 'upstreams[0].credentials.secret'",
        ),
        (
            "upstreams:\n  - url: http://u/mcp\n    credentials: {mode: exchange, token_endpoint: idp, client_id: w, "
            "client_secret_env: S}\n",
            4,
            "token_endpoint: invalid value 'idp'",
        ),
    ],
)
def test_credentials_errors_name_the_line(body: str, line: int, message: str) -> None:
    issue = _one("version: 1\n" + body)
    assert issue.line == line, issue
    assert message in issue.message, issue


def test_credentials_merge_across_files(tmp_path: Path) -> None:
    base = _write(
        tmp_path,
        "base.yaml",
        """
        version: 1
        upstreams:
          - url: http://u/mcp
            credentials: {mode: static, value_env: A}
        tools:
          t: {credentials: {scope: [x]}, effect: read}
        """,
    )
    keeps = _write(tmp_path, "keeps.yaml", "version: 1\nupstreams:\n  - url: http://u/mcp\n    trusted: true\n")
    replaces = _write(
        tmp_path,
        "replaces.yaml",
        """
        version: 1
        upstreams:
          - url: http://U/mcp/
            credentials: {ttl_seconds: 10}
        tools:
          t: {credentials: {scope: [y]}}
        """,
    )
    with pytest.raises(PolicyError) as info:
        load_policy([base, keeps])  # t's scope under a static upstream
    assert "tools.t.credentials: scope does not apply to mode 'static'" in str(info.value)
    policy = load_policy([base, keeps, replaces])
    assert policy.credentials_for("http://u/mcp", None).ttl_seconds == 10
    assert policy.credentials_for("http://u/mcp", "t").scope == ("y",)
    assert policy.credentials_for("http://u/mcp", "t").mode == "minted"


@pytest.mark.parametrize(
    "body",
    [
        "version: 1\nupstreams: [{url: 'http://u', credentials: {}}]\n",
        "version: 1\nupstreams: [{url: 'http://u', credentials: {mode: passthrough}}]\n",
        "version: 1\nupstreams: [{url: 'http://u', credentials: {ttl_seconds: 5, scope: []}}]\n",
        "version: 1\nupstreams: [{url: 'http://u', credentials: {ttl_seconds: 1}}]\n",
        "version: 1\nupstreams: [{url: 'http://u', credentials: {scope: ['a\"b']}}]\n",
        "version: 1\ntools: {x: {credentials: {mode: static, value_file: /s, header: X-K}}}\n",
        "version: 1\ntools: {x: {credentials: {subject_token_type: id_token}}}\n",
    ],
)
def test_interpreter_agrees_with_reference_validator_on_credentials(body: str) -> None:
    assert_agrees_with_reference(body)
