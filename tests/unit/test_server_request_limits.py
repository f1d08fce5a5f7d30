"""The byte-bounded LRU, JSON shape checks and GraphQL document limits of `server.request_limits`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from graphql import GraphQLSyntaxError, get_introspection_query, parse
from hypothesis import given
from hypothesis import strategies as st

from server.app import parse_body
from server.request_limits import (
    ByteLRU,
    QueryLimits,
    check_document,
    check_json,
    digest,
    parse_limited,
)

LIMITS = QueryLimits(max_chars=1_000_000, max_tokens=10_000, max_depth=20, max_aliases=100, max_fields=2_000)
RECORDING = Path(__file__).resolve().parents[1] / "integration" / "test_server_operations.txt"


def recorded_queries() -> list[str]:
    queries = set()
    for block in RECORDING.read_text().split("=" * 80):
        lines = block.strip().split("\n")
        if len(lines) >= 3:
            queries.add("\n".join(lines[2:]).split("\nVARIABLES")[0])
    return sorted(queries)


# ---------------------------------------------------------------------------------------------- ByteLRU
def test_lru_evicts_least_recently_used_by_total_bytes() -> None:
    cache: ByteLRU[str] = ByteLRU(max_bytes=100, max_item_bytes=60)
    assert cache.put(b"a", "A", 40) and cache.put(b"b", "B", 40)
    assert cache.get(b"a") == "A"  # now b is the least recently used
    cache.put(b"c", "C", 40)
    assert cache.get(b"b") is None and cache.get(b"a") == "A" and cache.get(b"c") == "C"
    assert cache.total == 80


def test_lru_never_stores_an_item_above_the_item_limit() -> None:
    cache: ByteLRU[str] = ByteLRU(max_bytes=100, max_item_bytes=60)
    cache.put(b"a", "A", 10)
    assert not cache.put(b"big", "X", 61)
    assert cache.get(b"big") is None and cache.get(b"a") == "A" and cache.total == 10


def test_lru_replacing_a_key_recounts_its_cost() -> None:
    cache: ByteLRU[str] = ByteLRU(max_bytes=100, max_item_bytes=100)
    cache.put(b"a", "A", 50)
    cache.put(b"a", "A2", 20)
    assert cache.total == 20 and len(cache) == 1 and cache.get(b"a") == "A2"


@given(st.lists(st.tuples(st.binary(max_size=4), st.integers(0, 80)), max_size=200))
def test_lru_total_never_exceeds_its_budget(puts: list[tuple[bytes, int]]) -> None:
    cache: ByteLRU[int] = ByteLRU(max_bytes=200, max_item_bytes=50)
    for key, cost in puts:
        cache.put(key, cost, cost)
        assert cache.total <= 200
    assert cache.total == sum(cache.get(k) or 0 for k in {k for k, _ in puts})


def test_digest_is_a_fixed_size_key_also_for_surrogates() -> None:
    assert len(digest("x" * 1_000_000)) == 32 and len(digest("\ud800")) == 32


# ---------------------------------------------------------------------------------------------- JSON
def test_check_json_depth_and_surrogates() -> None:
    assert check_json({"a": [1, {"b": "ok ✓"}]}, max_depth=3) is None
    assert "nested too deeply" in str(check_json({"a": [1, {"b": []}]}, max_depth=3))
    assert "surrogate" in str(check_json({"a": ["\ud800"]}, max_depth=10))
    assert "surrogate" in str(check_json({"\udfff": 1}, max_depth=10))
    assert check_json({"emoji": "\U0001f600"}, max_depth=10) is None


def test_deep_json_is_a_value_error_not_a_recursion_error() -> None:
    deep = b'{"query": "{ hello }", "variables": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_body(deep)
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_body(json.dumps({"query": "{ hello }", "variables": "[" * 100_000}).encode())


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"query": "{ hello }", "x": "\xff"}', "not valid UTF-8"),
    (b'{"query": "{ hello }", "x": "\xed\xa0\x80"}', "not valid UTF-8"),  # a raw UTF-8-encoded surrogate
    (b'{"query": "{ hello }", "x": "\\ud800"}', "surrogate"),
    (b'{"query": "{ hello }", "variables": "{\\"a\\": \\"\\\\udc00\\"}"}', "surrogate"),
    (b'[1, 2]', "JSON object"),
])
def test_malformed_bodies_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_body(raw)


def test_a_valid_surrogate_pair_is_accepted() -> None:
    assert parse_body(b'{"query": "{ hello }", "variables": {"e": "\\ud83d\\ude00"}}')["variables"] == {
        "e": "\U0001f600"}


# ---------------------------------------------------------------------------------------------- documents
def codes(query: str, limits: QueryLimits = LIMITS) -> list[str]:
    return [e.original_error.code for e in check_document(parse(query), limits)]  # type: ignore[union-attr]


def test_the_prefect_clients_documents_and_introspection_pass_the_defaults() -> None:
    queries = recorded_queries()
    assert len(queries) > 20
    for query in [*queries, get_introspection_query()]:
        assert check_document(parse_limited(query, LIMITS), LIMITS) == [], query


def test_too_many_tokens() -> None:
    with pytest.raises(Exception, match="max_query_tokens") as excinfo:
        parse_limited("{ " + "a " * 200 + "}", QueryLimits(10**6, 100, 20, 100, 2000))
    assert excinfo.value.original_error.code == "QUERY_TOO_COMPLEX"  # type: ignore[attr-defined]


def test_a_syntax_error_stays_a_syntax_error() -> None:
    with pytest.raises(GraphQLSyntaxError):
        parse_limited("{ hello", LIMITS)


def test_deeply_nested_document_is_too_complex_not_a_recursion_error() -> None:
    deep = "{ a(x: " + "[" * 50_000 + "]" * 50_000 + ") }"
    with pytest.raises(Exception, match="nested too deeply") as excinfo:
        parse_limited(deep, QueryLimits(10**6, 200_000, 20, 100, 2000))
    assert excinfo.value.original_error.code == "QUERY_TOO_COMPLEX"  # type: ignore[attr-defined]


def test_depth_limit() -> None:
    assert codes("{ a { b { c } } }", QueryLimits(10**6, 10_000, 3, 100, 2000)) == []
    assert codes("{ a { b { c { d } } } }", QueryLimits(10**6, 10_000, 3, 100, 2000)) == ["QUERY_TOO_COMPLEX"]


def test_alias_and_field_limits() -> None:
    aliases = "{ " + " ".join(f"a{i}: hello" for i in range(101)) + " }"
    errors = check_document(parse(aliases), LIMITS)
    assert len(errors) == 1 and "max_query_aliases" in errors[0].message
    fields = "{ " + " ".join(f"f{i}" for i in range(11)) + " }"
    errors = check_document(parse(fields), QueryLimits(10**6, 10_000, 20, 100, 10))
    assert "max_query_fields" in errors[0].message


def test_fragments_are_counted_where_they_are_spread() -> None:
    """A fragment bomb: each level doubles the fields; 20 levels would be a million fields to resolve."""
    levels = ["fragment F0 on Query { hello }"]
    levels += [f"fragment F{i} on Query {{ a: __typename ...F{i - 1} b: __typename ...F{i - 1} }}"
               for i in range(1, 21)]
    query = "query { ...F20 }\n" + "\n".join(levels)
    errors = check_document(parse(query), LIMITS)
    assert errors and errors[0].original_error.code == "QUERY_TOO_COMPLEX"  # type: ignore[union-attr]


def test_fragment_depth_adds_up_and_cycles_do_not_hang() -> None:
    query = "query { a { ...F } } fragment F on T { b { c { d } } }"
    assert codes(query, QueryLimits(10**6, 10_000, 3, 100, 2000)) == ["QUERY_TOO_COMPLEX"]
    assert codes(query, QueryLimits(10**6, 10_000, 4, 100, 2000)) == []
    assert codes("query { ...A } fragment A on Q { ...B } fragment B on Q { ...A x }") == []


def test_query_text_length_limit_counts_comments() -> None:
    with pytest.raises(Exception, match="max_query_chars") as excinfo:
        parse_limited("{ hello } #" + "x" * 2000, QueryLimits(2000, 10_000, 20, 100, 2000))
    assert excinfo.value.original_error.code == "QUERY_TOO_COMPLEX"  # type: ignore[attr-defined]
