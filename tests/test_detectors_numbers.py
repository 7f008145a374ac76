"""Precision of the number-shaped personal-data detectors (cards, IBANs, national ids, IP addresses,
phone numbers). They run only around the number-like runs one shared scan finds, and a few shapes
(ISO dates, fractional seconds, clock times) are turned away before any validator: each case here
sits at one of those edges (a value that starts right after a letter, ends in a letter, has its
digits after the run, or sits in non-ASCII text), next to text that must stay a non-finding."""

from __future__ import annotations

import pytest

from proxy.core import detectors

ALL = (*detectors.SECRET_DETECTORS, *detectors.PII_DETECTORS)


def found(text: str) -> list[tuple[str, str]]:
    return [(s.kind, text[s.start : s.end]) for s in detectors.find(text, ALL, phone_region="US")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NIE X1234567L", [("national_id", "X1234567L")]),  # the letter before the digits
        ("CF RSSMRA85T10A562S", [("national_id", "RSSMRA85T10A562S")]),  # never six digits in a row
        ("hetu 010101A123N", [("national_id", "010101A123N")]),  # five characters after the run
        ("pnr 811228-9874", [("national_id", "811228-9874")]),
        ("BE 85.07.30-033.28", [("national_id", "85.07.30-033.28")]),
        ("pesel 44051401359", [("national_id", "44051401359")]),
        ("DE89370400440532013000", [("iban", "DE89370400440532013000")]),  # the run starts after "DE"
        ("NL91 ABNA 0417 1643 00", [("iban", "NL91 ABNA 0417 1643 00")]),  # a bank code in letters first
        ("MT84MALT011000012345MTLCAST001S", [("iban", "MT84MALT011000012345MTLCAST001S")]),  # letters after
        ("fe80::1 and 2001:db8::ff00:42:8329", [("ip_address", "fe80::1"), ("ip_address", "2001:db8::ff00:42:8329")]),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", [("ip_address", "2001:0db8:85a3:0000:0000:8a2e:0370:7334")]),
        ("(415) 555-2671", [("phone", "(415) 555-2671")]),
        ("+44 20 7946 0958", [("phone", "+44 20 7946 0958")]),
        ("2026-11-30T08:15:02.113Z from 10.0.0.1", [("ip_address", "10.0.0.1")]),
        (
            "amex 3782 822463 10005, visa 4111-1111-1111-1111",
            [("credit_card", "3782 822463 10005"), ("credit_card", "4111-1111-1111-1111")],
        ),
        (
            "Überweisung: Karte 4111 1111 1111 1111 an juergen@example.de",
            [("credit_card", "4111 1111 1111 1111"), ("email", "juergen@example.de")],
        ),
    ],
)
def test_number_shaped_findings(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "at 08:15:02.113Z on 2026-11-30",  # a timestamp: no phone, no id
        '"created_at": "2026-11-30T08:15:02Z"',
        "T2026-11-30",  # an ISO date after a capital letter is still not an IBAN
        "12:34:56:78",  # clock-like, not IPv6
        "version 1.2.3 and 10:30",
        "order 123456789012",  # a bare order number is not a phone number
        "DNI 12345678A",  # wrong check letter
        "Überweisung vom 2026-11-30 um 08:15:02.113",
    ],
)
def test_number_shaped_non_findings(text: str) -> None:
    assert found(text) == []
