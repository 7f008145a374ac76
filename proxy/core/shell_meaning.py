"""What a shell command line does, read by a real parser (bashlex): the allowlist view of shell.

The pattern scanner in ``arguments.py`` names the dangerous things (``rm -rf``, ``curl | sh``,
``sudo``); it cannot say that ``touch x``, ``git push`` or ``cat a > b`` change something.
Here a command line counts as a read only when bashlex parses it and every command in it
(in pipelines, lists, loops, ``$(...)`` and ``<(...)``) runs a program known to only read,
with arguments that keep it so, and no output is redirected to a file. Anything else is
mutating: an unknown program, a write, a function definition, text the parser cannot read.

Pure and cached per distinct text; findings name the reason, never the command.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import bashlex

from proxy.core.action import Effect

__all__ = ["MAX_PARSE", "argv_meaning", "shell_meaning"]

MAX_PARSE: Final = 16 * 1024
"""Characters of one command line that are parsed (bashlex costs ~0.1 ms a character); a
longer line is not a proven read."""
CACHE_SIZE: Final = 4096
_CACHED_LENGTH: Final = 4096

_M = Effect.MUTATING
NOT_PARSED: Final = "command the parser cannot read, so not a proven read"
TOO_LONG: Final = "command too long to parse, so not a proven read"
UNKNOWN_PROGRAM: Final = "program not known to be read-only"
WRITES: Final = "output redirected to a file"
FUNCTION: Final = "shell function definition"

Findings = frozenset[tuple[Effect, str]]
_READ: Final[Findings] = frozenset()
_SAFE_TARGETS: Final = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
_WRITE_REDIRECTS: Final = frozenset({">", ">>", ">|", "&>", "&>>", "<>"})


def _no_flags(*flags: str) -> Callable[[Sequence[str]], bool]:
    """Read-only unless one of ``flags`` (or ``--flag=value``) is among the arguments."""
    banned = frozenset(flags)
    return lambda args: not any(a in banned or a.split("=", 1)[0] in banned for a in args)


def _always(args: Sequence[str]) -> bool:
    return True


def _find(args: Sequence[str]) -> bool:
    actions = {"-delete", "-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fprint0", "-fprintf", "-fls"}
    return not actions.intersection(args)


_SED_WRITE: Final = re.compile(r"(?:^|[;\n{}/])\s*[0-9,$]*\s*[wWe](?:\s|$)|/[gpiIm0-9]*w\s")


def _sed(args: Sequence[str]) -> bool:
    """No in-place edit, and no ``w file`` or ``e command`` in the script."""
    if any(a.startswith(("-i", "--in-place")) for a in args):
        return False
    return not any(_SED_WRITE.search(a) for a in args if not a.startswith("-"))


def _awk(args: Sequence[str]) -> bool:
    program = " ".join(a for a in args if not a.startswith("-"))
    return not any(mark in program for mark in ("system", ">", "|", "getline", "fflush", "close"))


_GIT_READS: Final = frozenset(
    "status diff log show blame rev-parse ls-files ls-tree ls-remote grep describe shortlog cat-file show-ref"
    " reflog whatchanged name-rev merge-base rev-list count-objects version help".split()
)


_GIT_RISKY: Final = ("-c", "--config-env", "--exec-path", "--output", "--upload-pack", "--receive-pack", "--ext-diff")


def _git(args: Sequence[str]) -> bool:
    if any(a.startswith(_GIT_RISKY) for a in args):  # config that runs programs, output written to a file
        return False
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return all(a in ("--version", "--help") for a in args)
    sub, rest = words[0], words[1:]
    if sub in _GIT_READS:
        return sub != "reflog" or not rest or rest[0] == "show"
    if sub == "branch":
        return not rest and not {"-d", "-D", "-m", "-M", "-c", "-C", "--delete", "--move"}.intersection(args)
    if sub in ("remote", "tag", "stash"):
        return not rest or rest[0] in ("-v", "show", "list", "get-url", "-l")
    if sub == "config":
        return bool({"--get", "--list", "-l", "--get-all", "--get-regexp"}.intersection(args))
    return False


def _curl(args: Sequence[str]) -> bool:
    banned = {"-d", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--json", "-F", "--form", "-T"}
    banned |= {"--upload-file", "-o", "--output", "-O", "--remote-name", "-K", "--config", "-c", "--cookie-jar"}
    banned |= {"-D", "--dump-header", "--trace", "--trace-ascii", "--libcurl", "--stderr", "--etag-save", "--hsts"}
    for at, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name in banned or (arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) & set("dFTOoKcD")):
            return False
        if name in ("-X", "--request"):
            method = arg.split("=", 1)[1] if "=" in arg else (args[at + 1] if at + 1 < len(args) else "")
            if method.upper() not in ("GET", "HEAD", "OPTIONS"):
                return False
    return True


# Programs that only read, and what keeps them so.
_PROGRAMS: Final[dict[str, Callable[[Sequence[str]], bool]]] = {
    **dict.fromkeys(
        (
            "ls cat head tail grep egrep fgrep rg ag ack wc echo printf pwd whoami id uname df du free"
            " uptime ps which type file stat tree uniq cut tr diff cmp md5sum sha1sum sha256sum sha512sum basename"
            " dirname realpath readlink test [ true false jq yq column nl xxd hexdump od strings less more zcat"
            " zgrep bzcat xzcat seq sleep env printenv locale nproc lscpu lsblk lsof netstat ss ping dig nslookup host"
            " getent groups users who w last history fold fmt expand unexpand paste join comm rev tac shuf base64"
            " cksum sum numfmt expr bc factor look lsattr"
        ).split(),
        _always,
    ),
    "find": _find,
    "sed": _sed,
    "awk": _awk,
    "gawk": _awk,
    "sort": _no_flags("-o", "--output", "--compress-program"),
    "date": _no_flags("-s", "--set"),
    "hostname": lambda args: all(a.startswith("-") for a in args),
    "git": _git,
    "curl": _curl,
}
_VERSION_ONLY: Final = frozenset({"python", "python3", "node", "npm", "pip", "go", "java", "ruby", "cargo", "rustc"})
_WRAPPERS: Final[dict[str, frozenset[str]]] = {
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "time": frozenset({"-f", "-o"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "command": frozenset(),
    "builtin": frozenset(),
    "nohup": frozenset(),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "xargs": frozenset({"-I", "-i", "-n", "-P", "-d", "-L", "-l", "-s", "-a", "-E", "-e", "--delimiter"}),
}


def _program(words: Sequence[str]) -> Iterable[tuple[Effect, str]]:
    """Findings for one simple command's words (assignments already dropped)."""
    index = 0
    while index < len(words):
        name = words[index].rsplit("/", 1)[-1]
        takes_value = _WRAPPERS.get(name)
        if takes_value is None:
            break
        index += 1
        while index < len(words) and (words[index].startswith("-") or "=" in words[index]):
            index += 2 if words[index] in takes_value else 1
        if name == "timeout" and index < len(words):
            index += 1  # the duration
        if index >= len(words):
            return  # env, xargs, nice ... with nothing to run: they print or pass on
    name, args = words[index].rsplit("/", 1)[-1], words[index + 1 :]
    if name in _VERSION_ONLY and all(a in ("--version", "-V", "version", "--help") for a in args) and args:
        return
    check = _PROGRAMS.get(name)
    if check is None or not check(args):
        yield _M, UNKNOWN_PROGRAM


