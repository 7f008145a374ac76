"""Secret and personal-data detectors for text that crosses Wicket: pure, no I/O.

Each detector finds spans of one *kind* (``aws_access_key``, ``email``, ...) in a string.
The secret patterns follow the plugins of Yelp's ``detect-secrets`` (and the public token
formats the vendors document), compiled here instead of calling that library: its
per-line plugin loop costs about 2.5 ms per KB, over a hundred times the budget of a
sidecar that scans every tool result. Speed comes from a literal pre-filter: every
pattern is tried only when a substring it cannot match without (``AKIA``, ``ghp_``,
``-----BEGIN``, ``://``) occurs in the text, and which of them occur is one Aho-Corasick
pass (``ahocorasick-rs``) over the text and one over its lower-case form.

Personal data is validated, not just matched: card numbers must pass Luhn and have a
known issuer prefix, IBANs their ISO 7064 check digits (``python-stdnum``), national ids
their national checksum (``python-stdnum``), phone numbers Google's libphonenumber rules
(``phonenumbers``), IP addresses the ``ipaddress`` parser. A UUID, a git SHA, a base64
blob or a Luhn-invalid number is therefore not a finding. The number-shaped kinds share one
scan for runs of digits and separators and are tried only around the runs that can hold them,
so a timestamp-heavy log costs one ``re`` pass, not one per kind.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import ahocorasick_rs
import phonenumbers
from stdnum import iban, luhn
from stdnum.be import nn as be_nn
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fi import hetu as fi_hetu
from stdnum.fr import nir as fr_nir
from stdnum.it import codicefiscale as it_cf
from stdnum.nl import bsn as nl_bsn
from stdnum.pl import pesel as pl_pesel
from stdnum.se import personnummer as se_pnr

__all__ = ["PII_KINDS", "SECRET_KINDS", "Detector", "Span", "find", "mask", "secret_field", "shannon_entropy"]


@dataclass(frozen=True, slots=True)
class Span:
    """Where a finding is in the text: ``text[start:end]`` is the value to mask."""

    kind: str
    start: int
    end: int


Validator = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind: literal triggers, the pattern, an optional validator.

    The pattern is only tried near an occurrence of a trigger: from ``back`` characters
    before it to ``reach`` characters after it (``reach`` 0: to the end of the text), so the
    cost of a text without triggers is a few substring searches, and with them it grows
    with the number of occurrences, not the length of the text. ``group`` is the regex
    group holding the value (0: the whole match), so a password in
    ``postgres://user:pw@host`` is masked without the user and host around it.
    ``triggers=()`` means: run the pattern over the whole text.
    """

    kind: str
    triggers: tuple[str, ...]
    pattern: re.Pattern[str]
    group: int = 0
    validate: Validator | None = None
    lowered: bool = False  # triggers are searched in the lower-cased text
    back: int = 0
    reach: int = 512
    gate: tuple[str, ...] = ()
    """Characters one of which every match needs (``_``, ``-``, ``=``): checked once per text for
    all detectors that share them, so the triggers of a text without any cost nothing."""
    finder: re.Pattern[str] | None = None
    """Instead of ``triggers``: a pattern with a literal prefix (which ``re`` searches for at C
    speed) whose matches are the places to try ``pattern``."""
    offset: int = 0
    """How many characters before a trigger ``pattern`` starts (``sk_live_`` found as ``k_live_``)."""
    tail: str | None = None
    """Instead of ``pattern``: what follows each trigger. One regex per trigger (the trigger as its
    literal prefix, which ``re`` finds at C speed) runs over the text (lower-cased when
    ``lowered``), so no Python code runs per occurrence unless it matches; group 1 is the value,
    read from the original text."""
    scans: tuple[re.Pattern[str], ...] = ()
    numeric: bool = False
    """A number-shaped kind (cards, IBANs, national ids, IPv4): tried only around the number-like
    runs one shared scan of the text finds (``back`` characters before a run, ``reach`` after), and
    only when the run can hold one (``fits``); a match must overlap its run."""
    fits: Callable[[str, int, str, int], bool] | None = None
    """Given the text, where the run starts, the run and its digit count: can this kind be in or
    around it? (cheap: a clock time or an ISO date is turned away here, without a regex)"""

    def __post_init__(self) -> None:
        if self.tail is not None:
            scans = tuple(re.compile(re.escape(t) + self.tail) for t in self.triggers)
            object.__setattr__(self, "scans", scans)


