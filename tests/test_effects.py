"""SPEC §6 effect classification: tokenizer, keyword tiers, overrides, annotations, cache."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.action import Action, Effect
from proxy.core.effects import CACHE_LIMIT, EffectClassifier, classify_name, tokenize

R, M, D, A = Effect.READ, Effect.MUTATING, Effect.DESTRUCTIVE, Effect.ADMIN

# Written out from SPEC §6 rather than imported, so the table in the module is what's under test.
SPEC_KEYWORDS: dict[Effect, tuple[str, ...]] = {
    R: ("get", "list", "read", "describe", "search", "view", "fetch", "query", "head"),
    M: (
        "write",
        "update",
        "create",
        "execute",
        "invoke",
        "modify",
        "send",
        "put",
        "post",
        "commit",
        "push",
        "deploy",
    ),
    D: ("delete", "drop", "destroy", "purge", "terminate", "remove", "truncate"),
    A: ("admin", "transfer_ownership", "revoke", "escalate", "grant", "impersonate"),
}
ALL_KEYWORDS = [(word, tier) for tier, words in SPEC_KEYWORDS.items() for word in words]
SINGLE_KEYWORDS = {word for word, _ in ALL_KEYWORDS if "_" not in word} | {"transfer", "ownership"}
SEPARATORS = ("_", "-", ".", "/", " ")

UPSTREAM = "http://u"
TRUSTED = "http://trusted"


def act(
    name: str,
    annotations: Mapping[str, Any] | None = None,
    upstream: str = UPSTREAM,
    fixed_effect: Effect | None = None,
) -> Action:
    return Action(
        protocol="mcp",
        method="tools/call",
        name=name,
        arguments={},
        agent_id="a",
        session_id="s",
        upstream=upstream,
        annotations=annotations,
        is_tool_call=True,
        fixed_effect=fixed_effect,
    )


def classifier(overrides: Callable[[str], Effect | None] | None = None, **kwargs: Any) -> EffectClassifier:
    return EffectClassifier(
        overrides=overrides or (lambda n: None), is_trusted_upstream=lambda u: u == TRUSTED, **kwargs
    )


def camel(words: list[str]) -> str:
    return words[0] + "".join(w.capitalize() for w in words[1:])


def spellings(keyword: str) -> list[str]:
    """The keyword in every naming style, bare and between non-keyword words."""
    words = keyword.split("_")
    styles = [
        "_".join(words),
        "-".join(words),
        ".".join(words),
        "/".join(words),
        " ".join(words),
        camel(words),
        "".join(w.capitalize() for w in words),
        "_".join(words).upper(),
        "-".join(words).upper(),
    ]
    out = list(styles)
    for style in styles[:5]:
        sep = style[len(words[0])] if len(words) > 1 else "_"
        out += [f"my{sep}{style}", f"{style}{sep}thing", f"my{sep}{style}{sep}thing"]
    out += [
        camel(["my", *words]),
        camel([*words, "thing"]),
        camel(["my", *words, "thing"]),
        "".join(w.capitalize() for w in ["my", *words, "thing"]),
        "MY_" + "_".join(words).upper() + "_THING",
        "db." + "_".join(words),
        "api/v1/" + "-".join(words),
        "HTTP" + "".join(w.capitalize() for w in words),
        "s3" + "".join(w.capitalize() for w in words),
        "_".join(words) + "_v2",
    ]
    return out


# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("get_weather", ("get", "weather")),
        ("listFiles", ("list", "files")),
        ("ListFiles", ("list", "files")),
        ("purge-cache", ("purge", "cache")),
        ("db.drop_table", ("db", "drop", "table")),
        ("api/v1/users", ("api", "v1", "users")),
        ("send email now", ("send", "email", "now")),
        ("HTTPGet", ("http", "get")),
        ("getHTTPResponse", ("get", "http", "response")),
        ("getHTTP", ("get", "http")),
        ("HTTP2Get", ("http2", "get")),
        ("s3Delete", ("s3", "delete")),
        ("deleteS3Bucket", ("delete", "s3", "bucket")),
        ("ec2_terminate", ("ec2", "terminate")),
        ("oauth2token", ("oauth2", "token")),
        ("2fa", ("2", "fa")),
        ("GET_WEATHER", ("get", "weather")),
        ("transferOwnership", ("transfer", "ownership")),
        ("__get__weather__", ("get", "weather")),
        ("get::weather", ("get", "weather")),
        ("", ()),
        ("___", ()),
        ("über_get", ("ber", "get")),
    ],
)
def test_tokenize(name: str, tokens: tuple[str, ...]) -> None:
    assert tokenize(name) == tokens


def test_tokenize_returns_tuple() -> None:
    assert isinstance(tokenize("a_b"), tuple)


# --------------------------------------------------------------------------- keyword tiers


@pytest.mark.parametrize(("keyword", "tier"), ALL_KEYWORDS)
def test_every_spec_keyword_in_every_spelling(keyword: str, tier: Effect) -> None:
    for name in spellings(keyword):
        assert classify_name(name) is tier, name


@pytest.mark.parametrize(
    ("name", "tier"),
    [
        ("removeUser", D),
        ("purge-cache", D),
        ("db.drop_table", D),
        ("getAndDelete", D),
        ("get_weather", R),
        ("listFiles", R),
        ("transferOwnership", A),
        ("transfer-ownership", A),
        ("transfer_ownership", A),
        ("TRANSFEROWNERSHIP", A),
        ("frobnicate", M),
        ("", M),
        ("   ", M),
        ("weather", M),
        ("transfer", M),
        ("ownership", M),
        ("transfer_funds", M),
        ("ownership_transfer", M),
        ("s3Delete", D),
        ("HTTPGet", R),
        ("delete2", D),
        ("getV2", R),
        ("getter", M),  # whole words only, no substrings
        ("undelete", M),
        ("headless_browser", M),
        ("get_admin_token", A),
    ],
)
def test_examples(name: str, tier: Effect) -> None:
    assert classify_name(name) is tier


@pytest.mark.parametrize(
    ("name", "tier"),
    [
        ("get_and_update", M),
        ("read_then_write", M),
        ("list_and_delete", D),
        ("update_or_drop", D),
        ("delete_then_grant", A),
        ("grantRead", A),
        ("search_purge_deploy", D),
        ("fetch.post.list", M),
        ("revoke_list_delete_write", A),
        ("view_transfer_ownership_report", A),
    ],
)
def test_highest_tier_wins(name: str, tier: Effect) -> None:
    assert classify_name(name) is tier


# --------------------------------------------------------------------------- classifier


def test_fixed_effect_wins_over_everything() -> None:
    c = classifier(overrides=lambda n: A)
    assert c.classify(act("delete_all", {"destructiveHint": True}, fixed_effect=R)) is R


def test_override_first_and_final() -> None:
    c = classifier(overrides=lambda n: R if n == "delete_temp" else None)
    # Override beats the keyword and annotations, even from an untrusted upstream.
    assert c.classify(act("delete_temp")) is R
    assert c.classify(act("delete_temp", {"destructiveHint": True, "readOnlyHint": False})) is R
    assert c.classify(act("delete_other")) is D


def test_override_can_raise() -> None:
    c = classifier(overrides=lambda n: A if n.startswith("get_secret") else None)
    assert c.classify(act("get_secret_key", {"readOnlyHint": True}, upstream=TRUSTED)) is A


def test_no_annotations_is_keyword_rule() -> None:
    c = classifier()
    for name in ("get_weather", "frobnicate", "removeUser", "grant_role"):
        assert c.classify(act(name)) is classify_name(name)
        assert c.classify(act(name, {})) is classify_name(name)
        assert c.classify(act(name, upstream=TRUSTED)) is classify_name(name)


@pytest.mark.parametrize(
    ("name", "annotations", "untrusted", "trusted"),
    [
        # readOnlyHint: true suggests READ: lowers only for trusted.
        ("frobnicate", {"readOnlyHint": True}, M, R),
        ("delete_cache", {"readOnlyHint": True}, D, R),
        ("get_weather", {"readOnlyHint": True}, R, R),
        # readOnly makes destructiveHint meaningless.
        ("get_weather", {"readOnlyHint": True, "destructiveHint": True}, R, R),
        # readOnlyHint: false suggests at least MUTATING: raises for anyone.
        ("get_weather", {"readOnlyHint": False}, M, M),
        ("delete_cache", {"readOnlyHint": False}, D, D),
        # destructiveHint: true raises to DESTRUCTIVE.
        ("get_weather", {"destructiveHint": True}, D, D),
        ("frobnicate", {"destructiveHint": True, "readOnlyHint": False}, D, D),
        # destructiveHint: false suggests at most MUTATING: lowers only for trusted.
        ("delete_cache", {"destructiveHint": False}, D, M),
        ("delete_cache", {"readOnlyHint": False, "destructiveHint": False}, D, M),
        ("get_weather", {"destructiveHint": False}, R, R),
        ("get_weather", {"readOnlyHint": False, "destructiveHint": False}, M, M),
        # Admin is never lowered, trusted or not.
        ("grant_role", {"readOnlyHint": True}, A, A),
        ("grant_role", {"destructiveHint": False}, A, A),
        ("revokeToken", {"readOnlyHint": False, "destructiveHint": False}, A, A),
        ("transferOwnership", {"readOnlyHint": True, "destructiveHint": False}, A, A),
        ("grant_role", {"destructiveHint": True}, A, A),
        # MCP defaults are not applied; other hints and non-boolean values are ignored.
        ("get_weather", {"title": "Weather", "openWorldHint": True, "idempotentHint": True}, R, R),
        ("delete_cache", {"readOnlyHint": "true"}, D, D),
        ("get_weather", {"destructiveHint": 1}, R, R),
        ("get_weather", {"destructiveHint": None}, R, R),
    ],
)
def test_annotations(name: str, annotations: dict[str, Any], untrusted: Effect, trusted: Effect) -> None:
    c = classifier()
    assert c.classify(act(name, annotations, upstream=UPSTREAM)) is untrusted
    assert c.classify(act(name, annotations, upstream=TRUSTED)) is trusted


def test_annotations_in_any_mapping_count_like_a_dict() -> None:
    """A plain dict skips the ABC check; any other Mapping must be read the same way."""
    for hints in ({"readOnlyHint": True}, {"destructiveHint": True}, {"readOnlyHint": False}, {"x": 1}):
        for upstream in (UPSTREAM, TRUSTED):
            as_dict = classifier().classify(act("delete_cache", hints, upstream=upstream))
            proxied = classifier().classify(act("delete_cache", MappingProxyType(hints), upstream=upstream))
            assert proxied is as_dict


def test_non_mapping_annotations_ignored() -> None:
    c = classifier()
    assert c.classify(act("get_weather", ["readOnlyHint"])) is R  # type: ignore[arg-type]


def test_annotations_never_lower_untrusted_any_name() -> None:
    c = classifier()
    lowering = [{"readOnlyHint": True}, {"destructiveHint": False}, {"readOnlyHint": True, "destructiveHint": False}]
    for name in ("frobnicate", "delete_x", "update_x", "get_x", "grant_x"):
        for ann in lowering:
            assert c.classify(act(name, ann)) >= classify_name(name)


def test_cache_returns_same_and_avoids_recompute() -> None:
    calls: list[str] = []

    def overrides(name: str) -> Effect | None:
        calls.append(name)
        return None

    c = classifier(overrides=overrides)
    first = c.classify(act("removeUser"))
    assert c.classify(act("removeUser")) is first is D
    assert calls == ["removeUser"]
    assert len(c) == 1
    # A different upstream or hint value is a different key.
    c.classify(act("removeUser", upstream=TRUSTED))
    c.classify(act("removeUser", {"destructiveHint": False}, upstream=TRUSTED))
    assert len(c) == 3
    # Irrelevant annotation keys share the key of "no hints".
    c.classify(act("removeUser", {"title": "x"}))
    assert len(c) == 3


def test_cache_keyed_on_hints() -> None:
    c = classifier()
    assert c.classify(act("delete_x", upstream=TRUSTED)) is D
    assert c.classify(act("delete_x", {"destructiveHint": False}, upstream=TRUSTED)) is M
    assert c.classify(act("delete_x", {"readOnlyHint": True}, upstream=TRUSTED)) is R
    assert c.classify(act("delete_x", upstream=TRUSTED)) is D


def test_clear_picks_up_new_policy() -> None:
    table: dict[str, Effect] = {}
    c = classifier(overrides=table.get)
    assert c.classify(act("frobnicate")) is M
    table["frobnicate"] = R
    assert c.classify(act("frobnicate")) is M  # still cached
    c.clear()
    assert len(c) == 0
    assert c.classify(act("frobnicate")) is R


def test_fixed_effect_not_cached() -> None:
    c = classifier()
    c.classify(act("tools/list", fixed_effect=R))
    assert len(c) == 0


def test_cache_is_bounded() -> None:
    c = classifier(max_cache=50)
    for i in range(500):
        c.classify(act(f"tool_{i}"))
        assert len(c) <= 50
    assert c.classify(act("delete_x")) is D


def test_default_cache_bound() -> None:
    c = classifier()
    for i in range(CACHE_LIMIT + 10):
        c.classify(act(f"t{i}"))
    assert 0 < len(c) <= CACHE_LIMIT


def test_long_names_not_cached() -> None:
    c = classifier()
    name = "x_" * 5000 + "delete"
    assert c.classify(act(name)) is D
    assert len(c) == 0


def test_hostile_long_names_classify_without_error() -> None:
    """Huge names in the shapes that make backtracking regexes blow up still classify (no timing asserts:
    the tokenizer's regex has no nested quantifiers, which is what keeps it linear)."""
    for name in ("A" * 100_000, "A1" * 50_000, "aA" * 50_000, "_" * 100_000, "1" * 100_000, "AB2" * 30_000):
        assert classify_name(name) is Effect.MUTATING


# --------------------------------------------------------------------------- properties

# Words of 2+ letters with optional trailing digits: two adjacent one-letter words are
# inherently ambiguous in camelCase ("getAB"), so they are left out of the join property.
word_st = st.from_regex(r"[a-z]{2,8}[0-9]{0,2}", fullmatch=True)
non_keyword_st = word_st.filter(lambda w: w.rstrip("0123456789") not in SINGLE_KEYWORDS | {"transferownership"})
keyword_st = st.sampled_from([w for w in SINGLE_KEYWORDS if w not in ("transfer", "ownership")])
any_word_st = st.one_of(word_st, keyword_st)
words_st = st.lists(any_word_st, min_size=1, max_size=6)


def join(words: list[str], style: str) -> str:
    if style == "camel":
        return camel(words)
    if style == "pascal":
        return "".join(w.capitalize() for w in words)
    if style == "upper":
        return "_".join(words).upper()
    return style.join(words)


styles_st = st.sampled_from([*SEPARATORS, "camel", "pascal", "upper"])


@given(st.text(max_size=60))
def test_tokens_are_lowercase_clean_words(name: str) -> None:
    for token in tokenize(name):
        assert token
        assert token == token.lower()
        assert token.isascii() and token.isalnum()
        assert not any(sep in token for sep in SEPARATORS)


@given(words_st, styles_st)
def test_every_join_style_gives_the_same_tokens(words: list[str], style: str) -> None:
    assert tokenize(join(words, style)) == tuple(words)


@given(words_st, styles_st, styles_st)
def test_join_style_never_changes_tier(words: list[str], style_a: str, style_b: str) -> None:
    assert classify_name(join(words, style_a)) is classify_name(join(words, style_b))


@given(words_st, st.sampled_from(SEPARATORS), st.lists(st.sampled_from(["lower", "upper", "title"]), min_size=6))
def test_classify_name_is_case_insensitive(words: list[str], sep: str, cases: list[str]) -> None:
    base = classify_name(sep.join(words))
    recased = sep.join(getattr(w, case)() for w, case in zip(words, cases, strict=False))
    assert classify_name(recased) is base
    assert classify_name(sep.join(words).upper()) is base


@given(st.lists(non_keyword_st, min_size=1, max_size=6), styles_st)
def test_non_keyword_names_are_mutating(words: list[str], style: str) -> None:
    assert classify_name(join(words, style)) is M


@given(words_st, keyword_st, st.data())
def test_appending_a_word_never_lowers_a_keyword_name(words: list[str], keyword: str, data: st.DataObject) -> None:
    # Monotone once any keyword matched. (A name with no keyword is mutating by the
    # fail-safe default, so appending a read word to it legitimately lowers it to read.)
    position = data.draw(st.integers(0, len(words)))
    words = [*words[:position], keyword, *words[position:]]
    extra = data.draw(any_word_st)
    sep = data.draw(st.sampled_from(SEPARATORS))
    before = classify_name(sep.join(words))
    after_append = classify_name(sep.join([*words, extra]))
    after_prepend = classify_name(sep.join([extra, *words]))
    assert after_append >= before
    assert after_prepend >= before


@given(words_st, st.sampled_from(SEPARATORS))
def test_tier_is_max_of_keyword_tiers(words: list[str], sep: str) -> None:
    tiers = [tier for w in words for kw, tier in ALL_KEYWORDS if kw == w.rstrip("0123456789")]
    expected = max(tiers) if tiers else M
    assert classify_name(sep.join(words)) is expected


@given(words_st, st.sampled_from([None, True, False]), st.sampled_from([None, True, False]), st.booleans())
def test_annotations_only_lower_when_trusted(
    words: list[str], read_only: bool | None, destructive: bool | None, trusted: bool
) -> None:
    name = "_".join(words)
    ann = {k: v for k, v in (("readOnlyHint", read_only), ("destructiveHint", destructive)) if v is not None}
    c = classifier()
    result = c.classify(act(name, ann, upstream=TRUSTED if trusted else UPSTREAM))
    base = classify_name(name)
    if not trusted or base is A:
        assert result >= base
    assert c.classify(act(name, ann, upstream=TRUSTED if trusted else UPSTREAM)) is result
