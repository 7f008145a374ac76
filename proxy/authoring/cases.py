"""``wicket policy test``: run recorded cases through the real checker, like ``opa test``.

A test file is YAML next to the policies (``policies/demo_test.yaml``)::

    policies: [demo.yaml]          # relative to this file; default: the file's name without _test
    cases:
      - name: a read passes
        action: {tool: get_weather, arguments: {city: Oslo}}
        session: {agent: anonymous, mode: read-only}
        expect: {decision: allow, effect: read, tier: fast}

Each failing case is reported as ``file:line: name: what differed``; the exit status is 1 when
any case fails or a file cannot be read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.authoring.harness import ActionSpec, Explanation, SessionSpec, StatedVerdict, evaluate
from proxy.core.policy import Policy, PolicyError, load_policy

_CASE_KEYS = frozenset({"name", "action", "session", "deep", "expect"})
_ACTION_KEYS = frozenset({"tool", "method", "protocol", "arguments", "annotations", "upstream", "intent", "skill"})
_SESSION_KEYS = frozenset(
    {"agent", "mode", "scope", "intent", "elevations", "calls", "denials", "writes", "age_seconds"}
)
_EXPECT_KEYS = frozenset({"decision", "effect", "tier", "reason"})
_DECISIONS = frozenset({"allow", "deny", "approval_required", "would_deny", "would_require_approval"})


class CaseFileError(Exception):
    """A test file that cannot be run: ``file:line: message``."""


@dataclass(frozen=True)
class Case:
    file: str
    line: int
    name: str
    action: ActionSpec
    session: SessionSpec
    deep: StatedVerdict
    expect: Mapping[str, str]


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    got: dict[str, Any] = field(default_factory=dict)

    def line_text(self) -> str:
        return f"{self.file}:{self.line}: {self.name}: " + "; ".join(self.problems)


@dataclass
class FileResult:
    file: str
    policies: list[str]
    cases: list[CaseResult] = field(default_factory=list)
    error: str | None = None


def discover(paths: Sequence[str]) -> list[Path]:
    """The test files named, or every ``*_test.yaml`` in a named directory (default ``policies/``)."""
    found: list[Path] = []
    for raw in paths or ["policies"]:
        path = Path(raw)
        found.extend(sorted(path.glob("*_test.yaml")) if path.is_dir() else [path])
    return found


def load_cases(path: Path, policy_override: Sequence[str] = ()) -> tuple[list[str], list[Case]]:
    """The policy files a test file runs against and its cases; raises CaseFileError."""
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise CaseFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise CaseFileError(f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or root is None:
        raise CaseFileError(f"{path}:1: a policy test file is a mapping with a 'cases' list")
    unknown = set(data) - {"policies", "cases", "description"}
    if unknown:
        raise CaseFileError(f"{path}:1: unknown key(s) {', '.join(sorted(unknown))}")
    policies = list(policy_override) or _policies_of(path, data.get("policies"))
    case_nodes = next(value for key, value in root.value if key.value == "cases").value
    cases = [
        parse_case(path, node.start_mark.line + 1, raw) for node, raw in zip(case_nodes, data["cases"], strict=True)
    ]
    return policies, cases


def _policies_of(path: Path, given: Any) -> list[str]:
    if given is None:
        stem = path.name.removesuffix(".yaml").removesuffix("_test")
        return [str(path.with_name(stem + ".yaml"))]
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, list) or not all(isinstance(p, str) for p in given):
        raise CaseFileError(f"{path}:1: 'policies' is a list of policy file paths (relative to the test file)")
    return [str((path.parent / p) if not Path(p).is_absolute() else Path(p)) for p in given]


def parse_case(path: Path, line: int, raw: Any) -> Case:
    where = f"{path}:{line}"
    if not isinstance(raw, dict):
        raise CaseFileError(f"{where}: a case is a mapping with name, action, session and expect")
    _only(where, "case", raw, _CASE_KEYS)
    name = str(raw.get("name") or f"case at line {line}")
    action = raw.get("action")
    if not isinstance(action, dict) or ("tool" not in action and "method" not in action):
        raise CaseFileError(f"{where}: {name}: 'action' needs a 'tool' (a tool call) or a 'method'")
    _only(where, "action", action, _ACTION_KEYS)
    arguments = action.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise CaseFileError(f"{where}: {name}: action.arguments is a mapping")
    session = raw.get("session") or {}
    if not isinstance(session, dict):
        raise CaseFileError(f"{where}: {name}: 'session' is a mapping")
    _only(where, "session", session, _SESSION_KEYS)
    expect = raw.get("expect")
    if not isinstance(expect, dict) or not expect:
        raise CaseFileError(f"{where}: {name}: 'expect' names at least one of decision, effect, tier, reason")
    _only(where, "expect", expect, _EXPECT_KEYS)
    if "decision" in expect and expect["decision"] not in _DECISIONS:
        raise CaseFileError(f"{where}: {name}: expect.decision must be one of {', '.join(sorted(_DECISIONS))}")
    try:
        deep = StatedVerdict.parse(raw.get("deep", "unavailable"))
        session_spec = SessionSpec(
            agent=str(session.get("agent", "agent")),
            mode=str(session.get("mode", "read-only")),
            scope=tuple(session.get("scope", ["*"])),
            intent=session.get("intent"),
            elevations=tuple(session.get("elevations", ())),
            calls=int(session.get("calls", 0)),
            denials=int(session.get("denials", 0)),
            writes=int(session.get("writes", 0)),
            age_seconds=float(session.get("age_seconds", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise CaseFileError(f"{where}: {name}: {exc}") from None
    if session_spec.mode not in ("read-only", "read-write"):
        raise CaseFileError(f"{where}: {name}: session.mode must be read-only or read-write")
    action_spec = ActionSpec(
        tool=action.get("tool"),
        method=str(action.get("method", "tools/call")),
        protocol=str(action.get("protocol", "mcp")),
        arguments=arguments,
        annotations=action.get("annotations"),
        upstream=str(action.get("upstream", ActionSpec.upstream)),
        intent=action.get("intent"),
        skill=str(action["skill"]) if "skill" in action else None,
    )
    return Case(str(path), line, name, action_spec, session_spec, deep, {k: str(v) for k, v in expect.items()})


def _only(where: str, what: str, given: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(given) - allowed
    if unknown:
        raise CaseFileError(
            f"{where}: unknown {what} key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(allowed))}"
        )


def compare(case: Case, explanation: Explanation) -> CaseResult:
    """Each expected field against what the checker decided; the reason is a substring match."""
    decision = explanation.decision
    got = {
        "decision": decision.recorded_verdict,
        "effect": decision.effect.label,
        "tier": decision.tier.value,
        "reason": decision.reason,
    }
    problems = []
    for key, expected in case.expect.items():
        actual = got[key]
        matched = expected.lower() in actual.lower() if key == "reason" else expected == actual
        if not matched:
            if key == "reason":
                problems.append(f"expected the reason to contain {expected!r}, got {actual!r}")
            else:
                problems.append(f"expected {key} {expected}, got {actual}")
    if problems and "reason" not in case.expect:
        problems.append(f"reason: {decision.reason}")
    return CaseResult(case.file, case.line, case.name, not problems, problems, got)


async def run_file(path: Path, policy_override: Sequence[str] = ()) -> FileResult:
    try:
        policies, cases = load_cases(path, policy_override)
    except CaseFileError as exc:
        return FileResult(str(path), [], error=str(exc))
    result = FileResult(str(path), policies)
    try:
        policy: Policy = load_policy(policies)
    except PolicyError as exc:
        result.error = "; ".join(str(issue) for issue in exc.issues)
        return result
    for case in cases:
        try:
            explanation = await evaluate(policy, case.action, case.session, case.deep)
        except ValueError as exc:
            result.cases.append(CaseResult(case.file, case.line, case.name, False, [str(exc)]))
            continue
        result.cases.append(compare(case, explanation))
    return result


def run(paths: Sequence[str], policy_override: Sequence[str] = ()) -> list[FileResult]:
    files = discover(paths)

    async def all_files() -> list[FileResult]:
        return [await run_file(path, policy_override) for path in files]

    return asyncio.run(all_files())


def report(results: Sequence[FileResult], *, as_json: bool) -> tuple[str, int]:
    """The printed report and the exit status (1 when anything failed or could not run)."""
    cases = [c for r in results for c in r.cases]
    failed = [c for c in cases if not c.passed]
    errors = [r.error for r in results if r.error]
    status = 1 if failed or errors or not results else 0
    if as_json:
        body = {
            "passed": len(cases) - len(failed),
            "failed": len(failed),
            "errors": errors,
            "files": [asdict(r) for r in results],
        }
        return json.dumps(body, indent=2), status
    lines = [f"ERROR {error}" for error in errors]
    lines += [f"FAIL {c.line_text()}" for c in failed]
    if not results:
        lines.append("no policy test files found (*_test.yaml)")
    summary = f"{len(cases) - len(failed)} passed, {len(failed)} failed"
    if errors:
        summary += f", {len(errors)} file(s) could not run"
    lines.append(f"{summary} ({len(results)} file(s))")
    return "\n".join(lines), status
