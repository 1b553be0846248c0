"""CLyman's error envelope for every failure under /v1/object and /v1/property, with the
status and err_code of api-spec §5.2 / §5.5, whether the service or the gateway refused."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from services.runtime.config import load_gateway_config
from tests.clyman.conftest import MAX_BODY_BYTES, Clyman
from tests.conftest import Suite
from tests.gateway.conftest import serving, suite_gateway_env

UNKNOWN = "0123456789abcdef01234567"


def envelope(
    msg_type: int, err_code: int, items: str = "objects", **extra: Any
) -> Callable[[dict[str, Any]], bool]:
    """Checks a body is exactly CLyman's error envelope (any err_msg, non-empty)."""

    def check(body: dict[str, Any]) -> bool:
        expected = {
            "msg_type": msg_type,
            "err_code": err_code,
            "err_msg": body.get("err_msg"),
            **extra,
            "num_records": 0,
            items: [],
        }
        assert body == expected
        assert isinstance(body["err_msg"], str) and body["err_msg"]
        return True

    return check


async def create(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post("/v1/object", json={"objects": [{"name": "e", **fields}]})
    assert response.status_code == 200, response.text
    key: str = response.json()["objects"][0]["key"]
    return key


@pytest.mark.parametrize(
    ("method", "path", "msg_type"),
    [
        ("POST", "/v1/object", 0),
        ("POST", "/v1/object/{key}", 1),
        ("POST", "/v1/object/query", 4),
        ("POST", "/v1/property", 8),
        ("POST", "/v1/property/{key}", 9),
        ("POST", "/v1/property/query", 12),
    ],
)
async def test_malformed_json_is_400_translation_error(
    clyman: Clyman, method: str, path: str, msg_type: int
) -> None:
    path = path.format(key=UNKNOWN)
    items = "properties" if path.startswith("/v1/property") else "objects"
    headers = {"Content-Type": "application/json"}
    for body in (b'{"objects": [', b"{bad}", b"\xff\xfe"):
        response = await clyman.client.request(method, path, content=body, headers=headers)
        assert response.status_code == 400, (path, body, response.text)
        assert envelope(msg_type, 110, items)(response.json())
    # A parser's own words, as CLyman put rapidjson's message in err_msg.
    truncated = await clyman.client.request(method, path, content=b'{"a": ', headers=headers)
    assert "Expecting value" in truncated.json()["err_msg"]


async def test_a_body_that_is_not_a_json_object_is_400(clyman: Clyman) -> None:
    for body in (b"[1, 2]", b'"objects"', b"42"):
        response = await clyman.client.post(
            "/v1/object", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert envelope(0, 110)(response.json())
        assert response.json()["err_msg"] == "the JSON body must be an object"


async def test_unknown_keys_are_404_not_found(clyman: Clyman) -> None:
    cases = [
        ("GET", f"/v1/object/{UNKNOWN}", None, 2),
        ("POST", f"/v1/object/{UNKNOWN}", {"objects": [{"name": "x"}]}, 1),
        ("DELETE", f"/v1/object/{UNKNOWN}", None, 3),
        ("GET", f"/v1/object/{UNKNOWN}/lock?device=1", None, 5),
        ("DELETE", f"/v1/object/{UNKNOWN}/lock?device=1", None, 6),
        ("PUT", f"/v1/object/{UNKNOWN}/asset/a1", None, 13),
        ("DELETE", f"/v1/object/{UNKNOWN}/asset/a1", None, 14),
        ("GET", "/v1/object/not-even-a-key", None, 2),
    ]
    for method, path, body, msg_type in cases:
        response = await clyman.client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert envelope(msg_type, 102)(response.json())
    for method, msg_type in (("GET", 10), ("DELETE", 11)):
        response = await clyman.client.request(method, f"/v1/property/{UNKNOWN}")
        assert response.status_code == 404
        assert envelope(msg_type, 102, "properties")(response.json())


async def test_the_transaction_id_is_echoed_on_errors(clyman: Clyman) -> None:
    response = await clyman.client.post(
        f"/v1/object/{UNKNOWN}",
        json={"transaction_id": "tx-42", "objects": [{"name": "x"}]},
    )
    assert response.status_code == 404
    assert envelope(1, 102, transaction_id="tx-42")(response.json())


async def test_locks_held_missing_devices_and_foreign_unlocks(clyman: Clyman) -> None:
    key = await create(clyman.client)
    assert (await clyman.client.get(f"/v1/object/{key}/lock?device=a")).status_code == 200
    for device in ("b", "a"):  # held by anyone, the holder included: CLyman's rule
        held = await clyman.client.get(f"/v1/object/{key}/lock?device={device}")
        assert held.status_code == 423, held.text
        assert envelope(5, 123)(held.json())
    foreign = await clyman.client.delete(f"/v1/object/{key}/lock?device=b")
    assert foreign.status_code == 423
    assert envelope(6, 123)(foreign.json())
    for method, msg_type in (("GET", 5), ("DELETE", 6)):
        no_device = await clyman.client.request(method, f"/v1/object/{key}/lock")
        assert no_device.status_code == 400, no_device.text
        assert envelope(msg_type, 122)(no_device.json())
    assert (await clyman.client.delete(f"/v1/object/{key}/lock?device=a")).status_code == 200


async def test_unknown_routes_and_methods(clyman: Clyman) -> None:
    for path, items in (
        ("/v1/object/a/b/c/d", "objects"),
        ("/v1/object/a/lock/x", "objects"),
        ("/v1/property/a/b", "properties"),
    ):
        response = await clyman.client.get(path)
        assert response.status_code == 404, path
        # No CLyman operation: CLyman's own "unset" msg_type.
        assert envelope(-1, 102, items)(response.json())
    wrong = await clyman.client.patch(f"/v1/object/{UNKNOWN}")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "DELETE, GET, POST"
    assert envelope(-1, 101)(wrong.json())


async def test_oversized_bodies_are_413(clyman: Clyman) -> None:
    big = {"objects": [{"name": "x" * (MAX_BODY_BYTES + 1)}]}
    for path, msg_type, items in (
        ("/v1/object", 0, "objects"),
        (f"/v1/object/{UNKNOWN}", 1, "objects"),
        ("/v1/property", 8, "properties"),
    ):
        response = await clyman.client.post(path, json=big)
        assert response.status_code == 413, response.text
        assert envelope(msg_type, 110, items)(response.json())


async def test_credentials_sent_are_checked_and_answer_in_the_envelope(
    clyman: Clyman, token_for: Callable[..., str]
) -> None:
    refused = await clyman.client.get(
        f"/v1/object/{UNKNOWN}", headers={"Authorization": "Bearer not-a-token"}
    )
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert envelope(2, 101)(refused.json())
    # A valid token acts as its own tenant, not the anonymous one.
    key = await create(clyman.client)
    other = {"Authorization": f"Bearer {token_for(f'other-{uuid.uuid4().hex[:6]}')}"}
    assert (await clyman.client.get(f"/v1/object/{key}", headers=other)).status_code == 404
    assert (await clyman.client.get(f"/v1/object/{key}")).status_code == 200


async def test_without_an_anonymous_tenant_credentials_are_required(
    suite: Suite, tmp_path: Any, token_for: Callable[..., str]
) -> None:
    env = suite_gateway_env(suite.target_env(), tmp_path)
    async with serving(build_app(load_gateway_config(env))) as client:
        missing = await client.get(f"/v1/object/{UNKNOWN}")
        events = await client.get("/v1/object/events")
        authorised = await client.get(
            f"/v1/object/{UNKNOWN}", headers={"Authorization": f"Bearer {token_for('t')}"}
        )
    assert missing.status_code == 401
    assert envelope(2, 101)(missing.json())
    assert events.status_code == 401
    assert envelope(-1, 101)(events.json())
    assert authorised.status_code == 404
