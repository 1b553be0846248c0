"""Claid's request contract: every request is checked whole, and refused with field paths."""

from __future__ import annotations

from typing import Any

import pytest

from services.render.imaging import (
    EditNotSupported,
    EditRequestInvalid,
    claid_validation_body,
    validate_edit_request,
)

URL = "https://images.example.com/photo.jpg"


def request(operations: dict[str, Any], output: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"input": URL, "operations": operations}
    if output is not None:
        body["output"] = output
    return body


def test_the_seeds_request_validates_and_is_normalized() -> None:
    normalized = validate_edit_request(
        request({"resizing": {"width": 1000}, "background": {"remove": False}})
    )
    assert normalized["input"] == URL
    assert normalized["operations"]["resizing"]["width"] == 1000
    assert normalized["operations"]["resizing"]["height"] == "auto"
    assert normalized["operations"]["background"]["remove"] is False


@pytest.mark.parametrize(
    "operations",
    [
        {},
        {"resizing": {"width": "50%", "height": "50%"}},
        {"resizing": {"width": 400, "height": 300, "fit": "canvas"}},
        {"resizing": {"width": 400, "height": 300, "fit": {"type": "crop", "crop": "smart"}}},
        {"adjustments": {"hdr": {"intensity": 60, "stitching": True}, "exposure": -20}},
        {"adjustments": {"saturation": 100, "contrast": -100, "sharpness": 50}},
        {"restorations": {"decompress": "auto", "upscale": "smart_enhance", "polish": True}},
        {"background": {"blur": {"type": "lens", "level": "high"}}},
        {"padding": "10px 5%"},
        {"privacy": {"blur_car_plate": True}},
    ],
)
def test_documented_operations_are_accepted(operations: dict[str, Any]) -> None:
    validate_edit_request(request(operations))


@pytest.mark.parametrize(
    ("operations", "output", "path"),
    [
        ({"resizing": {"width": 0}}, None, "operations.resizing.width"),
        ({"resizing": {"width": "auto", "height": "auto"}}, None, "operations.resizing"),
        ({"resizing": {"fit": "stretch"}}, None, "operations.resizing.fit"),
        ({"adjustments": {"exposure": 101}}, None, "operations.adjustments.exposure"),
        ({"adjustments": {"sharpness": -1}}, None, "operations.adjustments.sharpness"),
        ({"adjustments": {"hdr": True}}, None, "operations.adjustments.hdr"),
        ({"restorations": {"decompress": "extreme"}}, None, "operations.restorations.decompress"),
        ({"background": {"color": "red"}}, None, "operations.background.color"),
        ({"background": {"color": "transparent"}}, "jpeg", "operations.background.color"),
        ({"padding": "1px 2px 3px"}, None, "operations.padding"),
        ({"privacy": {"blur_car_plate": "yes"}}, None, "operations.privacy.blur_car_plate"),
        ({"resizing": {"widht": 10}}, None, "operations.resizing.widht"),
        ({}, {"format": {"type": "jpeg", "quality": 0}}, "output.format.quality"),
        ({}, {"format": "bmp"}, "output.format"),
    ],
)
def test_each_broken_rule_is_a_422_naming_its_field(
    operations: dict[str, Any], output: Any, path: str
) -> None:
    with pytest.raises(EditRequestInvalid) as refused:
        validate_edit_request(request(operations, output))
    body = claid_validation_body(refused.value)
    assert body["error_code"] == "9000" and body["error_type"] == "validation"
    assert path in body["error_details"], body


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(EditRequestInvalid) as refused:
        validate_edit_request(
            {
                "input": "ftp://host/file",
                "operations": {"adjustments": {"exposure": 500}, "zzz": {}},
                "extra": 1,
            }
        )
    details = refused.value.details
    assert {"input", "operations.adjustments.exposure", "operations.zzz", "extra"} <= set(details)


@pytest.mark.parametrize("body", [None, [], "text", {"operations": {}}, {"input": URL}])
def test_bodies_that_are_not_requests_are_refused(body: Any) -> None:
    with pytest.raises(EditRequestInvalid):
        validate_edit_request(body)


@pytest.mark.parametrize(
    "operations",
    [
        {"resizing": {"width": 100, "fit": "outpaint"}},
        {"generative": {"style_transfer": {"style_reference_image": URL, "prompt": "oil paint"}}},
    ],
)
def test_what_cannot_run_offline_is_refused_plainly(operations: dict[str, Any]) -> None:
    with pytest.raises(EditNotSupported) as refused:
        validate_edit_request(request(operations))
    assert "offline" in refused.value.message


def test_storage_inputs_and_outputs_are_accepted() -> None:
    validate_edit_request(
        {
            "input": "storage://my_storage/folder/photo.png",
            "operations": {},
            "output": {"destination": "storage://my_storage/out/", "format": "png"},
        }
    )