def _c(regex: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(regex, flags)


# --------------------------------------------------------------------------- secrets

_ENTROPY_MIN: Final = 3.0
"""Bits per character a value in a key-like field needs to count as a secret. English words
sit around 2.5-3.0, random base64/hex tokens at 3.5-6."""


def shannon_entropy(value: str) -> float:
    if not value:
        return 0.0
    length = len(value)
    return -sum(n / length * math.log2(n / length) for n in Counter(value).values())


_PLACEHOLDER = _c(r"^(?:[*x•.\-_#]+|<[^>]*>|\$\{[^}]*\}|\{\{[^}]*\}\}|%[A-Za-z_]+%|\[REDACTED(?::[a-z_]+)?\])$", re.I)


def _secret_value(value: str) -> bool:
    """A keyword-context value that looks like a real secret, not a placeholder or a word."""
    return not _PLACEHOLDER.match(value) and shannon_entropy(value) >= _ENTROPY_MIN


def _password_value(value: str) -> bool:
    return len(value) >= 4 and not _PLACEHOLDER.match(value)


def _jwt(value: str) -> bool:
    """The header segment decodes to a JSON object with an ``alg`` (cheap: no full decode)."""
    head = value.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except ValueError:
        return False
    return decoded.startswith(b"{") and b'"alg"' in decoded


_NEVER: Final = _c(r"(?!)")  # the pattern of a detector that works by ``tail``

SECRET_DETECTORS: Final[tuple[Detector, ...]] = (
    # Every pattern starts with its trigger, so it is tried once per occurrence (``back`` 0).
    Detector(
        "private_key",
        ("-----BEGIN",),
        _c(
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
            re.S,
        ),
        reach=0,
    ),
    Detector(
        "aws_access_key",
        ("AKIA", "ASIA"),
        _c(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Z0-9])"),
        reach=24,
    ),
    Detector(
        "aws_secret_key",
        ("secret_access_key", "secretaccesskey", "aws_secret"),
        _NEVER,
        tail=r"[a-z_]{0,20}[\"']?[ \t]*[:=][ \t]*[\"']?([a-z0-9/+]{40})(?![a-z0-9/+=])",
        lowered=True,
        gate=("_", "="),
    ),
    Detector(
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),  # only to know whether to look: ``finder`` finds them
        _c(r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b"),
        gate=("_",),
        finder=_c(r"gh[pousr]_"),
    ),
    Detector("github_token", ("github_pat_",), _c(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"), gate=("_",)),
    Detector("gitlab_token", ("glpat-",), _c(r"\bglpat-[A-Za-z0-9_\-]{20,255}"), gate=("-",)),
    Detector("slack_token", ("xox",), _c(r"\bxox[abposre]-(?:[0-9]+-)?[A-Za-z0-9-]{10,255}"), gate=("-",)),
    Detector(
        "slack_webhook",
        ("https://hooks.slack.com/",),
        _c(r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_]+"),
    ),
    Detector(
        "jwt", ("eyJ",), _c(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"), validate=_jwt, reach=0
    ),
    Detector(
        "stripe_key",
        ("k_live_", "k_test_"),
        _c(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,255}"),
        gate=("_",),
        offset=1,
    ),
    Detector("google_api_key", ("AIza",), _c(r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])")),
    Detector("anthropic_key", ("sk-ant-",), _c(r"\bsk-ant-[a-z0-9]{2,10}-[A-Za-z0-9_\-]{40,255}"), gate=("-",)),
    Detector(
        "openai_key",
        ("sk-",),
        _c(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,200}T3BlbkFJ[A-Za-z0-9_\-]{16,255}"),
        gate=("-",),
    ),
    Detector("npm_token", ("npm_",), _c(r"\bnpm_[A-Za-z0-9]{36}\b"), gate=("_",)),
    Detector("sendgrid_key", ("SG.",), _c(r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b")),
    Detector(
        "azure_storage_key",
        ("accountkey",),
        _c(r"AccountKey\s*=\s*([A-Za-z0-9+/]{86}==)", re.I),
        group=1,
        lowered=True,
        gate=("=",),
    ),
    Detector(
        "url_password",
        ("://",),
        # scheme://user:password@host: the password alone is masked (RFC 3986 userinfo).
        _NEVER,
        tail=r"[^\s:/@\"'<>]{1,128}:([^\s/@\"'<>]{1,256})@[A-Za-z0-9.\-\[\]]",
        validate=_password_value,
    ),
    Detector(
        "connection_password",
        ("passw", "pwd"),
        # ADO.NET / JDBC / ODBC style: Password=...; (quoted, or up to the next ; & or space).
        _NEVER,
        tail=r"[a-z]{0,3}[ \t]*=[ \t]*(\"[^\"]{1,256}\"|'[^']{1,256}'|[^;\s\"'&]{1,256})",
        validate=_password_value,
        lowered=True,
        gate=("=",),
    ),
    Detector(
        "keyword_secret",
        ("secret", "token", "api_key", "apikey", "api-key", "passw", "access_key", "auth_key"),
        # key: value / key = value / "key": "value" in free text (config dumps, logs, .env files).
        _NEVER,
        tail=r"[a-z_\-]{0,32}[\"']?[ \t]*(?::|=>|=)[ \t]*[\"']?([a-z0-9_\-+/=.~!@#$%^&*]{8,256})",
        validate=_secret_value,
        lowered=True,
        gate=(":", "="),
    ),
)

# --------------------------------------------------------------------------- personal data

_CARD_PREFIX = _c(r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|2)|35)")


def _card(value: str) -> bool:
    digits = re.sub(r"[ \-]", "", value)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn.is_valid(digits)


def _iban(value: str) -> bool:
    return iban.is_valid(value)


def _national_id(value: str) -> bool:
    return any(module.is_valid(value) for module in (es_dni, es_nie, it_cf, fr_nir, fi_hetu, se_pnr, be_nn))


def _keyword_national_id(value: str) -> bool:
    return nl_bsn.is_valid(value) or pl_pesel.is_valid(value)


def _ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_DIGITS: Final = tuple("0123456789")
_SIX_DIGITS: Final = _c(r"\d{6}")

PII_DETECTORS: Final[tuple[Detector, ...]] = (
    Detector(
        "email",
        ("@",),
        back=64,
        reach=260,
        pattern=_c(
            r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b"
        ),
    ),
    Detector(
        "credit_card",
        (),
        _c(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])"),
        validate=_card,
        gate=_DIGITS,
        numeric=True,
        back=1,
        reach=1,
        fits=lambda text, start, run, digits: digits >= 13,
    ),
    Detector(
        "iban",
        (),
        _c(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
        validate=_iban,
        gate=_DIGITS,
        # The country code, check digits and a bank code in letters may precede the account digits,
        # so the run follows an upper-case letter (DE89..., NL91ABNA0417..., GB82 WEST 1234...).
        numeric=True,
        back=40,
        reach=40,
        fits=lambda text, start, run, digits: (
            start >= 2 and (text[start - 1].isupper() or (text[start - 1] == " " and text[start - 2].isupper()))
        ),
    ),
    Detector(
        "national_id",
        (),
        # ES DNI/NIE, IT codice fiscale, FR NIR, FI HETU, SE personnummer, BE national number: shapes
        # distinctive enough to check on sight; the checksum decides.
        _c(
            r"\b(?:\d{8}[A-Z]|[XYZ]\d{7}[A-Z]|[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]|"
            r"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}|"
            r"\d{6}[-+A]\d{3}[0-9A-Y]|\d{6}[-+]\d{4}|\d{2}\.\d{2}\.\d{2}-\d{3}\.\d{2})\b"
        ),
        validate=_national_id,
        gate=_DIGITS,
        numeric=True,
        back=8,
        reach=8,  # a Finnish HETU of this century: six digits, then "A123N"
        fits=lambda text, start, run, digits: (
            digits >= 11 or _SIX_DIGITS.search(run) is not None or not run[-1].isdigit()
        ),
    ),
    Detector(
        "national_id",
        ("bsn", "pesel"),
        # NL BSN and PL PESEL are bare digit runs: only next to their name.
        _c(r"\b(?:bsn|pesel)\b\D{0,20}(\d{9,11})\b", re.I),
        group=1,
        validate=_keyword_national_id,
        lowered=True,
    ),
    Detector(
        "ip_address",
        (),
        # Candidates are cheap digit-dot runs; the ipaddress parser decides (so 999.1.1.1 is not one).
        _c(r"(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.])"),
        validate=_ip,
        gate=_DIGITS,
        numeric=True,
        back=1,
        reach=1,
        fits=lambda text, start, run, digits: run.count(".") >= 3,
    ),
    Detector(
        "ip_address",
        (),
        _c(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{0,35}(?![\w:])"),
        validate=_ip,
        gate=(":",),
        # Every IPv6 address has "::" or seven colons, so three colons around hex groups; a clock
        # time (12:30:45) has neither. The hint starts with a literal ":", which ``re`` finds at C speed.
        finder=_c(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)"),
        back=40,
        reach=45,
    ),
)

SECRET_KINDS: Final = tuple(dict.fromkeys(d.kind for d in SECRET_DETECTORS))
PII_KINDS: Final = ("email", "phone", "credit_card", "iban", "national_id", "ip_address")
_PII_SET: Final = frozenset(PII_KINDS)

_PHONE_CANDIDATE = _c(r"(?<![\w.+])(?:\+|00)?\(?\d[\d ().\-]{6,20}\d(?![\w])")
_PHONE_FORMAT = _c(r"^(?:\+|00|\()|[ .\-]")
_ISO_DATE = _c(r"\d{4}-\d{2}-\d{2}")

_NUMBERISH: Final = _c(r"\d(?:[\d .\-()/+]{5,}\d|\d(?:\d{4}(?=A)|[A-Z]\d\d[A-Z]\d{3}[A-Z]))")
"""Where number-shaped personal data can be: a run of seven or more digits and separators (cards, IBAN
account digits, national ids, IPv4 addresses, phone numbers all have one), six digits before the
``A`` of a Finnish HETU, or the date-of-birth block of an Italian codice fiscale. One pass over the
text; the validators run only around these (fractional seconds, ``02.113``, are too short)."""
_NUMBERISH_ASCII: Final = _c(
    r"[0-9](?:[0-9 .\-()/+]{5,}[0-9]"  # seven or more
    r"|[0-9](?:[0-9]{4}(?=A)|[A-Z][0-9][0-9][A-Z][0-9]{3}[A-Z]))"  # a HETU's six digits, a codice fiscale
)
r"""The same for ASCII text (most of it), where ``\d`` is ``[0-9]`` and ``re`` skips ahead faster."""
_NO_DIGITS: Final = str.maketrans("", "", "0123456789")
_NEEDED: Final = _c(r"[0-9\-_=:@]")
"""One of which nearly every finding needs: a digit (every number-shaped kind, phones, BSN/PESEL), or
one of ``-_=:@`` (private keys, most tokens, ``key=value`` and ``key: value`` secrets, URL and
connection passwords, e-mail, IPv6)."""
_LETTERS_ONLY: Final = ("aws_access_key", "google_api_key", "jwt", "sendgrid_key")
"""The kinds whose value can be letters alone: their detectors run only when a trigger occurs."""


@functools.lru_cache(maxsize=4096)
def _phone_number(candidate: str, region: str) -> bool:
    """libphonenumber's verdict on one candidate (remembered: logs repeat the same few numbers)."""
    if _ISO_DATE.fullmatch(candidate) or _ip(candidate):
        return False  # ISO dates and dotted addresses are not phone numbers
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _phones(text: str, start: int, end: int, region: str, spans: list[Span]) -> None:
    """libphonenumber decides; the regex only proposes digit runs with phone punctuation
    (a bare run like an order number is left alone unless it starts with ``+``)."""
    for match in _PHONE_CANDIDATE.finditer(text, start, end):
        candidate = match.group(0)
        if _PHONE_FORMAT.search(candidate) and _phone_number(candidate, region):
            spans.append(Span("phone", match.start(), match.end()))


# --------------------------------------------------------------------------- scanning


def find(
    text: str,
    detectors: Iterable[Detector],
    *,
    phone_region: str | None = None,
) -> list[Span]:
    """Every finding in ``text``, sorted; of overlapping findings the earliest (then longest) stays."""
    if _plain(text):
        return []  # most tool results and arguments: one C-speed search instead of the trigger passes
    return _find(text, detectors, phone_region)


def _plain(text: str) -> bool:
    """ASCII text without a ``_NEEDED`` character or a trigger of a ``_LETTERS_ONLY`` kind: no finding."""
    if not text.isascii() or _NEEDED.search(text) is not None:
        return False
    for trigger in _LETTER_TRIGGERS:
        if trigger in text:
            return False
    return True


def _find(text: str, detectors: Iterable[Detector], phone_region: str | None) -> list[Span]:
    """:func:`find` without its plain-text shortcut."""
    lowered = text.lower()
    if len(lowered) != len(text):  # non-ASCII case mapping moved the offsets
        lowered = text
    present = _triggers_in(text, lowered)
    spans: list[Span] = []
    gates: dict[tuple[str, ...], bool] = {(): True}
    runs: list[tuple[int, int, str, int]] | None = None  # number-like runs: start, end, text, digits
    for detector in detectors:
        if detector.triggers and present.isdisjoint(detector.triggers):
            continue
        gate = gates.get(detector.gate)
        if gate is None:
            gate = gates[detector.gate] = any(g in text for g in detector.gate)
        if not gate:
            continue
        if detector.numeric:
            if runs is None:
                runs = _number_runs(text)
            fits = detector.fits
            regions = [(s, e) for s, e, run, digits in runs if fits is None or fits(text, s, run, digits)]
            _match_around(detector, text, regions, spans)
            continue
        if detector.scans:
            haystack = lowered if detector.lowered else text
            for trigger, scan in zip(detector.triggers, detector.scans, strict=True):
                if trigger not in present:
                    continue
                for match in scan.finditer(haystack):
                    begin, finish = match.span(1)
                    value = text[begin:finish]
                    if detector.validate is None or detector.validate(value):
                        spans.append(Span(detector.kind, begin, finish))
            continue
        if detector.finder is not None:
            if detector.back:
                _match_around(detector, text, [m.span() for m in detector.finder.finditer(text)], spans)
                continue
            done = 0
            for found in detector.finder.finditer(text):
                if found.start() >= done:
                    end = min(len(text), found.start() + detector.reach) if detector.reach else len(text)
                    done = _match_at(detector, text, found.start(), end, spans)
            continue
        if not detector.triggers:
            _match_all(detector, text, 0, len(text), spans)
            continue
        haystack = lowered if detector.lowered else text
        done = 0  # where the previous window ended: a match is never reported twice
        for trigger in detector.triggers:
            if trigger not in present:
                continue
            position = haystack.find(trigger)
            while position >= 0:
                end = len(text) if detector.reach == 0 else min(len(text), position + detector.reach)
                if detector.back == 0:
                    done = _match_at(detector, text, max(position - detector.offset, 0), end, spans)
                else:
                    done = _match_all(detector, text, max(position - detector.back, done), end, spans)
                position = haystack.find(trigger, max(position + 1, done))
            done = 0
    if phone_region is not None:
        if runs is None:
            runs = _number_runs(text) if any(d in text for d in _DIGITS) else []
        for start, end, run, _ in runs:
            if len(run) < 8:  # the shortest candidate: a digit, six more characters, a digit
                continue
            if len(run) == 10 and run[4] == run[7] == "-" and text[start - 1 : start] not in ("+", "("):
                continue  # an ISO date, not a phone number
            _phones(text, max(start - 3, 0), end + 1, phone_region, spans)
    if len(spans) < 2:
        return spans
    spans.sort(key=lambda s: (s.start, s.kind in _PII_SET, -s.end))
    kept = [spans[0]]
    for span in spans[1:]:
        if span.start >= kept[-1].end:
            kept.append(span)
    return kept


def _trigger_automata() -> tuple[ahocorasick_rs.AhoCorasick, list[str], ahocorasick_rs.AhoCorasick, list[str]]:
    cased = sorted({t for d in (*SECRET_DETECTORS, *PII_DETECTORS) if not d.lowered for t in d.triggers})
    lowered = sorted({t for d in (*SECRET_DETECTORS, *PII_DETECTORS) if d.lowered for t in d.triggers})
    return ahocorasick_rs.AhoCorasick(cased), cased, ahocorasick_rs.AhoCorasick(lowered), lowered


_CASED, _CASED_WORDS, _LOWERED, _LOWERED_WORDS = _trigger_automata()
_LETTER_TRIGGERS: Final = tuple(t for d in SECRET_DETECTORS if d.kind in _LETTERS_ONLY for t in d.triggers)


def _triggers_in(text: str, lowered: str) -> set[str]:
    """Which triggers occur in the text (case-sensitive ones) or its lower-case form: one Aho-Corasick
    pass each (``ahocorasick-rs``), instead of one substring search per trigger, so a detector none of
    whose triggers occur costs nothing. Overlapping matches: ``sk-`` is still seen inside ``sk-ant-``."""
    found = {_CASED_WORDS[i] for i, _, _ in _CASED.find_matches_as_indexes(text, overlapping=True)}
    found.update(_LOWERED_WORDS[i] for i, _, _ in _LOWERED.find_matches_as_indexes(lowered, overlapping=True))
    return found


def _number_runs(text: str) -> list[tuple[int, int, str, int]]:
    """The runs ``_NUMBERISH`` finds, less the two shapes every log line and API listing is full of
    and no number-shaped kind can be: an ISO date (2026-11-30) and fractional seconds (02.113),
    unless an upper-case letter before them could make them an IBAN's account digits."""
    runs = []
    for match in (_NUMBERISH_ASCII if text.isascii() else _NUMBERISH).finditer(text):
        run = match.group()
        start = match.start()
        digits = len(run) - len(run.translate(_NO_DIGITS))
        if (len(run) < 8 and digits < 6 and run.count(".") < 3) or (
            len(run) == 10 and run[4] == run[7] == "-" and text[start - 1 : start] not in ("+", "(")
        ):
            before = text[max(start - 2, 0) : start]
            if not before or not (before[-1].isupper() or (before[-1] == " " and before[:1].isupper())):
                continue
        runs.append((start, match.end(), run, digits))
    return runs


def _match_around(detector: Detector, text: str, regions: Iterable[tuple[int, int]], spans: list[Span]) -> None:
    """The detector's validated matches that overlap one of ``regions`` (sorted), each looked for from
    ``back`` characters before the region to ``reach`` after it; a match is reported once."""
    length = len(text)
    done = 0
    for start, end in regions:
        window_end = min(end + detector.reach, length)
        for match in detector.pattern.finditer(text, max(start - detector.back, done), window_end):
            if match.end() <= start:
                continue
            if match.start() >= end:
                break
            if match.end() == window_end < length:  # the window may have cut it short: match it whole
                match = detector.pattern.match(text, match.start()) or match
            done = match.end()
            begin, finish = match.span(detector.group)
            if begin < 0 or finish <= begin:
                continue
            if detector.validate is not None and not detector.validate(match.group(detector.group)):
                continue
            spans.append(Span(detector.kind, begin, finish))


def _match_at(detector: Detector, text: str, position: int, end: int, spans: list[Span]) -> int:
    """The pattern anchored at a trigger: one attempt, no scan."""
    match = detector.pattern.match(text, position, end)
    if match is None:
        return position + 1
    begin, finish = match.span(detector.group)
    if begin >= 0 and finish > begin:
        if detector.validate is None or detector.validate(match.group(detector.group)):
            spans.append(Span(detector.kind, begin, finish))
    return match.end()


def _match_all(detector: Detector, text: str, start: int, end: int, spans: list[Span]) -> int:
    """Add the detector's validated matches in ``text[start:end]``; return where the last one ended."""
    last = start
    for match in detector.pattern.finditer(text, start, end):
        begin, finish = match.span(detector.group)
        last = match.end()
        if begin < 0 or finish <= begin:
            continue
        if detector.validate is not None and not detector.validate(match.group(detector.group)):
            continue
        spans.append(Span(detector.kind, begin, finish))
    return last


def mask(text: str, spans: list[Span]) -> str:
    """``text`` with each span replaced by ``[REDACTED:<kind>]``."""
    parts: list[str] = []
    position = 0
    for span in spans:
        parts.append(text[position : span.start])
        parts.append(f"[REDACTED:{span.kind}]")
        position = span.end
    parts.append(text[position:])
    return "".join(parts)


# --------------------------------------------------------------------------- key-like fields

_KEY_WORDS = _c(
    r"(?:^|_)(?:password|passwd|pwd|pass|passphrase|secret|token|apikey|api_key|access_key|secret_key|"
    r"private_key|client_secret|credential|credentials|auth|authorization|bearer|cookie|session_key|signing_key)(?:_|$)"
)
_NOT_SECRET_KEYS = _c(
    r"(?:^|_)(?:page|next|cursor|count|type|limit|max|min|usage|id|name|url|uri|path|expires|hint)(?:_|$)"
)
_PASSWORD_KEYS = _c(r"(?:^|_)(?:password|passwd|pwd|pass|passphrase)(?:_|$)")
_CAMEL = _c(r"(?<=[a-z0-9])(?=[A-Z])")


def secret_field(key: str, value: str) -> bool:
    """Whether ``value`` under the JSON key ``key`` is a secret: a key-like name
    (``password``, ``apiKey``, ``client_secret``, ...) and a value that looks like one
    (any non-placeholder for a password, high entropy for the rest). A value longer than
    :data:`_ENTROPY_CHARS` is not measured: under such a key it counts as a secret (judged
    closed, never passed over)."""
    if len(value) < 4 or not key:
        return False
    kind = _key_kind(key) if len(key) <= _KEY_MEMO_CHARS else _key_kind.__wrapped__(key)
    if kind is None:
        return False
    if kind == "password":
        return _password_value(value)
    if len(value) < 8 or " " in value.strip():
        return False
    return len(value) > _ENTROPY_CHARS or _secret_value(value)


_ENTROPY_CHARS: Final = 4096
"""The longest key-field value whose entropy is measured (the one O(n) count a value gets here)."""


_KEY_MEMO_CHARS: Final = 64


@functools.lru_cache(maxsize=1024)
def _key_kind(key: str) -> str | None:
    """What a JSON key says its value is: "password", "secret" (a key-like name) or None (remembered:
    the same few keys come back on every call; only short ones, so the memory stays small)."""
    name = _CAMEL.sub("_", key).lower().replace("-", "_")
    if not _KEY_WORDS.search(name) or _NOT_SECRET_KEYS.search(name):
        return None
    return "password" if _PASSWORD_KEYS.search(name) else "secret"