def shell_meaning(text: str) -> Findings:
    """(effect, reason) pairs for what command line ``text`` does beyond reading; empty only for a proven read."""
    return _cached_meaning(text) if len(text) <= _CACHED_LENGTH else _meaning(text)


def argv_meaning(argv: Sequence[str]) -> Findings:
    """The same for an argv list run without a shell (its words are taken as they are)."""
    return frozenset(_program(list(argv))) if argv else _READ


def _meaning(text: str) -> Findings:
    if not text.strip():
        return _READ
    if len(text) > MAX_PARSE:
        return frozenset({(_M, TOO_LONG)})
    try:
        parts = bashlex.parse(text)
        found: set[tuple[Effect, str]] = set()
        for part in parts:
            _visit(part, found)
    except Exception:  # bashlex's parse errors, NotImplementedError (case ... esac), RecursionError
        return frozenset({(_M, NOT_PARSED)})
    return frozenset(found)


_cached_meaning: Final = functools.lru_cache(maxsize=CACHE_SIZE)(_meaning)


def _visit(node: Any, found: set[tuple[Effect, str]]) -> None:
    kind = node.kind
    if kind == "command":
        words: list[str] = []
        for part in node.parts:
            if part.kind == "word":
                words.append(part.word)
                _substitutions(part, found)
            elif part.kind == "redirect":
                _redirect(part, found)
            elif part.kind == "assignment":
                _substitutions(part, found)
        if words:
            found.update(_program(words))
    elif kind == "function":
        found.add((_M, FUNCTION))
    elif kind in ("list", "pipeline", "compound", "if", "for", "while", "until"):
        for part in getattr(node, "list", None) or getattr(node, "parts", ()):
            _visit(part, found)
    elif kind in ("commandsubstitution", "processsubstitution"):
        _visit(node.command, found)
    elif kind in ("word", "assignment"):
        _substitutions(node, found)
    elif kind == "redirect":
        _redirect(node, found)
    # operators, pipes, reserved words, parameters, tildes, heredocs: nothing runs


def _substitutions(node: Any, found: set[tuple[Effect, str]]) -> None:
    """``$(...)``, backticks and ``<(...)`` inside a word run their commands."""
    for part in getattr(node, "parts", ()):
        if part.kind in ("commandsubstitution", "processsubstitution"):
            _visit(part.command, found)
        else:
            _substitutions(part, found)


def _redirect(node: Any, found: set[tuple[Effect, str]]) -> None:
    target = node.output
    if node.type in _WRITE_REDIRECTS and not isinstance(target, int):
        if getattr(target, "kind", "") != "word" or target.word not in _SAFE_TARGETS:
            found.add((_M, WRITES))
    if not isinstance(target, int) and target is not None:
        _substitutions(target, found)
