"""CPU cost of data protection: microseconds per KB of tool-result text, and the cost of a result
that has no text at all.

Runs the same code the proxy runs on a tool result (``Checker.screen_result``'s scanner and
plan) over four kinds of text, each about 64 KB, and reports the fastest and the median of
several rounds:

- ``prose``: English sentences, none of the detectors' trigger strings;
- ``json``: a typical API listing (ids, UUIDs, timestamps, URLs, ``token``/``secret`` words);
- ``logs``: application log lines with ``key=value`` pairs, URLs and passwords of placeholders;
- ``secrets``: the same logs with a real-looking secret every 2 KB (what gets masked).

``--pii`` also switches personal data on (as ``policies/strict.yaml`` does).

Run: ``.venv/bin/python bench/scan.py [--pii] [--rounds 15] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from proxy.core.policy import parse_policy_text
from proxy.core.protection import Scanner

KB = 1024
TARGET = 64 * KB


def _repeat(unit: str) -> str:
    return (unit * (TARGET // len(unit) + 1))[:TARGET]


PROSE = _repeat(
    "The committee reviewed the quarterly figures and agreed that the new warehouse should open in "
    "spring. Several members asked for a clearer schedule, and the chair promised a written plan "
    "before the next meeting, together with the revised budget and the hiring timeline. "
)
JSON_ITEM = json.dumps(
    {
        "id": "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c",
        "created_at": "2026-11-30T08:15:02Z",
        "url": "https://api.example.com/v2/orders/48213?expand=items",
        "status": "shipped",
        "token_count": 512,
        "note": "customer asked about the secret santa gift wrap option",
        "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
    }
)
JSON_TEXT = _repeat(JSON_ITEM + ",\n")
LOG_LINE = (
    "2026-11-30T08:15:02.113Z INFO request_id=7d1c9e0a user=42 method=GET path=/v2/orders status=200 "
    "upstream=https://billing.internal:8443/charge password=<redacted> token=${API_TOKEN} ms=12.4\n"
)
LOGS = _repeat(LOG_LINE)
SECRET_LINE = (
    "2026-11-30T08:15:03.001Z WARN leaked key AKIAIOSFODNN7EXAMPLE with ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n"
)
SECRETS = "".join((LOGS[i : i + 2 * KB - len(SECRET_LINE)] + SECRET_LINE) for i in range(0, TARGET, 2 * KB))[:TARGET]


def result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


NO_TEXT = {"content": [{"type": "image", "data": "iVBORw0KGgo" * 1000, "mimeType": "image/png"}], "isError": False}


def measure(scanner: Scanner, plan: Any, payload: dict[str, Any], rounds: int, inner: int) -> tuple[float, float]:
    """(fastest, median) seconds per scan. The fastest round is the CPU cost itself; on a shared
    machine the median also carries other processes' time slices."""
    scanner.tool_result(payload, plan)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(inner):
            scanner.tool_result(payload, plan)
        samples.append((time.perf_counter() - started) / inner)
    return min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pii", action="store_true", help="also look for personal data (policies/strict.yaml)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    policy_text = "version: 1\n"
    if args.pii:
        policy_text += "data_protection:\n  pii: {arguments: audit, results: mask}\n"
    policy = parse_policy_text(policy_text, "bench")
    plan = policy.protection.plan("results", "http://upstream/mcp", "get_report")
    scanner = Scanner(b"bench-fingerprint-key-0123456789")
    figures: dict[str, float] = {}
    print(
        f"data protection scan, results plan: secrets{' + pii' if args.pii else ''} ({len(plan.detectors)} detectors)"
    )
    for name, text in (("prose", PROSE), ("json", JSON_TEXT), ("logs", LOGS), ("secrets", SECRETS)):
        fastest, median = (s * 1e6 / (len(text) / KB) for s in measure(scanner, plan, result(text), args.rounds, 3))
        figures[f"{name}_us_per_kb"] = round(fastest, 2)
        figures[f"{name}_us_per_kb_median"] = round(median, 2)
        found, _ = scanner.tool_result(result(text), plan)
        findings = sum(len(v) for v in found.kinds.values())
        print(f"  {name:8} {fastest:7.2f} µs/KB (median {median:7.2f})  {findings} findings")
    empty, _ = measure(scanner, plan, NO_TEXT, args.rounds, 2000)
    figures["no_text_result_us"] = round(empty * 1e6, 3)
    print(f"  a result with no text (one image block): {empty * 1e6:.2f} µs per result")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
