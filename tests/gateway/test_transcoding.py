"""Generic transcoding against a real gRPC service, through the real Starlette app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from services.runtime.auth import TokenVerifier
from services.runtime.config import GatewayConfig
from tests.gateway.conftest import EchoServer

Auth = Callable[..., dict[str, str]]


async def echoed(
    client: httpx.AsyncClient, method: str, url: str, auth: dict[str, str], **kwargs: Any
) -> dict[str, Any]:
    response = await client.request(method, url, headers=auth, **kwargs)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_path_variable_and_body_star(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(
        gw_client,
        "POST",
        "/v1/echo/abc",
        gw_auth(),
        json={"count": 3, "inner": {"key": "k", "value": 9}, "labels": {"a": "b"}},
    )
    request = body["request"]
    assert request["id"] == "abc"
    assert request["count"] == 3
    assert request["inner"]["key"] == "k" and request["inner"]["value"] == 9
    assert request["labels"] == {"a": "b"}


async def test_path_wins_over_the_body(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(gw_client, "POST", "/v1/echo/from-path", gw_auth(), json={"id": "body"})
    assert body["request"]["id"] == "from-path"


async def test_body_star_ignores_query_parameters(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    body = await echoed(gw_client, "POST", "/v1/echo/x?count=5", gw_auth(), json={})
    assert body["request"]["count"] == 0


async def test_defaults_are_emitted_with_json_names(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    request = (await echoed(gw_client, "GET", "/v1/echo/x", gw_auth()))["request"]
    # Every field without presence appears at its default, under its JSON name.
    assert request["count"] == 0 and request["flag"] is False and request["tags"] == []
    assert request["big"] == "0" and request["label"] == "" and request["labels"] == {}
    assert request["color"] == "COLOR_UNSPECIFIED" and request["ratio"] == 0
    # Fields with presence appear only when set.
    assert "inner" not in request and "when" not in request and "maybe" not in request
    assert "display_name" not in request and "displayName" not in request


async def test_query_parameters_by_field_type(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    query = (
        "count=-7&big=9007199254740993&small=4&flag=true&ratio=2.5&fraction=0.5"
        "&color=COLOR_BLUE&tags=a&tags=b&numbers=1&numbers=2&colors=COLOR_RED&colors=2"
        "&inner.key=k&inner.deep.level=3&when=2024-01-02T03:04:05Z&maybe=false"
        "&blob=aGk%3D&label=custom&name=n%20m"
    )
    request = (await echoed(gw_client, "GET", f"/v1/echo/q?{query}", gw_auth()))["request"]
    assert request["count"] == -7
    assert request["big"] == "9007199254740993"  # int64 stays exact, as a string
    assert request["small"] == 4 and request["flag"] is True
    assert request["ratio"] == 2.5 and request["fraction"] == 0.5
    assert request["color"] == "COLOR_BLUE"
    assert request["tags"] == ["a", "b"] and request["numbers"] == [1, 2]
    assert request["colors"] == ["COLOR_RED", "COLOR_BLUE"]
    assert request["inner"] == {"key": "k", "value": 0, "deep": {"level": 3}}
    assert request["when"] == "2024-01-02T03:04:05Z"
    assert request["maybe"] is False
    assert request["blob"] == "aGk="
    assert request["label"] == "custom" and request["name"] == "n m"


async def test_query_accepts_proto_names_and_ignores_unknown_parameters(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    url = "/v1/echo/q?display_name=proto-name&_=1700000000&unknown.deep=1"
    request = (await echoed(gw_client, "GET", url, gw_auth()))["request"]
    assert request["label"] == "proto-name"


async def test_query_cannot_override_a_path_variable(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    request = (await echoed(gw_client, "GET", "/v1/echo/real?id=forged", gw_auth()))["request"]
    assert request["id"] == "real"


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("count=abc", "count"),
        ("count=99999999999", "count"),
        ("flag=maybe", "flag"),
        ("color=PURPLE", "color"),
        ("ratio=fast", "ratio"),
        ("count=1&count=2", "count"),
        ("inner=x", "inner"),
        ("labels=x", "labels"),
        ("count.sub=1", "count"),
        ("when=yesterday", "when"),
    ],
)
async def test_bad_query_values_are_400(
    gw_client: httpx.AsyncClient, gw_auth: Auth, query: str, names: str
) -> None:
    response = await gw_client.get(f"/v1/echo/q?{query}", headers=gw_auth())
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3 and names in body["message"]


async def test_body_field_binding(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(
        gw_client, "PUT", "/v1/echo/n1/note?count=4&note=ignored", gw_auth(), json="hello"
    )
    request = body["request"]
    # The body is the `note` field; the query fills the rest but not `note`.
    assert request["id"] == "n1" and request["note"] == "hello" and request["count"] == 4


async def test_message_body_field_binding(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(
        gw_client, "PATCH", "/v1/echo/m1/inner", gw_auth(), json={"key": "k", "deep": {"level": 2}}
    )
    assert body["request"]["inner"] == {"key": "k", "value": 0, "deep": {"level": 2}}


async def test_multi_segment_and_nested_templates(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    shelves = await echoed(gw_client, "GET", "/v1/shelves/s1/books/b%202", gw_auth())
    assert shelves["request"]["name"] == "shelves/s1/books/b 2"
    files = await echoed(gw_client, "GET", "/v1/files/dir/sub/file.txt", gw_auth())
    assert files["request"]["path"] == "dir/sub/file.txt"
    nested = await echoed(gw_client, "GET", "/v1/nested/key1/42", gw_auth())
    assert nested["request"]["inner"]["key"] == "key1"
    assert nested["request"]["inner"]["deep"]["level"] == 42
    bad = await gw_client.get("/v1/nested/key1/not-a-number", headers=gw_auth())
    assert bad.status_code == 400 and bad.json()["code"] == 3


async def test_custom_verb_routes_before_the_plain_variable(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    body = await echoed(gw_client, "POST", "/v1/echo/abc:reverse", gw_auth(), json={"count": 1})
    assert body["request"]["id"] == "abc"


async def test_additional_binding_without_variables(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    body = await echoed(gw_client, "GET", "/v1/echo?id=from-query", gw_auth())
    assert body["request"]["id"] == "from-query"


async def test_trailing_slash_is_accepted(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(gw_client, "POST", "/v1/echo/slash/", gw_auth(), json={"count": 2})
    assert body["request"]["id"] == "slash" and body["request"]["count"] == 2


async def test_response_body_selects_a_field(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(gw_client, "GET", "/v1/inner/r1?count=5", gw_auth())
    # Only the `request` field of EchoResponse: no `metadata`, no wrapper.
    assert body["id"] == "r1" and body["count"] == 5 and "metadata" not in body


async def test_metadata_is_forwarded(
    gw_client: httpx.AsyncClient, gw_auth: Auth, gw_config: GatewayConfig
) -> None:
    auth = gw_auth("tenant-meta")
    response = await gw_client.get("/v1/echo/m", headers={**auth, "X-Request-Id": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    metadata = response.json()["metadata"]
    assert metadata["x-request-id"] == "req-42"
    assert metadata["authorization"] == auth["Authorization"]
    verifier = TokenVerifier.from_files(gw_config.auth.public_key_files, issuer="kiln")
    assert verifier.verify(metadata["authorization"].split()[1]).tenant == "tenant-meta"


async def test_request_id_is_made_when_absent_or_unsafe(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    made = await gw_client.get("/v1/echo/m", headers=gw_auth())
    assert len(made.headers["x-request-id"]) == 32
    assert made.json()["metadata"]["x-request-id"] == made.headers["x-request-id"]
    unsafe = await gw_client.get("/v1/echo/m", headers={**gw_auth(), "X-Request-Id": "a b\tc"})
    assert unsafe.headers["x-request-id"] != "a b\tc"
    # Error answers carry it too.
    missing = await gw_client.get("/nowhere", headers={"X-Request-Id": "err-1"})
    assert missing.headers["x-request-id"] == "err-1"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"count": 1', "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b'{"count": NaN}', "malformed JSON"),
        (b'{"count": "many"}', "count"),
        (b'{"flag": "yes"}', "flag"),
        (b'{"inner": 5}', "inner"),
        (b'{"unknownField": 1}', "unknownField"),
        (b"[1, 2]", "must be an object"),
    ],
)
async def test_bad_json_bodies_are_400_and_reach_nothing(
    gw_client: httpx.AsyncClient,
    gw_auth: Auth,
    gw_echo: EchoServer,
    content: bytes,
    fragment: str,
) -> None:
    before = gw_echo.servicer.calls
    response = await gw_client.post(
        "/v1/echo/x",
        content=content,
        headers={**gw_auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3 and fragment in body["message"]
    assert gw_echo.servicer.calls == before


async def test_camel_and_proto_names_both_accepted_in_bodies(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    camel = await echoed(gw_client, "POST", "/v1/echo/c", gw_auth(), json={"label": "x"})
    proto = await echoed(gw_client, "POST", "/v1/echo/c", gw_auth(), json={"display_name": "y"})
    assert camel["request"]["label"] == "x" and proto["request"]["label"] == "y"


async def test_empty_body_sets_nothing(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    body = await echoed(gw_client, "POST", "/v1/echo/e", gw_auth(), content=b"")
    assert body["request"]["id"] == "e" and body["request"]["count"] == 0


async def test_body_over_the_limit_is_413(
    gw_client: httpx.AsyncClient, gw_auth: Auth, gw_echo: EchoServer, gw_config: GatewayConfig
) -> None:
    before = gw_echo.servicer.calls
    big = b'{"note": "' + b"x" * gw_config.max_body_bytes + b'"}'
    response = await gw_client.post("/v1/echo/big", content=big, headers=gw_auth())
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == 8 and str(gw_config.max_body_bytes) in body["message"]
    assert body["details"][0]["reason"] == "ERROR_REASON_TOO_LARGE"

    async def chunks() -> Any:
        # No Content-Length: the limit applies while reading.
        for _ in range(4):
            yield b" " * (gw_config.max_body_bytes // 2)

    streamed = await gw_client.post("/v1/echo/big", content=chunks(), headers=gw_auth())
    assert streamed.status_code == 413
    assert gw_echo.servicer.calls == before


async def test_unsupported_content_type_is_415(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    response = await gw_client.post("/v1/echo/f", data={"count": "1"}, headers=gw_auth())
    assert response.status_code == 415 and response.json()["code"] == 3


async def test_unknown_route_and_wrong_method(gw_client: httpx.AsyncClient, gw_auth: Auth) -> None:
    missing = await gw_client.get("/v1/nothing/here", headers=gw_auth())
    assert missing.status_code == 404
    assert missing.json() == {
        "code": 5,
        "message": "no route for GET /v1/nothing/here",
        "details": [],
    }
    wrong = await gw_client.delete("/v1/echo/x", headers=gw_auth())
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "POST"}
    assert wrong.json()["code"] == 12


async def test_streaming_methods_are_not_transcoded(
    gw_client: httpx.AsyncClient, gw_auth: Auth
) -> None:
    response = await gw_client.post("/v1/chat", json={}, headers=gw_auth())
    assert response.status_code == 404
