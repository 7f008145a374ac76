"""Argument-aware effect analysis: what a tool call's arguments say about the harm it can do.

A tool's name is only half the story: ``run_query`` is a read until its ``sql`` says
``DROP TABLE``. Detectors look at the arguments of every tool call in Fast Guard and report
findings that can raise the call's effect; policy constraints and path roots report
violations that deny it. Everything here is pure and bounded, because it runs on every
call and the arguments are written by the agent, possibly a hostile one:

* the walk is iterative (any depth) and visits at most ``MAX_NODES`` values; a detector
  analyses at most ``MAX_SCAN`` characters of one string, ``MAX_STRINGS`` words of one
  argv list and ``MAX_TOTAL_SCAN`` characters per call;
* no bound ends a check silently: arguments that exceed one are a destructive finding
  ("too large to analyse"), so what lies past a bound is never taken for a read;
* C-speed pre-checks (substring and set tests) over the whole string skip strings that
  cannot match, so long harmless text costs little and is no finding;
* the scanners are regexes with bounded look-ahead and small lexers, not shlex: shlex
  costs ~1.6 us per character in pure Python, so a 4 MiB body would take seconds. The
  shell tokenizer follows POSIX quoting (tests hold it to ``shlex.split``).

Detectors err towards a higher effect: a false positive costs a review, a false negative
lets a ``DROP`` through as a read. Findings and violations name the argument and the
pattern, never the value, since values may be secrets.
"""

from __future__ import annotations

import codecs
import fnmatch
import functools
import json
import math
import posixpath
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

from proxy.core.action import Action, Effect, Finding
from proxy.core.effects import tokenize
from proxy.core.policy import Constraint, Policy
from proxy.core.shell_meaning import MAX_PARSE as SHELL_PARSE
from proxy.core.shell_meaning import argv_meaning, shell_meaning
from proxy.core.sql_meaning import MAX_PARSE, sql_meaning

__all__ = [
    "MAX_NODES",
    "MAX_SCAN",
    "MAX_STRINGS",
    "MAX_TOTAL_SCAN",
    "ArgumentAnalyser",
    "ArgumentReport",
    "Detector",
    "HttpMethodDetector",
    "Leaf",
    "ShellDetector",
    "SqlDetector",
    "check_constraints",
    "check_paths",
    "default_detectors",
    "iter_strings",
    "iter_values",
    "shell_effects",
    "sql_effects",
    "walk_complete",
]

MAX_NODES: Final = 16_384
"""Values (of any type) visited per walk; more is a destructive finding."""
MAX_STRINGS: Final = 4096
"""Words of one argv list a detector reads; a longer list is a destructive finding."""
MAX_SCAN: Final = 1024 * 1024
"""Characters of one string a detector analyses (a pass costs ~35 ns a character); a longer
string that passes the detector's pre-check is a destructive finding."""
MAX_TOTAL_SCAN: Final = 1024 * 1024
"""Characters one detector analyses per call, over all strings that pass its cheap pre-check.
Beyond it the detector reports a destructive finding instead of reading on, so padding the
arguments can neither slow Fast Guard down nor push a payload past the analysis."""
MAX_FINDINGS: Final = 64
"""Findings (and violations) kept per call; Spot scores each one, the wire caps lists at 256.
The highest effect among those left out is kept as one more finding."""
_MAX_LABEL: Final = 80
_MAX_NESTED: Final = 3
"""How deep detectors follow code inside code (``bash -c``, ``$(...)``, ``EXECUTE '...'``);
code nested deeper is a destructive finding."""
_MAX_LITERALS: Final = 32
"""String literals of one dynamic SQL statement read as SQL; more is a destructive finding."""


# --------------------------------------------------------------------------- the report


class Detector(Protocol):
    """A pluggable argument inspector. ``inspect`` must be pure and fast; it runs in Fast Guard.

    A detector may also have ``idle(tool_words, keys) -> bool``: True when ``inspect`` finds nothing
    in arguments whose values are all scalars under exactly these keys, whatever the values are.
    The analyser then skips it for such calls (remembering the answer per tool name and keys).
    """

    name: str

    def inspect(self, tool_name: str, tool_words: tuple[str, ...], arguments: Mapping[str, Any]) -> Iterable[Finding]:
        """Findings about ``arguments`` of a call to ``tool_name`` (whose words are ``tool_words``)."""
        ...


@dataclass(frozen=True, slots=True)
class ArgumentReport:
    """What the analysis found: findings may raise the effect, violations deny the call."""

    findings: tuple[Finding, ...] = ()
    violations: tuple[str, ...] = ()

    @property
    def effect(self) -> Effect | None:
        """The highest effect among the findings, or None when nothing was found."""
        return max((f.effect for f in self.findings), default=None)


_EMPTY: Final = ArgumentReport()


# --------------------------------------------------------------------------- walking the arguments


class Leaf:
    """One value inside the arguments: where it is (for messages), its nearest key, and itself.

    The path is built only when asked for: most values never appear in a message."""

    __slots__ = ("_parent", "_step", "key", "value")

    def __init__(self, parent: str, step: str | int, key: str, value: Any) -> None:
        self._parent, self._step, self.key, self.value = parent, step, key, value

    @property
    def path(self) -> str:
        """``sql``, ``options.path``, ``files[2]``: names the argument, never its value."""
        return _label(self._parent, self._step)

    def __repr__(self) -> str:
        return f"Leaf({self.path!r}, {self.key!r})"


def _label(path: str, key: str | int) -> str:
    if isinstance(key, int):
        step = f"[{key}]"
    elif key.isascii() and key.replace("-", "_").isidentifier():
        step = f".{key}" if path else key
    else:
        step = f"[{json.dumps(key[:_MAX_LABEL])}]"
    joined = path + step
    return joined if len(joined) <= _MAX_LABEL else joined[: _MAX_LABEL - 3] + "..."


_SCALARS: Final = (str, int, float, bool, type(None))


def _children(value: Any) -> Iterator[tuple[Any, Any]] | None:
    if type(value) in _SCALARS:
        return None
    if isinstance(value, Mapping):
        return iter(value.items())
    if isinstance(value, list | tuple):
        return enumerate(value)
    return None


def iter_values(arguments: Mapping[str, Any]) -> Iterator[Leaf]:
    """Every value under ``arguments``, depth first in order, at any depth, up to ``MAX_NODES``
    values (:func:`walk_complete` says whether that bound cut the walk short).

    Iterative, so no nesting depth can exhaust the stack."""
    if not isinstance(arguments, Mapping):
        return
    left = MAX_NODES
    stack: list[tuple[str, str, Iterator[tuple[Any, Any]], bool]] = [("", "", iter(arguments.items()), True)]
    while stack:
        path, key, children, mapping = stack[-1]
        for child_key, child in children:
            if left <= 0:
                return
            left -= 1
            if mapping:
                if type(child_key) is not str:
                    child_key = str(child_key)
                nearest = child_key
            else:
                nearest = key
            yield Leaf(path, child_key, nearest, child)
            grandchildren = _children(child)
            if grandchildren is not None:
                stack.append((_label(path, child_key), nearest, grandchildren, isinstance(child, Mapping)))
                break
        else:
            stack.pop()


def walk_complete(arguments: Mapping[str, Any]) -> bool:
    """Whether :func:`iter_values` visits every value (there are at most ``MAX_NODES``)."""
    left = MAX_NODES
    stack: list[Any] = [arguments]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        left -= len(children)
        if left < 0:
            return False
        stack.extend(child for child in children if type(child) not in _SCALARS)
    return True


def iter_strings(arguments: Mapping[str, Any]) -> Iterator[Leaf]:
    """The string values under ``arguments``, whole (a consumer that reads less must say so)."""
    for leaf in iter_values(arguments):
        if isinstance(leaf.value, str):
            yield leaf


