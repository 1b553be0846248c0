"""google.api.http path templates: grammar, matching, decoding, ordering."""

from __future__ import annotations

import random

import pytest

from gateway._template import TemplateError, parse_template


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/assets/{asset_id}", "/v1/assets/asset_1", {"asset_id": "asset_1"}),
        ("/v1/assets/{asset_id}", "/v1/assets/asset_1/", {"asset_id": "asset_1"}),
        ("/v1/assets", "/v1/assets/", {}),
        (
            "/v1/{name=shelves/*/books/*}",
            "/v1/shelves/s1/books/b2",
            {"name": "shelves/s1/books/b2"},
        ),
        ("/v1/files/{path=**}", "/v1/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/files/{path=**}", "/v1/files/a/b/", {"path": "a/b"}),
        ("/v1/{a.b}/{c}", "/v1/x/y", {"a.b": "x", "c": "y"}),
        ("/v1/echo/{id}:reverse", "/v1/echo/abc:reverse", {"id": "abc"}),
        ("/v1/*/x/{id}", "/v1/anything/x/7", {"id": "7"}),
        # Encoded characters are decoded after matching; an encoded '/' cannot split a segment.
        ("/v1/assets/{asset_id}", "/v1/assets/a%20b%2Fc", {"asset_id": "a b/c"}),
        # Multi-segment variables keep an encoded '/' encoded (reserved expansion).
        ("/v1/files/{path=**}", "/v1/files/a%2Fb/c%20d", {"path": "a%2Fb/c d"}),
    ],
)
def test_matches_and_decodes(template: str, path: str, expected: dict[str, str]) -> None:
    assert parse_template(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/assets/{asset_id}", "/v1/assets"),
        ("/v1/assets/{asset_id}", "/v1/assets/a/b"),
        ("/v1/assets", "/v1/assetsx"),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books"),
        ("/v1/echo/{id}:reverse", "/v1/echo/abc"),
        ("/v1/files/{path=**}", "/v1/files/"),
        ("/v1/assets/{asset_id}", "/v1/assets//"),
    ],
)
def test_rejects_paths_that_do_not_fit(template: str, path: str) -> None:
    assert parse_template(template).match(path) is None


@pytest.mark.parametrize(
    "template",
    [
        "v1/no-leading-slash",
        "/v1/{unclosed",
        "/v1/closed}",
        "/v1/{a={b}}",
        "/v1/{1bad}",
        "/v1/{id}/{id}",
        "/v1/**/tail",
        "/v1/x{id}",
        "/v1//double",
        "/v1/{id=}",
        "/v1/x:",
    ],
)
def test_rejects_malformed_templates(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_equal_shapes_share_a_pattern_and_verbs_sort_first() -> None:
    get = parse_template("/v1/assets/{asset_id}")
    delete = parse_template("/v1/assets/{other}")
    verb = parse_template("/v1/assets/{asset_id}:cancel")
    literal = parse_template("/v1/assets/archive")
    deep = parse_template("/v1/{path=**}")
    assert get.pattern == delete.pattern
    ordered = sorted([deep, get, literal, verb], key=lambda t: t.specificity)
    assert [t.template for t in ordered] == [
        "/v1/assets/{asset_id}:cancel",
        "/v1/assets/archive",
        "/v1/assets/{asset_id}",
        "/v1/{path=**}",
    ]


def test_a_literal_segment_beats_a_variable_whatever_the_declaration_order() -> None:
    templates = [
        "/v1/object/{key}",
        "/v1/object/query",
        "/v1/object/events",
        "/v1/object/{key}/lock",
        "/v1/{name}/books/x",
        "/v1/shelves/{id}/x",
        "/v1/files/{path=**}",
        "/v1/files/{id}",
        "/v1/{path=**}",
    ]
    shuffler = random.Random(7)
    orders = set()
    for _ in range(20):
        shuffled = templates[:]
        shuffler.shuffle(shuffled)
        parsed = sorted((parse_template(t) for t in shuffled), key=lambda t: t.specificity)
        orders.add(tuple(t.template for t in parsed))
    assert len(orders) == 1
    (order,) = orders

    def first_match(path: str) -> str:
        return next(t for t in order if parse_template(t).regex.fullmatch(path))

    assert first_match("/v1/object/query") == "/v1/object/query"
    assert first_match("/v1/object/query/") == "/v1/object/query"
    assert first_match("/v1/object/events") == "/v1/object/events"
    assert first_match("/v1/object/5b98880a270698496c36e392") == "/v1/object/{key}"
    # Position by position from the left, not by counting literals (both have three here).
    assert first_match("/v1/shelves/books/x") == "/v1/shelves/{id}/x"
    assert first_match("/v1/files/a") == "/v1/files/{id}"
    assert first_match("/v1/files/a/b") == "/v1/files/{path=**}"
    assert first_match("/v1/anything/else") == "/v1/{path=**}"
