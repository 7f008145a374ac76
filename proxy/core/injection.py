"""Prompt-injection patterns in text that an LLM will read: sampling prompts and tool descriptions.

Both are written by an MCP server, not by the agent's user, so both are places where a
hostile or compromised server hides instructions for the model: override its instructions,
leak its system prompt or secrets, or quietly call tools. The scan is deliberately
pattern-based and explainable: every finding names its category, never the matched text
(which may itself be sensitive), so findings are safe to audit and to show the agent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

SCAN_LIMIT = 64 * 1024
"""Characters of each text that are scanned, so a huge prompt costs bounded time."""

# Zero-width and bidi-control characters are stripped before matching (so "ig\u200bnore"
# still matches) and, along with Unicode tag characters, reported as hidden content.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_TAGS = re.compile("[\U000e0000-\U000e007f]")


@dataclass(frozen=True, slots=True)
class InjectionFinding:
    category: str  # instruction_override | exfiltration | hidden_tool_call | concealment | hidden_text
    message: str


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.DOTALL)


_W = r"[\s\W_]{0,12}"  # a little punctuation or whitespace between words
_PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    (
        "instruction_override",
        "asks the model to ignore or replace its instructions",
        _rx(
            r"\b(ignore|disregard|forget|override|bypass)\b(?:\W+\w+){0,4}?\W+"
            r"(previous|prior|above|earlier|all|any|your|system|original)\b(?:\W+\w+){0,3}?\W+"
            r"(instructions?|prompts?|rules|guidelines|directives|context|guardrails)"
        ),
    ),
    (
        "instruction_override",
        "claims new instructions or a new role for the model",
        _rx(
            r"\b(new|updated|real|actual)" + _W + r"(system" + _W + r")?instructions?\s*:"
            r"|\byou are now\b(?:\W+\w+){0,3}?\W+(unrestricted|jailbroken|dan|developer mode|in charge)"
            r"|\b(enter|enable|activate)" + _W + r"(developer|god|jailbreak|dan)" + _W + r"mode\b"
            r"|<\|?\s*(im_start|system)\s*\|?>|\[\s*system\s*\]|\bsystem override\b"
        ),
    ),
    (
        "exfiltration",
        "asks for the system prompt, hidden instructions or secrets",
        _rx(
            r"\b(reveal|repeat|print|output|show|dump|leak|disclose|return|include|tell me|send|copy|paste|list)\b"
            r"(?:\W+\w+){0,6}?\W+"
            r"(system" + _W + r"prompt|(hidden|initial|original|secret)" + _W + r"(instructions?|prompt)"
            r"|api" + _W + r"keys?|secret" + _W + r"keys?|access" + _W + r"tokens?|bearer" + _W + r"tokens?"
            r"|passwords?|credentials?|private" + _W + r"keys?|environment" + _W + r"variables?|env" + _W + r"vars?)"
            r"|\bwhat\b(?:\W+\w+){0,3}?\W+(your|the)" + _W + r"system" + _W + r"prompt"
        ),
    ),
    (
        "exfiltration",
        "points the model at credential files",
        _rx(
            r"(~|\$home|/home/\w+|/root)/\.(ssh|aws|kube|docker|gnupg|netrc|config/gcloud)\b"
            r"|\bid_(rsa|ed25519|ecdsa)\b|\b\.env\b(?!\w)|\bmcp\.json\b|/etc/(passwd|shadow)\b"
        ),
    ),
    (
        "hidden_tool_call",
        "instructs the model to call tools or functions",
        _rx(
            r"\b(call|invoke|use|run|execute|trigger)\b(?:\W+(?:the|a|an|this|that|another))?\W+"
            r"[\w.\-/]+" + _W + r"(tool|function)\b(?:\W+\w+){0,6}?\W+"
            r"(before|after|first|silently|secretly|without|instead|every time|always|whenever)"
            r"|<\s*/?\s*(tool_call|function_call|tool_use|invoke)\b"
            r"|\"(tool_calls?|function_call)\"\s*:"
            r"|\bwhen(ever)?\b(?:\W+\w+){0,3}?\W+(tool|function)\b(?:\W+\w+){0,3}?\W+(is\s+)?(called|used|invoked)"
        ),
    ),
    (
        "concealment",
        "tells the model to hide what it does from the user",
        _rx(
            r"\b(do not|don't|never|without)\b(?:\W+\w+){0,3}?\W+"
            r"(tell|inform|mention|notify|reveal to|show|alert|let)\b(?:\W+\w+){0,2}?\W+(the\s+)?(user|human|operator)"
            r"|<\s*(important|secret|hidden|system)\s*>"
        ),
    ),
)


def clean(text: str) -> str:
    """NFKC-fold and drop invisible characters, so look-alike and zero-width tricks still match."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


def scan(texts: Iterable[str]) -> tuple[InjectionFinding, ...]:
    """Every distinct finding across ``texts`` (each scanned up to SCAN_LIMIT characters)."""
    found: dict[tuple[str, str], InjectionFinding] = {}
    for raw in texts:
        head = raw[:SCAN_LIMIT]
        if _TAGS.search(head) or _INVISIBLE.search(head):
            finding = InjectionFinding("hidden_text", "contains invisible Unicode (tag or zero-width characters)")
            found.setdefault((finding.category, finding.message), finding)
        text = clean(head)
        for category, message, pattern in _PATTERNS:
            if (category, message) not in found and pattern.search(text):
                found[(category, message)] = InjectionFinding(category, message)
    return tuple(found.values())


def describe(findings: Iterable[InjectionFinding]) -> str:
    """One sentence fragment listing the findings, for denial reasons and audit events."""
    return "; ".join(f"{f.category.replace('_', ' ')}: {f.message}" for f in findings)


def sampling_texts(params: dict[str, object]) -> list[str]:
    """The text a ``sampling/createMessage`` request would put in front of the model."""
    out: list[str] = []
    system = params.get("systemPrompt")
    if isinstance(system, str):
        out.append(system)
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                out.extend(_content_texts(message.get("content")))
    return out


def _content_texts(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, dict):
        text = content.get("text")
        return [text] if isinstance(text, str) else []
    if isinstance(content, list):
        return [t for block in content for t in _content_texts(block)]
    return []


def tool_texts(tool: dict[str, object]) -> list[str]:
    """The descriptions in a tool definition that a model reads: the tool's and its parameters'."""
    out: list[str] = []
    for key in ("description", "title"):
        value = tool.get(key)
        if isinstance(value, str):
            out.append(value)
    _schema_texts(tool.get("inputSchema"), out, depth=0)
    return out


def _schema_texts(schema: object, out: list[str], depth: int) -> None:
    if not isinstance(schema, dict) or depth > 8:
        return
    for key in ("description", "title"):
        value = schema.get(key)
        if isinstance(value, str):
            out.append(value)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, sub in properties.items():
            out.append(str(name))
            _schema_texts(sub, out, depth + 1)
    items = schema.get("items")
    if isinstance(items, dict):
        _schema_texts(items, out, depth + 1)