@functools.lru_cache(maxsize=1024)
def _key_words(key: str) -> frozenset[str]:
    return frozenset(tokenize(key[:_MAX_LABEL]))


def _flat_keys(arguments: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The keys of arguments that are a few scalars under string keys (most calls), else None."""
    if len(arguments) > _FLAT_MAX:
        return None
    for key, value in arguments.items():
        if type(key) is not str or type(value) not in _SCALARS:
            return None
    return tuple(arguments)


_FLAT_MAX: Final = 32
"""Arguments with more keys are always walked by every detector."""


class _Budget:
    """A detector's per-call allowance of analysed characters (``MAX_TOTAL_SCAN``)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_TOTAL_SCAN

    def spend(self, text: str | Sequence[str]) -> bool:
        """Whether the budget covers ``text`` (which is then charged); one full string always fits."""
        size = min(_size(text), MAX_SCAN)
        if size > self.left:
            self.left = 0
            return False
        self.left -= size
        return True


def _size(text: str | Sequence[str]) -> int:
    return len(text) if isinstance(text, str) else sum(len(s) for s in text if isinstance(s, str)) + len(text)


_TOO_LARGE: Final = "arguments too large to analyse fully; treated as destructive"


def _too_large(detector: str) -> Finding:
    return Finding(detector, Effect.DESTRUCTIVE, _TOO_LARGE)


# --------------------------------------------------------------------------- SQL

_D, _M, _A = Effect.DESTRUCTIVE, Effect.MUTATING, Effect.ADMIN

_SQL_TOOL_WORDS: Final = frozenset(
    {"query", "sql", "execute", "exec", "db", "database", "postgres", "postgresql", "pg", "psql", "mysql", "sqlite"}
)
_SQL_WEAK_TOOL_WORDS: Final = frozenset({"query", "execute", "exec"})
"""Database words that other tools use too (``query_docs``, ``exec`` for a shell): on such a tool
a query/command argument is read as SQL only when it starts like a statement."""
_SQL_DATABASE_WORDS: Final = _SQL_TOOL_WORDS - _SQL_WEAK_TOOL_WORDS
_SQL_START: Final = re.compile(
    r"\s*(?:[(]|/\*|--|#|(?:select|with|insert|update|delete|merge|upsert|replace|create|drop|alter|truncate"
    r"|grant|revoke|explain|analy[sz]e|show|describe|desc|call|do|exec|execute|copy|attach|detach|pragma|values"
    r"|table|set|reset|use|begin|start|commit|rollback|savepoint|release|lock|vacuum|load|prepare|declare|refresh"
    r"|reindex|cluster|comment|listen|notify|discard|kill|handler|optimize|repair|checksum|flush|purge|install"
    r"|uninstall|import|export|unload|put|get|remove|list|undrop|rename|summarize|pivot|unpivot|from)\b)",
    re.IGNORECASE,
)
_SQL_STRICT_KEYS: Final = frozenset({"sql", "stmt", "statement", "statements"})
_SQL_SOFT_KEYS: Final = frozenset({"query", "queries", "command", "cmd", "q"})
"""Keys that hold SQL on a database tool but prose elsewhere (a search tool's ``query``)."""

_SQL_HINTS: Final = (
    "delete drop truncate alter update insert merge replace upsert create copy load rename grant revoke role"
    " authorization outfile dumpfile exec call prepare"
).split()
_COMMENT: Final = "\x00"
"""Stands in for a comment in lexed SQL, so both readings (token gap or nothing) can be tried."""

# Statement shapes found anywhere: they catch stacked statements, CTEs, EXPLAIN ANALYZE and
# T-SQL batches that need no ';'. Each starts with a literal (so the regex engine skips to
# it) and has bounded look-ahead (so no input is quadratic); the word boundary before it is
# checked in _has_shape.
_OBJECTS: Final = (
    r"table|database|schema|view|index|sequence|function|procedure|trigger|type|extension|domain|policy|rule|event"
    r"|collection|keyspace|materialized|temporary|temp|unique|column|constraint|owned|aggregate|operator|server"
    r"|tablespace|publication|subscription|statistics|synonym|package"
)
_PRINCIPALS: Final = r"(?:or replace )?(?:user|role|login|group)\b"
_PRIVILEGES: Final = (
    r"(?:all|select|insert|update|delete|usage|execute|create|connect|temp\w*|references|trigger|truncate|alter|drop"
    r"|index|super|file|process|reload|shutdown|proxy|replication|maintain|[\w.]{1,64} (?:to|on|from))\b"
)
_SQL_SHAPES: Final[tuple[tuple[re.Pattern[str], Effect, str], ...]] = tuple(
    (re.compile(pattern), effect, label)
    for pattern, effect, label in (
        (rf"create {_PRINCIPALS}", _A, "CREATE USER/ROLE"),
        (rf"alter {_PRINCIPALS}", _A, "ALTER USER/ROLE"),
        (rf"drop {_PRINCIPALS}", _A, "DROP USER/ROLE"),
        (r"alter system\b", _A, "ALTER SYSTEM"),
        (rf"grant {_PRIVILEGES}", _A, "GRANT"),
        (rf"revoke (?:grant option for |admin option for )?{_PRIVILEGES}", _A, "REVOKE"),
        (r"set (?:local |session )?(?:role|session authorization)\b", _A, "SET ROLE"),
        (rf"drop (?:{_OBJECTS})\b", _D, "DROP"),
        (r"truncate table\b", _D, "TRUNCATE"),
        (r"delete (?:[\w.]{1,128} )?from\b", _D, "DELETE"),
        (r"then delete\b", _D, "MERGE ... DELETE"),
        (rf"alter (?:{_OBJECTS})\b", _D, "ALTER"),
        (r"update [\w.]{1,128}(?: (?:as )?\w{1,64})? set\b", _M, "UPDATE"),
        (r"insert (?:ignore |or \w{1,16} )?into\b", _M, "INSERT"),
        (r"replace (?:ignore )?into\b", _M, "REPLACE"),
        (r"upsert into\b", _M, "UPSERT"),
        (r"merge into\b", _M, "MERGE"),
        (rf"create (?:or replace )?(?:(?:global|local|unlogged|external|virtual) )?(?:{_OBJECTS})\b", _M, "CREATE"),
        (r"into (?:outfile|dumpfile)\b", _M, "SELECT INTO OUTFILE"),
        (r"copy\b[^;]{0,4096}?\b(?:to|from) program\b", _A, "COPY ... PROGRAM"),
    )
)
# The first verb of each statement, for strings known to be SQL ("TRUNCATE x", "CALL p()").
_SQL_VERBS: Final[dict[str, Effect]] = {
    "delete": _D,
    "drop": _D,
    "truncate": _D,
    "alter": _D,  # schema changes lose data (DROP COLUMN, type changes) and are hard to undo
    "update": _M,
    "insert": _M,
    "merge": _M,
    "replace": _M,
    "upsert": _M,
    "create": _M,
    "copy": _M,
    "load": _M,
    "rename": _M,
    "call": _M,  # procedures, DO blocks and dynamic SQL run code we cannot see: at least mutating
    "do": _M,
    "exec": _M,
    "execute": _M,
    "prepare": _M,
    "grant": _A,
    "revoke": _A,
}
_SQL_LEADING: Final = re.compile(
    r"(?:^|;)[\s(]*"
    r"(?:explain\b(?:\s*\([^)]{0,200}\)|\s+(?:analy[sz]e|verbose|query plan|extended|format\s*=\s*\w+))*\s*)?"
    r"(" + "|".join(_SQL_VERBS) + r")(?=[\s(;]|$)"
)
_SQL_DYNAMIC: Final = re.compile(r"exec|\bdo\b|\bcall\b|\bprepare\b")
_SQL_DYNAMIC_VERBS: Final = frozenset({"exec", "execute", "do", "call", "prepare"})

# Lexers. Standard/PostgreSQL: -- and nested /* */ comments, '' strings (E'' with
# backslashes), "" identifiers, $tag$ strings. MySQL: '--' needs a space, # comments, flat
# /* */ with /*! executable */ content, backslash escapes in '' and "" strings, `` identifiers.
_LEX_STANDARD: Final = re.compile(r"--|/\*|['\"]|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_LEX_MYSQL: Final = re.compile(r"--(?=[\s\x00-\x1f]|$)|#|/\*|\*/|['\"`]")
_NESTED: Final = re.compile(r"/\*|\*/")
_EXEC_COMMENT: Final = re.compile(r"/\*M?!\d*")
_BODY_PLAIN: Final = {q: re.compile(f"[^{q}]*(?:{q}{q}[^{q}]*)*") for q in "'\"`"}
_BODY_ESCAPED: Final = {q: re.compile(rf"[^{q}\\]*(?:(?:\\.|{q}{q})[^{q}\\]*)*", re.S) for q in "'\""}
_BARE_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_CHAR: Final = re.compile(r"[\w$]")
_WHITESPACE: Final = re.compile(r"\s+")


def _nested_comment_end(text: str, start: int) -> int:
    if text.find("*/", start) < 0:
        return len(text)  # unterminated: a comment to the end, without walking every "/*"
    depth = 1
    for mark in _NESTED.finditer(text, start):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    return len(text)


def _lex_sql(text: str, mysql: bool) -> tuple[str, list[str]]:
    """Code with literals blanked and comments marked, plus the literals' contents."""
    special = _LEX_MYSQL if mysql else _LEX_STANDARD
    out: list[str] = []
    literals: list[str] = []
    pos, size, executable = 0, len(text), False
    while pos < size:
        match = special.search(text, pos)
        if match is None:
            out.append(text[pos:])
            break
        out.append(text[pos : match.start()])
        token, pos = match.group(), match.end()
        if token in ("--", "#"):
            end = text.find("\n", pos)
            pos = size if end < 0 else end
            out.append(_COMMENT)
        elif token == "/*":
            if mysql:
                executable_mark = _EXEC_COMMENT.match(text, match.start())
                if executable_mark is not None:  # MySQL runs what is inside /*! ... */
                    pos, executable = executable_mark.end(), True
                    out.append(" ")
                    continue
                end = text.find("*/", pos)
                pos = size if end < 0 else end + 2
            else:
                pos = _nested_comment_end(text, pos)
            out.append(_COMMENT)
        elif token == "*/":
            out.append(" " if executable else "*/")
            executable = False
        elif token.startswith("$"):
            if match.start() > 0 and _WORD_CHAR.match(text, match.start() - 1):
                out.append(token)  # part of an identifier such as a$b$
                continue
            end = text.find(token, pos)
            literals.append(text[pos : size if end < 0 else end])
            pos = size if end < 0 else end + len(token)
            out.append(" '' ")
        else:
            at = match.start()
            prefix = text[at - 1] if at >= 1 else ""
            e_string = token == "'" and prefix in ("e", "E") and (at == 1 or not _WORD_CHAR.match(text[at - 2]))
            escaped = (mysql and token != "`") or (not mysql and e_string)
            body = (_BODY_ESCAPED if escaped else _BODY_PLAIN)[token].match(text, pos)
            assert body is not None  # both patterns match the empty string
            content, pos = body.group(), min(body.end() + 1, size)
            if token == "'" or (mysql and token == '"'):
                literals.append(content.replace(token * 2, token))  # what the server reads
                out.append(" '' ")
            else:  # a quoted identifier: "DROP" reads as drop, anything else as a name
                out.append(f" {content} " if _BARE_WORD.fullmatch(content) else " _q_ ")
    return "".join(out), literals


def _has_shape(pattern: re.Pattern[str], code: str) -> bool:
    """Whether ``pattern`` occurs in ``code`` at the start of a word."""
    for match in pattern.finditer(code):
        at = match.start()
        if at == 0 or not (code[at - 1].isalnum() or code[at - 1] == "_"):
            return True
    return False


def _classify_sql(code: str, strict: bool) -> set[tuple[Effect, str]]:
    found = {(effect, label) for pattern, effect, label in _SQL_SHAPES if _has_shape(pattern, code)}
    if strict:
        for match in _SQL_LEADING.finditer(code):
            verb = match.group(1)
            found.add((_SQL_VERBS[verb], verb.upper()))
    return found


_SQL_TOO_LONG: Final = "text too long to analyse"
_SQL_TOO_DEEP: Final = "dynamic SQL nested too deep to analyse"
_SQL_TOO_MANY: Final = "dynamic SQL with too many literals to analyse"
_SQL_BOUNDS: Final = frozenset({_SQL_TOO_LONG, _SQL_TOO_DEEP, _SQL_TOO_MANY})
_SQL_UNPARSED: Final = "text past the per-call parse budget, so not a proven read"
MAX_TOTAL_PARSE: Final = 4 * MAX_PARSE
"""Characters of strict SQL parsed per call; statements past it are not proven reads."""


def _sql_candidate(text: str) -> bool:
    """Cheap pre-check: text without a comment or a write verb cannot produce a SQL finding."""
    if "/*" in text:
        return True
    lowered = text.lower()
    # Substring tests are C-speed; DO needs a body, which is a $$ or '' literal.
    return any(hint in lowered for hint in _SQL_HINTS) or ("do" in lowered and ("$" in text or "'" in text))


def sql_effects(
    text: str, strict: bool = True, _depth: int = 0, *, parse: bool = True, _prose: bool = False
) -> set[tuple[Effect, str]]:
    """(effect, statement kind) pairs that SQL ``text`` implies; empty for reads.

    ``strict`` says the text is known to be SQL: the parser must then prove it a read
    (:func:`~proxy.core.sql_meaning.sql_meaning`; without ``parse`` it is not one), and each
    statement's leading verb counts; otherwise only unmistakable statement shapes
    (``DELETE FROM``, ``DROP TABLE``) do. The shapes try both dialect families
    (standard/PostgreSQL and MySQL quoting and comments), and a comment both as a gap and as
    nothing (``DR/**/OP``); the highest reading wins.
    """
    found: set[tuple[Effect, str]] = set()
    if strict:
        if not _prose:  # dynamic SQL found in prose is read by its verbs, not required to be a proven read
            found.update(sql_meaning(text) if parse else ((_M, _SQL_UNPARSED),))
    if not _sql_candidate(text):
        return found
    if len(text) > MAX_SCAN:
        found.add((_D, _SQL_TOO_LONG))
        text = text[:MAX_SCAN]
    text = text.replace(_COMMENT, " ")
    seen: set[str] = set()
    nested: set[tuple[str, bool]] = set()
    for mysql in (False, True):
        code, literals = _lex_sql(text, mysql)
        normal = ""
        for gap in ("", " "):
            normal = _WHITESPACE.sub(" ", code.replace(_COMMENT, gap)).lower()
            if normal not in seen:  # no comments, or both dialects read it alike: nothing new to learn
                seen.add(normal)
                found |= _classify_sql(normal, strict)
        # Dynamic SQL (EXECUTE 'DROP ...', DO $$ ... $$, sp_executesql N'...') runs its literals:
        # read them as SQL when a statement starts with such a verb, else by shape only.
        if literals and _SQL_DYNAMIC.search(normal):
            if _depth >= _MAX_NESTED:
                found.add((_D, _SQL_TOO_DEEP))
                continue
            if len(literals) > _MAX_LITERALS:
                found.add((_D, _SQL_TOO_MANY))
            verbs = {m.group(1) for m in _SQL_LEADING.finditer(normal)}
            nested_strict = bool(verbs & _SQL_DYNAMIC_VERBS) or "executesql" in normal
            nested.update((literal, nested_strict) for literal in literals[:_MAX_LITERALS])
    for literal, nested_strict in nested:
        found |= sql_effects(literal, nested_strict, _depth + 1, parse=parse, _prose=_prose or not strict)
    return found


class SqlDetector:
    """SQL in arguments: destructive (DELETE, DROP, TRUNCATE, ALTER), mutating (UPDATE,
    INSERT, MERGE, REPLACE, CREATE, ...) and admin (GRANT, REVOKE, users and roles) statements.

    Strict (the parser must prove a read, leading verbs count) for keys named
    sql/statement/stmt, and for query/command/q on database tools (on a tool that is only
    called a query or exec tool, when the text starts like a statement); shapes only for any
    other string of a database tool and for query/command keys of other tools (where
    ``query`` is usually prose).
    """

    name = "sql"

    def idle(self, tool_words: tuple[str, ...], keys: tuple[str, ...]) -> bool:
        """Only strings of a database tool, or under sql/statement/query/command keys, are read."""
        if not _SQL_TOOL_WORDS.isdisjoint(tool_words):
            return False
        for key in keys:
            words = _key_words(key)
            if not (_SQL_STRICT_KEYS.isdisjoint(words) and _SQL_SOFT_KEYS.isdisjoint(words)):
                return False
        return True

    def inspect(self, tool_name: str, tool_words: tuple[str, ...], arguments: Mapping[str, Any]) -> Iterable[Finding]:
        sql_tool = not _SQL_TOOL_WORDS.isdisjoint(tool_words)
        database_tool = not _SQL_DATABASE_WORDS.isdisjoint(tool_words)
        budget = _Budget()
        parse_left = MAX_TOTAL_PARSE
        for leaf in iter_strings(arguments):
            value = leaf.value
            words = _key_words(leaf.key)
            soft = not _SQL_SOFT_KEYS.isdisjoint(words)
            strict = not _SQL_STRICT_KEYS.isdisjoint(words) or (
                soft and (database_tool or (sql_tool and _SQL_START.match(value) is not None))
            )
            if not (strict or ((sql_tool or soft) and _sql_candidate(value))):
                continue
            if not budget.spend(value):
                yield _too_large(self.name)
                return
            # A text too long to parse at all is reported as such, without using up the budget.
            parse = strict and (len(value) > MAX_PARSE or len(value) <= parse_left)
            if parse and len(value) <= MAX_PARSE:
                parse_left -= len(value)
            found = sql_effects(value, strict, parse=parse)
            for effect, kind in sorted(found, key=lambda f: (-f[0], f[1])):
                yield _sql_finding(self.name, leaf.path, effect, kind)


def _sql_finding(detector: str, path: str, effect: Effect, kind: str) -> Finding:
    if kind in _SQL_BOUNDS:  # a bound of the analysis, not a statement kind
        return Finding(detector, effect, f"argument {path!r}: SQL {kind}; treated as destructive")
    if kind.isupper():  # a statement kind: DROP, SELECT INTO, COPY ... PROGRAM
        return Finding(detector, effect, f"argument {path!r}: SQL {kind} statement")
    return Finding(detector, effect, f"argument {path!r}: SQL {kind}")  # a call, or why it is not a read


# --------------------------------------------------------------------------- shell

_SHELL_TOOL_WORDS: Final = frozenset(
    {"shell", "exec", "execute", "run", "command", "cmd", "bash", "sh", "zsh", "terminal", "console", "ssh", "script"}
)
_SHELL_KEYS: Final = frozenset({"cmd", "command", "commands", "script", "args", "argv", "cmdline", "commandline"})
_ARGV_KEYS: Final = ("args", "argv", "arguments")

_DOWNLOADERS: Final = frozenset({"curl", "wget", "fetch", "aria2c", "http", "https", "lwp-request", "lwp-download"})
_SHELLS: Final = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "csh", "tcsh"})
_SCRIPT_LANGUAGES: Final = frozenset({"python", "python3", "perl", "ruby", "node", "php"})
_KEYWORDS: Final = frozenset({"{", "}", "!", "if", "then", "else", "elif", "do", "while", "until"})
_PRIVILEGE: Final = frozenset({"sudo", "su", "doas", "pkexec", "run0"})
_ACCOUNT_TOOLS: Final = frozenset(
    {"passwd", "chpasswd", "usermod", "useradd", "userdel", "adduser", "deluser", "groupadd", "groupmod", "gpasswd"}
    | {"visudo", "chage"}
)
_WRAPPERS: Final[dict[str, frozenset[str]]] = {
    # wrapper -> its options that take a separate value
    "env": frozenset({"-u", "-C", "-S", "--unset", "--chdir"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "ionice": frozenset({"-c", "-n", "-p"}),
    "nohup": frozenset(),
    "time": frozenset({"-f", "-o"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "exec": frozenset({"-a"}),
    "command": frozenset(),
    "builtin": frozenset(),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "xargs": frozenset({"-I", "-i", "-n", "-P", "-d", "-L", "-l", "-s", "-a", "-E", "-e", "--delimiter"}),
    "watch": frozenset({"-n", "-d", "--interval"}),
    "chroot": frozenset(),
    "strace": frozenset({"-e", "-o", "-p", "-s"}),
    "unbuffer": frozenset(),
    "setsid": frozenset(),
    "busybox": frozenset(),
    "flock": frozenset({"-w", "-E"}),
}
_PRIVILEGE_OPTIONS: Final = frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T", "-R", "--user"})
_SSH_OPTIONS: Final = frozenset("-b -c -D -E -e -F -I -i -J -L -l -m -O -o -p -Q -R -S -W -w -B".split())
_DANGEROUS_NAMES: Final = (
    frozenset({"rm", "rmdir", "unlink", "shred", "wipefs", "mkfs", "mke2fs", "dd", "find", "chmod", "chown", "chgrp"})
    | _PRIVILEGE
    | _ACCOUNT_TOOLS
    | _SHELLS
    | _SCRIPT_LANGUAGES
    | {"eval", "source", ".", "ssh"}
)
_SYSTEM_DIRS: Final = frozenset(
    {"/", "/*", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/var", "/boot", "/root", "/home", "/opt", "/srv"}
)
_BLOCK_DEVICE: Final = re.compile(r"/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk|mapper/)")

_HINT_NAMES: Final = _DANGEROUS_NAMES | _DOWNLOADERS | _SCRIPT_LANGUAGES | frozenset(_WRAPPERS)
_HINT_MARKS: Final = ("$'", "$(", "<(", ">(", "`", "{", "*", "?", "[", "/dev/")
_HINT_TABLE: Final = str.maketrans(
    {
        **{c: " " for c in string.punctuation + string.whitespace if c not in "._-'\"\\"},
        "'": None,
        '"': None,
        "\\": None,
    }
)
"""Quotes and backslashes vanish (as the shell removes them), other punctuation splits words."""
_IFS: Final = re.compile(r"\$\{IFS\}|\$IFS\b")
_SUBST_OPEN: Final = re.compile(r"\$\(|[<>]\(|`")
_PARENS: Final = re.compile(r"[()]")
_DOWNLOAD_WORD: Final = re.compile(r"(?<![\w.-])(?:curl|wget|fetch|aria2c|https?|lwp-\w+)(?![\w-])")
_SUBST_WORD, _DOWNLOAD_SUBST = "__wicket_subst__", "__wicket_download__"
_FORK_BOMB: Final = re.compile(r"([\w:.-]{1,64})\s*\(\s*\)\s*\{[^}]{0,64}?\1\s*\|\s*\1\s*&")
_SHELL_TOKEN: Final = re.compile(
    r"[ \t\r\f\v]*"
    r"(?:(&&|\|\||;;|\|&|&>>?|[<>]{1,2}&?|<<<|[;&|\n()])"  # an operator
    r"""|((?:[^\s'"\\;&|()<>]+|\$'[^'\\]*(?:\\.[^'\\]*)*'|'[^']*'|"[^"\\]*(?:\\.[^"\\]*)*"|\\.)+)"""  # a word
    r"|.)",  # a lone quote or a trailing backslash: skipped
    re.S,
)
_QUOTING: Final = re.compile(r"['\"\\]")
_WORD_PART: Final = re.compile(
    r"""\\\n|\$'([^'\\]*(?:\\.[^'\\]*)*)'|'([^']*)'|"([^"\\]*(?:\\.[^"\\]*)*)"|\\(.)""",
    re.S,
)
_DQ_ESCAPE: Final = re.compile(r"\\([$`\"\\\n])")
_SEPARATORS: Final = frozenset({";", "&&", "||", "|", "|&", "&", "\n", "(", ")", ";;"})
_ASSIGNMENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_BRACES: Final = re.compile(r"\{([^{}\s]*,[^{}\s]*)\}")
_GLOB_CHARS: Final = frozenset("*?[")
_PREFIXES: Final = _PRIVILEGE | frozenset(_WRAPPERS)
_CODE_STRING: Final = re.compile(r"'([^'\\]*(?:\\.[^'\\]*)*)'" r'|"([^"\\]*(?:\\.[^"\\]*)*)"', re.S)


def _ansi_c(body: str) -> str:
    """``$'\\x72m'`` -> ``rm``: bash decodes C escapes inside ``$'...'``."""
    try:
        return codecs.decode(body.encode("latin-1", "backslashreplace"), "unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return body


def _unquote_part(match: re.Match[str]) -> str:
    if match.group(0) == "\\\n":
        return ""  # line continuation
    ansi, single, double, escaped = match.groups()
    if ansi is not None:
        return _ansi_c(ansi)
    if single is not None:
        return single
    if double is not None:
        return _DQ_ESCAPE.sub(r"\1", double)
    return escaped or ""


def _shell_tokens(text: str) -> list[tuple[bool, str]]:
    """POSIX-shell words and operators as (is_operator, text), quotes removed. An unbalanced
    quote is skipped (the shell would refuse the line; reading on is the safe side)."""
    unquote, quoting = _WORD_PART.sub, _QUOTING.search
    return [
        (True, op) if op else (False, unquote(_unquote_part, word) if quoting(word) else word)
        for op, word in _SHELL_TOKEN.findall(text)
        if op or word
    ]


def _substitutions(text: str) -> tuple[str, list[str]]:
    """Replace ``$(...)``, ``<(...)``, ``>(...)`` and backticks with placeholder words,
    returning their contents too: the shell runs them even inside double quotes."""
    out: list[str] = []
    inner: list[str] = []
    pos = 0
    while (opener := _SUBST_OPEN.search(text, pos)) is not None:
        out.append(text[pos : opener.start()])
        start = opener.end()
        if opener.group() == "`":
            end = text.find("`", start)
            end = len(text) if end < 0 else end
            content, pos = text[start:end], end + 1
        else:
            level, end = 1, len(text)
            closers = text.count(")", start)
            for paren in _PARENS.finditer(text, start) if closers else ():
                level += 1 if paren.group() == "(" else -1
                if level == 0:
                    end = paren.start()
                    break
            content, pos = text[start:end], end + 1
        inner.append(content)
        word = _DOWNLOAD_SUBST if _DOWNLOAD_WORD.search(content.lower()) else _SUBST_WORD
        out.append(f" {word} ")
    out.append(text[pos:])
    return "".join(out), inner


def _name(word: str) -> str:
    """The program a command word runs: ``/usr/bin/RM`` -> ``rm``, ``\\rm`` -> ``rm``."""
    return word.rsplit("/", 1)[-1].lstrip("\\").lower()


def _flags(args: Sequence[str]) -> tuple[set[str], set[str]]:
    """Short option letters and long options among ``args`` (``-rf`` -> r, f)."""
    short: set[str] = set()
    long: set[str] = set()
    for arg in args:
        if arg.startswith("--"):
            long.add(arg.split("=", 1)[0])
        elif arg.startswith("-") and len(arg) > 1:
            short.update(arg[1:])
    return short, long


def _operands(args: Sequence[str]) -> list[str]:
    return [a for a in args if not a.startswith("-") or a == "-"]


_SHELL_UNPARSED: Final = "command past the per-call parse budget, so not a proven read"
MAX_TOTAL_SHELL_PARSE: Final = 4 * SHELL_PARSE
"""Characters of shell command lines parsed per call; lines past it are not proven reads."""
_NESTED_TOO_DEEP: Final = (_D, "commands nested too deep to analyse")
_COMMAND_TOO_LONG: Final = (_D, "command too long to analyse")


class _ShellScan:
    """One scan of a command line; collects (effect, pattern) pairs.

    Code inside code (``$(...)``, ``bash -c``, ``eval``, ``ssh host cmd``) is scanned too,
    each distinct text once and at most ``_MAX_NESTED`` levels deep, so the work stays a
    small multiple of the input. The budget is a backstop no honest command reaches; a
    command that exhausts it is reported rather than waved through.
    """

    def __init__(self, budget: int) -> None:
        self.found: set[tuple[Effect, str]] = set()
        self._budget = budget
        self._seen: set[str] = set()

    def text(self, text: str, depth: int = 0) -> None:
        text = _IFS.sub(" ", text[:MAX_SCAN])
        if text in self._seen:
            return
        self._seen.add(text)
        self._budget -= len(text) + 1
        if self._budget < 0:
            self.found.add((_D, "command too complex to analyse"))
            return
        if "{" in text and "|" in text and "&" in text and _FORK_BOMB.search(text):
            self.found.add((_D, "fork bomb"))
        if depth < _MAX_NESTED:
            outer, inner = _substitutions(text)
        else:
            outer, inner = text, []
            if _SUBST_OPEN.search(text):
                self.found.add(_NESTED_TOO_DEEP)
        for content in inner:
            self.text(content, depth + 1)
        command: list[str] = []
        downloaded = False  # an earlier stage of this pipeline downloads something
        redirect_next = False
        for is_operator, token in [*_shell_tokens(outer), (True, ";")]:
            if not is_operator:
                if redirect_next and _BLOCK_DEVICE.match(token):
                    self.found.add((_D, "write to a block device"))
                redirect_next = False
                command.append(token)
            elif token not in _SEPARATORS:
                redirect_next = token.startswith(">") or token.endswith(">")
            else:
                if command:
                    name = self.command(command, downloaded, depth)
                    downloaded = token in ("|", "|&") and (downloaded or name in _DOWNLOADERS)
                elif token not in ("|", "|&"):
                    downloaded = False
                command = []

    def nested(self, script: str, depth: int) -> None:
        if depth < _MAX_NESTED:
            self.text(script, depth + 1)
        elif script.strip():
            self.found.add(_NESTED_TOO_DEEP)

    def command(self, words: list[str], downloaded: bool, depth: int) -> str:
        """Analyse one simple command; return the name of the program it runs."""
        index = 0
        first = words[0]
        if first in _KEYWORDS or "=" in first or "{" in first or _name(first) in _PREFIXES:
            index = self._prefixes(words, depth)
        if index >= len(words):
            return ""
        head = words[index]
        if "{" in head and (brace := _BRACES.fullmatch(head)) is not None:  # {rm,-rf,/} expands to rm -rf /
            words = [*words[:index], *brace.group(1).split(","), *words[index + 1 :]]
            head = words[index]
        name = _name(head)
        if _GLOB_CHARS.isdisjoint(name):
            if name in _DANGEROUS_NAMES or name.startswith("mkfs"):
                self.program(name, _Call(words[index + 1 :], downloaded, depth))
        elif any(c.isalnum() for c in name):  # /bin/r? runs rm if that is what the glob finds
            call = _Call(words[index + 1 :], downloaded, depth)
            for candidate in sorted(n for n in _DANGEROUS_NAMES if fnmatch.fnmatchcase(n, name)):
                self.program(candidate, call)
        return name

    def _prefixes(self, words: list[str], depth: int) -> int:
        """Skip assignments, keywords, sudo and wrappers (noting sudo); the index of the program."""
        index = 0
        while index < len(words):
            word = words[index]
            name = _name(word)
            if _ASSIGNMENT.match(word) or word in _KEYWORDS:
                index += 1
            elif name in _PRIVILEGE:
                self.found.add((_A, f"privilege escalation ({name})"))
                if name == "su":  # su [user] [-c script]: the rest are su's own arguments
                    rest = words[index + 1 :]
                    for at, arg in enumerate(rest):
                        if arg in ("-c", "--command") and at + 1 < len(rest):
                            self.nested(rest[at + 1], depth)
                        elif arg.startswith("--command="):
                            self.nested(arg.split("=", 1)[1], depth)
                    return len(words)
                index += 1
                while index < len(words) and words[index].startswith("-"):
                    index += 2 if words[index] in _PRIVILEGE_OPTIONS else 1
            elif name in _WRAPPERS:
                takes_value = _WRAPPERS[name]
                index += 1
                while index < len(words) and (words[index].startswith("-") or _ASSIGNMENT.match(words[index])):
                    index += 2 if words[index] in takes_value else 1
                if name == "timeout" and index < len(words):
                    index += 1  # the duration
            else:
                break
        return index

    def program(self, name: str, call: _Call) -> None:
        outcomes = _OUTCOMES.get(name)
        if outcomes is not None and outcomes <= self.found:
            return  # nothing this program can add (and it runs no nested code): skip the parsing
        args, short, long = call.args, call.short, call.long
        if name == "rm":
            if short & {"r", "R", "f"} or long & {"--recursive", "--force", "--no-preserve-root"}:
                self.found.add((_D, "rm -r/-f (recursive or forced delete)"))
            else:
                self.found.add((_D, "rm (file deletion)"))
        elif name == "rmdir":
            self.found.add((_M, "rmdir (empty directory removal)"))
        elif name in ("unlink", "shred", "wipefs"):
            self.found.add((_D, name))
        elif name.startswith("mkfs") or name == "mke2fs":
            self.found.add((_D, "mkfs (filesystem creation)"))
        elif name == "dd":
            if call.raw_write:
                self.found.add((_D, "dd of= (raw write)"))
        elif name == "find":
            if "-delete" in args:
                self.found.add((_D, "find -delete"))
            for at, arg in enumerate(args):
                if arg in ("-exec", "-execdir", "-ok", "-okdir"):
                    rest = list(_exec_command(args[at + 1 :]))
                    if rest and call.depth < _MAX_NESTED:
                        self.command(rest, False, call.depth + 1)
                    elif rest:
                        self.found.add(_NESTED_TOO_DEEP)
        elif name in ("chmod", "chown", "chgrp"):
            recursive = "R" in short or "--recursive" in long
            if recursive and any(_system_dir(target) for target in call.operands[1:]):
                self.found.add((_D, f"{name} -R on a system directory"))
            if name == "chown" and call.operands and re.match(r"(?:root|0)(?:[:.]|$)", call.operands[0]):
                self.found.add((_A, "chown to root"))
        elif name in _ACCOUNT_TOOLS:
            self.found.add((_A, f"account administration ({name})"))
        elif name in _SHELLS or name in ("eval", "source", "."):
            if call.downloaded:
                self.found.add((_D, "download piped to a shell"))
            if call.download_subst:
                self.found.add((_D, "downloaded script run by a shell"))
            if name == "eval":
                self.nested(" ".join(args), call.depth)
            elif "c" in short and call.operands:
                self.nested(call.operands[0], call.depth)
        elif name in _SCRIPT_LANGUAGES and short & {"c", "e"} and call.operands:
            # python -c "os.system('rm -rf /')": the code's string literals are often commands.
            for literal in _CODE_STRING.finditer(call.operands[0][:MAX_SCAN]):
                self.nested(literal.group(1) or literal.group(2) or "", call.depth)
        elif name == "ssh":
            index = 0
            while index < len(args) and args[index].startswith("-"):
                index += 2 if args[index] in _SSH_OPTIONS else 1
            if index + 1 < len(args):
                self.nested(" ".join(args[index + 1 :]), call.depth)


class _Call:
    """One command's arguments, parsed on demand and once, however many glob candidates look."""

    __slots__ = ("_flags", "_operands", "_scans", "args", "depth", "downloaded")

    def __init__(self, args: list[str], downloaded: bool, depth: int) -> None:
        self.args, self.downloaded, self.depth = args, downloaded, depth
        self._flags: tuple[set[str], set[str]] | None = None
        self._operands: list[str] | None = None
        self._scans: tuple[bool, bool] | None = None

    @property
    def short(self) -> set[str]:
        if self._flags is None:
            self._flags = _flags(self.args)
        return self._flags[0]

    @property
    def long(self) -> set[str]:
        if self._flags is None:
            self._flags = _flags(self.args)
        return self._flags[1]

    @property
    def operands(self) -> list[str]:
        if self._operands is None:
            self._operands = _operands(self.args)
        return self._operands

    @property
    def download_subst(self) -> bool:
        """A downloaded script among the arguments: ``bash <(curl ...)``."""
        return self._scan()[0]

    @property
    def raw_write(self) -> bool:
        """``dd of=``."""
        return self._scan()[1]

    def _scan(self) -> tuple[bool, bool]:
        if self._scans is None:
            self._scans = (any(_DOWNLOAD_SUBST in a for a in self.args), any(a.startswith("of=") for a in self.args))
        return self._scans


_OUTCOMES: Final[dict[str, frozenset[tuple[Effect, str]]]] = {
    "rm": frozenset({(_D, "rm -r/-f (recursive or forced delete)"), (_D, "rm (file deletion)")}),
    "rmdir": frozenset({(_M, "rmdir (empty directory removal)")}),
    "dd": frozenset({(_D, "dd of= (raw write)")}),
    **{name: frozenset({(_D, name)}) for name in ("unlink", "shred", "wipefs")},
    **{name: frozenset({(_A, f"account administration ({name})")}) for name in _ACCOUNT_TOOLS},
}
"""Every finding a program that runs no nested code can produce, so repeats can be skipped."""


def _exec_command(args: Sequence[str]) -> Iterator[str]:
    """The command after ``find -exec``: everything up to its ``;`` or ``+`` terminator."""
    for arg in args:
        if arg in (";", "+"):
            return
        yield arg


def _system_dir(target: str) -> bool:
    """``/``, ``/etc/``, ``//usr``, ``/*``: a recursive chmod/chown there breaks the machine."""
    path = "/" + posixpath.normpath(target).lstrip("/") if target.startswith("/") else ""
    return path in _SYSTEM_DIRS or path.removesuffix("/*") in _SYSTEM_DIRS


def _shell_candidate(text: str) -> bool:
    """Cheap pre-check: text that names no risky program and has no shell trickery cannot
    produce a shell finding (quotes and backslashes are removed first, as the shell would).
    It reads the whole text, so what lies past ``MAX_SCAN`` is never taken for harmless."""
    if any(mark in text for mark in _HINT_MARKS):
        return True
    words = text.replace("\\\n", "").translate(_HINT_TABLE).lower()
    return "mkfs" in words or not _HINT_NAMES.isdisjoint(words.split())


def shell_effects(command: str | Sequence[str]) -> set[tuple[Effect, str]]:
    """(effect, pattern) pairs for a shell command line, or an argv list run without a shell."""
    scan = _ShellScan(budget=2 * min(_size(command), MAX_SCAN) + 4096)  # nested code is re-read once
    if isinstance(command, str):
        if _shell_candidate(command):
            if len(command) > MAX_SCAN:
                scan.found.add(_COMMAND_TOO_LONG)
            scan.text(command[:MAX_SCAN])
    else:  # argv: no shell parses it, so its words are taken as they are
        argv = [a for a in command if isinstance(a, str)]
        if len(argv) > MAX_STRINGS or any(len(a) > MAX_SCAN for a in argv):
            scan.found.add(_COMMAND_TOO_LONG)
            argv = [a[:MAX_SCAN] for a in argv[:MAX_STRINGS]]
        if argv:
            scan.command(argv, False, 0)
    return scan.found


class ShellDetector:
    """Shell commands in arguments: mass deletion, filesystem wiping, raw disk writes,
    download-and-run, fork bombs (destructive); sudo/su, account tools, chown root (admin).

    Looks at every string of a shell-like tool, and at cmd/command/script/args keys of any
    tool; a list under such a key (or ``command`` plus an ``args`` list) is read as argv.

    On a shell tool, the command itself (cmd/command/script/args keys, argv lists) must also be
    proven a read by :mod:`~proxy.core.shell_meaning` (bashlex): an unknown program, a write or
    a line the parser cannot read is mutating.
    """

    name = "shell"

    def idle(self, tool_words: tuple[str, ...], keys: tuple[str, ...]) -> bool:
        """Only a shell-like tool's arguments, or cmd/command/script/args keys, are read (an argv
        needs a list, which scalars are not)."""
        if not _SHELL_TOOL_WORDS.isdisjoint(tool_words):
            return False
        for key in keys:
            if not _SHELL_KEYS.isdisjoint(_key_words(key)):
                return False
        return True

    def inspect(self, tool_name: str, tool_words: tuple[str, ...], arguments: Mapping[str, Any]) -> Iterable[Finding]:
        shell_tool = not _SHELL_TOOL_WORDS.isdisjoint(tool_words)
        budget = _Budget()
        found: dict[tuple[Effect, str], str] = {}
        candidates: list[tuple[str, str | list[str]]] = []
        commands: list[tuple[str, str | list[str]]] = []  # what a shell tool will run: proven a read or not
        argv = _combined_argv(arguments)
        if argv:
            candidates.append(("command", argv))
            if shell_tool:
                commands.append(("command", argv))
        for leaf in iter_values(arguments):
            value = leaf.value
            command_key = not _SHELL_KEYS.isdisjoint(_key_words(leaf.key))
            if not (shell_tool or command_key):
                continue
            runs = shell_tool and command_key
            if isinstance(value, str):
                if _shell_candidate(value):
                    candidates.append((leaf.path, value))
                if runs and not leaf.path.endswith("]") and not (argv and leaf.key in ("command", "cmd")):
                    commands.append((leaf.path, value))
            elif isinstance(value, list):
                if value and all(isinstance(v, str) for v in value):
                    candidates.append((leaf.path, value))
                    if runs and not (argv and leaf.key in _ARGV_KEYS):
                        if leaf.key in ("commands", "scripts"):  # a list of command lines
                            commands.extend((leaf.path, line) for line in value)
                        else:  # argv
                            commands.append((leaf.path, value))
            elif isinstance(value, Mapping) and (argv := _combined_argv(value)):
                candidates.append((leaf.path, argv))
                if shell_tool:
                    commands.append((leaf.path, argv))
        for path, command in candidates:
            if not budget.spend(command):
                found.setdefault((Effect.DESTRUCTIVE, "arguments too large to analyse fully"), "*")
                break
            for item in shell_effects(command):
                found.setdefault(item, path)
        parse_left = MAX_TOTAL_SHELL_PARSE
        for path, command in commands:
            if isinstance(command, str):
                if len(command) <= SHELL_PARSE:
                    if len(command) > parse_left:
                        found.setdefault((Effect.MUTATING, _SHELL_UNPARSED), path)
                        continue
                    parse_left -= len(command)
                meaning = shell_meaning(command)
            else:
                meaning = argv_meaning(command)
            for item in meaning:
                found.setdefault(item, path)
        for (effect, pattern), path in sorted(found.items(), key=lambda i: (-i[0][0], i[0][1])):
            yield _too_large(self.name) if path == "*" else Finding(self.name, effect, f"argument {path!r}: {pattern}")


def _combined_argv(mapping: Mapping[str, Any]) -> list[str] | None:
    """``{"command": "rm", "args": ["-rf", "/"]}`` -> ``["rm", "-rf", "/"]`` (MCP shell tools' shape)."""
    command = mapping.get("command", mapping.get("cmd"))
    args = next((mapping[k] for k in _ARGV_KEYS if isinstance(mapping.get(k), list)), None)
    if not isinstance(command, str) or args is None:
        return None
    return [*_shell_words(command), *(a for a in args if isinstance(a, str))]


def _shell_words(text: str) -> list[str]:
    """The words of a command line; one too long to split stays whole (and is reported as too long)."""
    if len(text) > MAX_SCAN:
        return [text]
    return [token for is_operator, token in _shell_tokens(text) if not is_operator]


# --------------------------------------------------------------------------- HTTP method

_HTTP_TOOL_WORDS: Final = frozenset(
    {"fetch", "http", "https", "request", "requests", "curl", "api", "call", "web", "url", "rest", "webhook"}
)
_HTTP_READS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_HTTP_DESTRUCTIVE: Final = frozenset({"DELETE", "PURGE"})
_HTTP_NAMED: Final = frozenset(
    {"DELETE", "PURGE", "PUT", "POST", "PATCH", "MOVE", "COPY", "MKCOL", "PROPPATCH", "LOCK", "UNLOCK", "CONNECT"}
)


class HttpMethodDetector:
    """An HTTP tool's method argument: DELETE is destructive; PUT, POST, PATCH (and any
    method that is not GET, HEAD, OPTIONS or TRACE) mutating."""

    name = "http_method"

    def idle(self, tool_words: tuple[str, ...], keys: tuple[str, ...]) -> bool:
        return _HTTP_TOOL_WORDS.isdisjoint(tool_words)

    def inspect(self, tool_name: str, tool_words: tuple[str, ...], arguments: Mapping[str, Any]) -> Iterable[Finding]:
        if _HTTP_TOOL_WORDS.isdisjoint(tool_words):
            return
        seen: set[str] = set()
        for leaf in iter_strings(arguments):
            words = tokenize(leaf.key[:_MAX_LABEL])
            if not words or words[-1] not in ("method", "verb"):
                continue
            method = leaf.value.strip().upper()[:32]
            if not method or method in _HTTP_READS or method in seen:
                continue
            seen.add(method)
            effect = _D if method in _HTTP_DESTRUCTIVE else _M
            shown = method if method in _HTTP_NAMED else "non-standard"  # an odd value might be anything
            yield Finding(self.name, effect, f"argument {leaf.path!r}: HTTP {shown} request")


def default_detectors() -> list[Detector]:
    """The detectors an :class:`ArgumentAnalyser` uses when given none."""
    return [SqlDetector(), ShellDetector(), HttpMethodDetector()]


# --------------------------------------------------------------------------- policy checks

_PATH_WORDS: Final = frozenset(
    {"path", "paths", "file", "files", "filename", "filenames", "filepath", "pathname", "dir", "dirs", "directory"}
    | {"directories", "dirname", "folder", "target", "dest", "destination", "src", "source", "cwd", "workdir"}
)
_URL_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(root == "/" or path == root or path.startswith(root + "/") for root in roots)


def _path_allowed(value: str, roots: Sequence[str]) -> bool:
    if value.lower().startswith("file://"):
        value = unquote(urlsplit(value).path) or "/"
    if value.startswith("~"):
        return False  # a home directory: unknown here, so never inside a root
    if value.startswith("/"):
        return _inside(posixpath.normpath("/" + value.lstrip("/")), roots)
    return any(_inside(posixpath.normpath(posixpath.join(root, value)), [root]) for root in roots)


def check_paths(arguments: Mapping[str, Any], roots: Sequence[str]) -> list[str]:
    """Violations for path-like string arguments outside every root (``..`` resolved).

    A string is path-like when its key names a path (path, file, dir, target, dest, src,
    ...), or, under any other key, when it has no whitespace and starts with ``/`` or
    ``~`` or contains ``../``. Relative paths are read relative to each root in turn.
    URLs other than ``file://`` are not paths. Symlinks are not resolved (no I/O here).
    """
    if not roots:
        return []
    roots = ["/" + posixpath.normpath(root).lstrip("/") for root in roots]
    violations: list[str] = []
    for leaf in iter_strings(arguments):
        value = leaf.value
        if not value or (_URL_SCHEME.match(value) and not value.lower().startswith("file://")):
            continue
        keyed = not _PATH_WORDS.isdisjoint(_key_words(leaf.key)) or leaf.key.lower() in _PATH_WORDS
        looks_like_path = (value[0] in "/~" or "../" in value or value == "..") and not any(c.isspace() for c in value)
        if (keyed or looks_like_path or value.lower().startswith("file://")) and not _path_allowed(value, roots):
            violations.append(f"argument {leaf.path!r} is outside the allowed roots")
    return violations


def _json_equal(value: Any, option: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, but ``1`` is ``1.0``."""
    if isinstance(value, bool) or isinstance(option, bool):
        return isinstance(value, bool) and isinstance(option, bool) and value == option
    if isinstance(value, int | float) and isinstance(option, int | float):
        return value == option
    return isinstance(value, str) and isinstance(option, str) and value == option


def _as_text(value: Any) -> str | None:
    """What a regex constraint is matched against: a string as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def check_constraints(arguments: Mapping[str, Any], constraints: Sequence[Constraint]) -> list[str]:
    """Violations of the policy's parameter constraints, naming argument and rule, never the value.

    ``required`` applies always; every other rule only when the argument is present.
    ``regex`` uses ``re.search`` (anchor it to match the whole value); ``min``/``max`` need
    a finite number (a boolean is not one); ``enum`` compares as JSON; ``glob`` needs a
    string and matches it whole, case-sensitively.
    """
    violations: list[str] = []
    for rule in constraints:
        name = rule.argument
        if name not in arguments:
            if rule.required:
                violations.append(f"argument {name!r} is required but missing")
            continue
        value = arguments[name]
        if rule.regex is not None:
            text = _as_text(value)
            if text is None or rule.regex.search(text) is None:
                violations.append(f"argument {name!r} does not match the pattern the policy requires (regex)")
        if rule.minimum is not None or rule.maximum is not None:
            number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not number:
                violations.append(f"argument {name!r} must be a number (min/max)")
            elif rule.minimum is not None and value < rule.minimum:
                violations.append(f"argument {name!r} is below the minimum of {rule.minimum:g}")
            elif rule.maximum is not None and value > rule.maximum:
                violations.append(f"argument {name!r} is above the maximum of {rule.maximum:g}")
        if rule.enum is not None and not any(_json_equal(value, option) for option in rule.enum):
            violations.append(f"argument {name!r} is not one of the allowed values (enum)")
        if rule.glob is not None and not (isinstance(value, str) and fnmatch.fnmatchcase(value, rule.glob)):
            violations.append(f"argument {name!r} does not match the allowed glob {rule.glob!r}")
    return violations


# --------------------------------------------------------------------------- the analyser


class ArgumentAnalyser:
    """Runs the detectors and the policy's argument checks over one tool call.

    A detector that raises is reported as a destructive finding rather than ignored, so a
    broken plug-in sends calls to review (and fails closed) instead of waving them through.
    Arguments with more values than the walk visits are a destructive finding too, and
    findings past ``MAX_FINDINGS`` are summed up in one finding with their highest effect.
    """

    def __init__(self, detectors: Sequence[Detector] | None = None) -> None:
        self.detectors: tuple[Detector, ...] = tuple(default_detectors() if detectors is None else detectors)
        self._busy: dict[tuple[str, tuple[str, ...]], tuple[Detector, ...]] = {}

    def analyse(self, action: Action, policy: Policy) -> ArgumentReport:
        if not action.is_tool_call:
            return _EMPTY
        arguments = action.arguments if isinstance(action.arguments, Mapping) else {}
        constraints = policy.constraints_for(action.name)
        if not arguments and not constraints:
            return _EMPTY
        words = _name_words(action.name) if len(action.name) <= _MAX_MEMO_NAME else tokenize(action.name)
        findings: dict[Finding, None] = {}
        keys = _flat_keys(arguments)
        if keys is None:
            detectors = self.detectors
            if not walk_complete(arguments):
                findings[_TOO_MANY_VALUES] = None
        else:
            detectors = self._busy_for(action.name, words, keys)
        left_out: Effect | None = None
        for detector in detectors:
            try:
                for finding in detector.inspect(action.name, words, arguments):
                    if len(findings) < MAX_FINDINGS:
                        findings.setdefault(finding, None)
                    elif finding not in findings and (left_out is None or finding.effect > left_out):
                        left_out = finding.effect
            except Exception as exc:
                name = getattr(detector, "name", type(detector).__name__)
                message = f"detector failed ({exc.__class__.__name__}); treated as destructive"
                findings.setdefault(Finding(str(name), Effect.DESTRUCTIVE, message), None)
        if left_out is not None:
            findings.setdefault(Finding("arguments", left_out, "more findings than are listed"), None)
        violations = check_constraints(arguments, constraints) if constraints else []
        if policy.path_roots:
            violations += check_paths(arguments, policy.path_roots)
        if not findings and not violations:
            return _EMPTY
        return ArgumentReport(tuple(findings), tuple(dict.fromkeys(violations))[:MAX_FINDINGS])

    def _busy_for(self, name: str, words: tuple[str, ...], keys: tuple[str, ...]) -> tuple[Detector, ...]:
        """The detectors that are not idle for scalar arguments under ``keys`` of tool ``name``
        (remembered: a pure function of the two, and the same few come back on every call)."""
        busy = self._busy.get((name, keys))
        if busy is not None:
            return busy
        busy = tuple(d for d in self.detectors if not _idle(d, words, keys))
        if len(name) <= _MAX_MEMO_NAME and sum(map(len, keys)) <= _MAX_MEMO_KEYS:
            if len(self._busy) >= _MEMO_ENTRIES:
                self._busy.clear()  # a client inventing names or keys must not grow memory
            self._busy[(name, keys)] = busy
        return busy


_MEMO_ENTRIES: Final = 4096
_MAX_MEMO_NAME: Final = 256
_MAX_MEMO_KEYS: Final = 1024
"""Longer tool names and key lists are answered, not remembered, so the memo stays small in bytes."""


def _idle(detector: Detector, words: tuple[str, ...], keys: tuple[str, ...]) -> bool:
    """Whether ``detector`` says it finds nothing here; one that cannot say (or fails to) runs."""
    idle = getattr(detector, "idle", None)
    if idle is None:
        return False
    try:
        return idle(words, keys) is True
    except Exception:
        return False  # inspect then runs, and reports its own failure


@functools.lru_cache(maxsize=1024)
def _name_words(name: str) -> tuple[str, ...]:
    return tokenize(name)


_TOO_MANY_VALUES: Final = Finding(
    "arguments", Effect.DESTRUCTIVE, f"more than {MAX_NODES} values, too many to analyse; treated as destructive"
)
