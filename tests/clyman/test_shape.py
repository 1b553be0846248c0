"""CLyman's error envelope as a pure function: status, err_code, msg_type, items."""

from __future__ import annotations

import grpc
import pytest

from gateway.apis.clyman import render_error
from gateway.errors import ApiError, ErrorRequest

CLYMAN = "/kiln.objects.v1.ClymanService"


@pytest.mark.parametrize(
    ("error", "status", "err_code"),
    [
        (ApiError(grpc.StatusCode.NOT_FOUND, "gone"), 404, 102),
        (
            ApiError(grpc.StatusCode.FAILED_PRECONDITION, "held", reason="ERROR_REASON_LOCK_HELD"),
            423,
            123,
        ),
        (
            ApiError(grpc.StatusCode.INVALID_ARGUMENT, "no", reason="ERROR_REASON_MISSING_FIELD"),
            400,
            122,
        ),
        (ApiError(grpc.StatusCode.INVALID_ARGUMENT, "bad JSON"), 400, 110),
        (
            ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "big",
                reason="ERROR_REASON_TOO_LARGE",
                http_status=413,
            ),
            413,
            110,
        ),
        # What the gateway answers for reasons of its own keeps its status.
        (ApiError(grpc.StatusCode.UNAUTHENTICATED, "who"), 401, 101),
        (ApiError(grpc.StatusCode.UNIMPLEMENTED, "method", http_status=405), 405, 101),
        (ApiError(grpc.StatusCode.INVALID_ARGUMENT, "media", http_status=415), 415, 101),
        (ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"), 429, 101),
        (ApiError(grpc.StatusCode.UNAVAILABLE, "down"), 503, 120),
        (ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"), 504, 120),
        # Anything else is CLyman's processing error.
        (ApiError(grpc.StatusCode.FAILED_PRECONDITION, "state"), 500, 120),
        (ApiError(grpc.StatusCode.ALREADY_EXISTS, "dup"), 500, 120),
        (ApiError(grpc.StatusCode.INTERNAL, "boom"), 500, 120),
        (ApiError(grpc.StatusCode.UNKNOWN, "boom"), 500, 120),
    ],
)
def test_status_and_err_code(error: ApiError, status: int, err_code: int) -> None:
    rendered = render_error(error, ErrorRequest("GET", "/v1/object/k", operation=""))
    assert (rendered.status, rendered.body["err_code"]) == (status, err_code)
    assert rendered.body["err_msg"] == error.message


def test_msg_type_from_the_service_the_route_or_none() -> None:
    plain = ApiError(grpc.StatusCode.NOT_FOUND, "gone")
    service_said = ApiError(
        grpc.StatusCode.NOT_FOUND, "gone", metadata={"msg_type": "13", "transaction_id": "t"}
    )
    get = ErrorRequest(
        "GET", "/v1/object/k", "kiln.objects.v1.ClymanService", f"{CLYMAN}/GetObject"
    )
    prop = ErrorRequest(
        "POST", "/v1/property/query", "kiln.objects.v1.ClymanService", f"{CLYMAN}/QueryProperties"
    )
    nothing = ErrorRequest("GET", "/v1/object/a/b/c")
    assert render_error(plain, get).body == {
        "msg_type": 2,
        "err_code": 102,
        "err_msg": "gone",
        "num_records": 0,
        "objects": [],
    }
    assert render_error(service_said, get).body == {
        "msg_type": 13,
        "err_code": 102,
        "err_msg": "gone",
        "transaction_id": "t",
        "num_records": 0,
        "objects": [],
    }
    assert render_error(plain, prop).body["msg_type"] == 12
    assert render_error(plain, prop).body["properties"] == []
    assert "objects" not in render_error(plain, prop).body
    assert render_error(plain, nothing).body["msg_type"] == -1
