"""Claid's edit request contract (api-spec §4.3): every rule with a valid and an invalid case,
unknown keys at every level, the normalized copy, the 422 body and the offline refusals."""

from __future__ import annotations

import copy
import json
from typing import Any

import grpc
import pytest

from gateway.errors import ApiError, claid_shape
from services.render.imaging import (
    EditNotSupported,
    EditRequestInvalid,
    Length,
    Padding,
    claid_validation_body,
    parse_padding,
    validate_edit_request,
)
from services.runtime.errors import InvalidArgument
from services.runtime.status import grpc_code_for, to_status

URL = "https://picsum.photos/200.jpg"
_ABSENT = object()


def body(operations: object = _ABSENT, output: object = _ABSENT, **extra: Any) -> dict[str, Any]:
    """A request with `operations` ({} when not given) and `output` only when given."""
    request: dict[str, Any] = {
        "input": URL,
        "operations": {} if operations is _ABSENT else operations,
    }
    if output is not _ABSENT:
        request["output"] = output
    request.update(extra)
    return request


def at(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def invalid(request: object) -> EditRequestInvalid:
    with pytest.raises(EditRequestInvalid) as caught:
        validate_edit_request(request)
    assert type(caught.value) is EditRequestInvalid, caught.value.details
    return caught.value


# ---------------------------------------------------------------------------------------------
# The seed's requests (seed 003).

SEED_REQUESTS = [
    {"input": "storage://storage_1/path/image.jpg", "operations": {}},
    {
        "input": "https://picsum.photos/200.jpg",
        "operations": {"resizing": {"width": 1000}, "background": {"remove": False}},
    },
]


@pytest.mark.parametrize("request_body", SEED_REQUESTS)
def test_seed_requests_validate(request_body: dict[str, Any]) -> None:
    normalized = validate_edit_request(request_body)
    assert normalized["input"] == request_body["input"]
    json.dumps(normalized)  # plain JSON all the way down


def test_seed_resize_request_normalized_in_full() -> None:
    assert validate_edit_request(SEED_REQUESTS[1]) == {
        "input": "https://picsum.photos/200.jpg",
        "operations": {
            "restorations": {"decompress": None, "upscale": None, "polish": False},
            "resizing": {
                "width": 1000,
                "height": "auto",
                "fit": {"type": "crop", "crop": "center"},
            },
            "adjustments": {
                "hdr": 0,
                "exposure": 0,
                "saturation": 0,
                "contrast": 0,
                "sharpness": 0,
            },
            "background": {"remove": False, "blur": False, "use_original_alpha": False},
            "privacy": {"blur_car_plate": False, "identity_crop": False},
        },
        "output": {"format": {"type": "jpeg", "quality": 85, "progressive": True}},
    }


def test_the_callers_body_is_not_modified() -> None:
    request = body(
        {"resizing": {"fit": "cover", "width": 10.0}, "padding": "5%"},
        "storage://s/out/x.png",
    )
    before = copy.deepcopy(request)
    validate_edit_request(request)
    assert request == before


# ---------------------------------------------------------------------------------------------
# Valid requests and what they normalize to: (id, request, path in the result, expected value).

VALID: list[tuple[str, dict[str, Any], str, Any]] = [
    # input
    ("input-https", body(), "input", URL),
    (
        "input-http",
        {"input": "http://10.0.0.1:8080/a.jpg", "operations": {}},
        "input",
        "http://10.0.0.1:8080/a.jpg",
    ),
    (
        "input-storage",
        {"input": "storage://my-store/a/b.png", "operations": {}},
        "input",
        "storage://my-store/a/b.png",
    ),
    (
        "input-4096-chars",
        {"input": "https://h/" + "a" * 4086, "operations": {}},
        "input",
        "https://h/" + "a" * 4086,
    ),
    # restorations
    (
        "restorations-default",
        body(),
        "operations.restorations",
        {"decompress": None, "upscale": None, "polish": False},
    ),
    (
        "decompress-moderate",
        body({"restorations": {"decompress": "moderate"}}),
        "operations.restorations.decompress",
        "moderate",
    ),
    (
        "decompress-strong",
        body({"restorations": {"decompress": "strong"}}),
        "operations.restorations.decompress",
        "strong",
    ),
    (
        "decompress-auto",
        body({"restorations": {"decompress": "auto"}}),
        "operations.restorations.decompress",
        "auto",
    ),
    (
        "decompress-null",
        body({"restorations": {"decompress": None}}),
        "operations.restorations.decompress",
        None,
    ),
    *[
        (
            f"upscale-{name}",
            body({"restorations": {"upscale": name}}),
            "operations.restorations.upscale",
            name,
        )
        for name in ("smart_enhance", "smart_resize", "faces", "digital_art", "photo")
    ],
    (
        "upscale-null",
        body({"restorations": {"upscale": None}}),
        "operations.restorations.upscale",
        None,
    ),
    *[
        (
            f"upscale-photo-v{v}",
            body({"restorations": {"upscale": {"type": "photo", "version": v}}}),
            "operations.restorations.upscale",
            {"type": "photo", "version": v},
        )
        for v in ("1", "2", "3")
    ],
    ("polish", body({"restorations": {"polish": True}}), "operations.restorations.polish", True),
    # resizing
    (
        "resizing-default",
        body(),
        "operations.resizing",
        {"width": "auto", "height": "auto", "fit": {"type": "crop", "crop": "center"}},
    ),
    ("resizing-empty", body({"resizing": {}}), "operations.resizing.width", "auto"),
    ("width-px", body({"resizing": {"width": 1000}}), "operations.resizing.width", 1000),
    (
        "width-integral-float",
        body({"resizing": {"width": 1000.0}}),
        "operations.resizing.width",
        1000,
    ),
    ("height-px", body({"resizing": {"height": 1}}), "operations.resizing.height", 1),
    (
        "both-px",
        body({"resizing": {"width": 300, "height": 200}}),
        "operations.resizing",
        {"width": 300, "height": 200, "fit": {"type": "crop", "crop": "center"}},
    ),
    (
        "width-auto-height-px",
        body({"resizing": {"width": "auto", "height": 50}}),
        "operations.resizing.width",
        "auto",
    ),
    (
        "same-percent",
        body({"resizing": {"width": "50%", "height": "50%"}}),
        "operations.resizing.height",
        "50%",
    ),
    (
        "percent-and-auto",
        body({"resizing": {"width": "200%", "height": "auto"}}),
        "operations.resizing.width",
        "200%",
    ),
    ("percent-alone", body({"resizing": {"height": "75%"}}), "operations.resizing.height", "75%"),
    (
        "fit-crop",
        body({"resizing": {"fit": "crop", "width": 10}}),
        "operations.resizing.fit",
        {"type": "crop", "crop": "center"},
    ),
    (
        "fit-cover",
        body({"resizing": {"fit": "cover", "width": 10}}),
        "operations.resizing.fit",
        {"type": "cover"},
    ),
    (
        "fit-bounds",
        body({"resizing": {"fit": "bounds", "width": 10}}),
        "operations.resizing.fit",
        {"type": "bounds"},
    ),
    (
        "fit-canvas",
        body({"resizing": {"fit": "canvas", "width": 10, "height": 10}}),
        "operations.resizing.fit",
        {"type": "canvas"},
    ),
    (
        "fit-crop-smart",
        body({"resizing": {"fit": {"type": "crop", "crop": "smart"}, "width": 9}}),
        "operations.resizing.fit",
        {"type": "crop", "crop": "smart"},
    ),
    (
        "fit-crop-object",
        body({"resizing": {"fit": {"type": "crop"}, "width": 9}}),
        "operations.resizing.fit",
        {"type": "crop", "crop": "center"},
    ),
    (
        "fit-cover-object",
        body({"resizing": {"fit": {"type": "cover"}, "width": 9}}),
        "operations.resizing.fit",
        {"type": "cover"},
    ),
    # adjustments
    (
        "adjustments-default",
        body(),
        "operations.adjustments",
        {"hdr": 0, "exposure": 0, "saturation": 0, "contrast": 0, "sharpness": 0},
    ),
    ("hdr-int", body({"adjustments": {"hdr": 100}}), "operations.adjustments.hdr", 100),
    ("hdr-zero", body({"adjustments": {"hdr": 0}}), "operations.adjustments.hdr", 0),
    (
        "hdr-object-defaults",
        body({"adjustments": {"hdr": {}}}),
        "operations.adjustments.hdr",
        {"intensity": 100, "stitching": False},
    ),
    (
        "hdr-object",
        body({"adjustments": {"hdr": {"intensity": 40, "stitching": True}}}),
        "operations.adjustments.hdr",
        {"intensity": 40, "stitching": True},
    ),
    (
        "exposure-min",
        body({"adjustments": {"exposure": -100}}),
        "operations.adjustments.exposure",
        -100,
    ),
    (
        "saturation-max",
        body({"adjustments": {"saturation": 100}}),
        "operations.adjustments.saturation",
        100,
    ),
    ("contrast", body({"adjustments": {"contrast": -5}}), "operations.adjustments.contrast", -5),
    (
        "sharpness-max",
        body({"adjustments": {"sharpness": 100}}),
        "operations.adjustments.sharpness",
        100,
    ),
    # background
    (
        "background-default",
        body(),
        "operations.background",
        {"remove": False, "blur": False, "use_original_alpha": False},
    ),
    ("remove-true", body({"background": {"remove": True}}), "operations.background.remove", True),
    (
        "remove-object-defaults",
        body({"background": {"remove": {}}}),
        "operations.background.remove",
        {"category": "general", "clipping": False},
    ),
    (
        "remove-object",
        body({"background": {"remove": {"category": "cars", "clipping": True}}}),
        "operations.background.remove",
        {"category": "cars", "clipping": True},
    ),
    ("blur-true", body({"background": {"blur": True}}), "operations.background.blur", True),
    (
        "blur-object-defaults",
        body({"background": {"blur": {}}}),
        "operations.background.blur",
        {"category": "general", "type": "regular", "level": "medium"},
    ),
    (
        "blur-object",
        body({"background": {"blur": {"category": "products", "type": "lens", "level": "high"}}}),
        "operations.background.blur",
        {"category": "products", "type": "lens", "level": "high"},
    ),
    (
        "remove-false-blur-true",
        body({"background": {"remove": False, "blur": {"level": "low"}}}),
        "operations.background.remove",
        False,
    ),
    (
        "color-hex",
        body({"background": {"color": "#00ff7f"}}),
        "operations.background.color",
        "#00ff7f",
    ),
    (
        "color-hex-upper-lowered",
        body({"background": {"color": "#ABCDEF"}}),
        "operations.background.color",
        "#abcdef",
    ),
    (
        "color-transparent-png",
        body({"background": {"color": "transparent"}}, {"format": "png"}),
        "operations.background.color",
        "transparent",
    ),
    (
        "color-transparent-webp",
        body({"background": {"color": "transparent"}}, {"format": {"type": "webp"}}),
        "operations.background.color",
        "transparent",
    ),
    (
        "color-transparent-png-by-name",
        body({"background": {"color": "transparent", "remove": True}}, "storage://s/out/cut.png"),
        "operations.background.color",
        "transparent",
    ),
    (
        "use-original-alpha",
        body({"background": {"use_original_alpha": True}}),
        "operations.background.use_original_alpha",
        True,
    ),
    # padding: normalized to four values, top right bottom left
    ("padding-one-percent", body({"padding": "10%"}), "operations.padding", "10% 10% 10% 10%"),
    ("padding-two-percent", body({"padding": "5% 25%"}), "operations.padding", "25% 5% 25% 5%"),
    ("padding-one-px", body({"padding": "30px"}), "operations.padding", "30px 30px 30px 30px"),
    (
        "padding-two-px",
        body({"padding": "100px 150px"}),
        "operations.padding",
        "150px 100px 150px 100px",
    ),
    (
        "padding-four",
        body({"padding": "0px 400px 0px 0px"}),
        "operations.padding",
        "0px 400px 0px 0px",
    ),
    ("padding-mixed-units", body({"padding": "10px 5%"}), "operations.padding", "5% 10px 5% 10px"),
    ("padding-spaces", body({"padding": "  1px   2px "}), "operations.padding", "2px 1px 2px 1px"),
    ("padding-50-percent", body({"padding": "50% 0% 0% 0%"}), "operations.padding", "50% 0% 0% 0%"),
    # privacy
    (
        "privacy-default",
        body(),
        "operations.privacy",
        {"blur_car_plate": False, "identity_crop": False},
    ),
    (
        "privacy-on",
        body({"privacy": {"blur_car_plate": True, "identity_crop": True}}),
        "operations.privacy",
        {"blur_car_plate": True, "identity_crop": True},
    ),
    # generative with nothing in it asks for nothing
    ("generative-empty", body({"generative": {}}), "operations.generative", {}),
    # output
    (
        "output-default",
        body(),
        "output",
        {"format": {"type": "jpeg", "quality": 85, "progressive": True}},
    ),
    (
        "output-storage-folder",
        body(output="storage://storage_1/output_folder/"),
        "output",
        {
            "destination": "storage://storage_1/output_folder/",
            "format": {"type": "jpeg", "quality": 85, "progressive": True},
        },
    ),
    ("output-storage-root", body(output="storage://s/"), "output.destination", "storage://s/"),
    (
        "output-url",
        body(output="https://bucket.example/out/a.jpeg"),
        "output.destination",
        "https://bucket.example/out/a.jpeg",
    ),
    (
        "output-name-webp",
        body(output="storage://s/a.webp"),
        "output.format",
        {"type": "webp", "compression": {"type": "lossy", "quality": 75}},
    ),
    (
        "output-name-tif",
        body(output={"destination": "storage://s/a.TIF"}),
        "output.format",
        {"type": "tiff", "compression": {"type": "lossless"}},
    ),
    (
        "output-name-query",
        body(output="https://h/a.avif?sig=1.png/x"),
        "output.format.type",
        "avif",
    ),
    ("output-name-unknown-ext", body(output="storage://s/a.bmp"), "output.format.type", "jpeg"),
    (
        "output-format-beats-name",
        body(output={"destination": "storage://s/a.png", "format": "jpeg"}),
        "output.format.type",
        "jpeg",
    ),
    (
        "output-object-empty",
        body(output={}),
        "output",
        {"format": {"type": "jpeg", "quality": 85, "progressive": True}},
    ),
    (
        "format-jpeg",
        body(output={"format": "jpeg"}),
        "output.format",
        {"type": "jpeg", "quality": 85, "progressive": True},
    ),
    (
        "format-png",
        body(output={"format": "png"}),
        "output.format",
        {"type": "png", "compression": "optimal"},
    ),
    (
        "format-webp",
        body(output={"format": "webp"}),
        "output.format",
        {"type": "webp", "compression": {"type": "lossy", "quality": 75}},
    ),
    (
        "format-avif",
        body(output={"format": "avif"}),
        "output.format",
        {"type": "avif", "compression": {"type": "lossy", "quality": 50}},
    ),
    (
        "format-tiff",
        body(output={"format": "tiff"}),
        "output.format",
        {"type": "tiff", "compression": {"type": "lossless"}},
    ),
    (
        "jpeg-options",
        body(output={"format": {"type": "jpeg", "quality": 1, "progressive": False}}),
        "output.format",
        {"type": "jpeg", "quality": 1, "progressive": False},
    ),
    (
        "png-best",
        body(output={"format": {"type": "png", "compression": "best"}}),
        "output.format.compression",
        "best",
    ),
    (
        "png-fast",
        body(output={"format": {"type": "png", "compression": "fast"}}),
        "output.format.compression",
        "fast",
    ),
    (
        "webp-lossless-string",
        body(output={"format": {"type": "webp", "compression": "lossless"}}),
        "output.format.compression",
        {"type": "lossless"},
    ),
    (
        "webp-lossy-string",
        body(output={"format": {"type": "webp", "compression": "lossy"}}),
        "output.format.compression",
        {"type": "lossy", "quality": 75},
    ),
    (
        "webp-lossy-quality",
        body(output={"format": {"type": "webp", "compression": {"type": "lossy", "quality": 100}}}),
        "output.format.compression",
        {"type": "lossy", "quality": 100},
    ),
    (
        "avif-lossy-default",
        body(output={"format": {"type": "avif", "compression": {"type": "lossy"}}}),
        "output.format.compression",
        {"type": "lossy", "quality": 50},
    ),
    (
        "avif-lossless",
        body(output={"format": {"type": "avif", "compression": {"type": "lossless"}}}),
        "output.format.compression",
        {"type": "lossless"},
    ),
    (
        "tiff-lossy",
        body(output={"format": {"type": "tiff", "compression": "lossy"}}),
        "output.format.compression",
        {"type": "lossy", "quality": 75},
    ),
    ("metadata-dpi", body(output={"metadata": {"dpi": 300}}), "output.metadata", {"dpi": 300}),
    (
        "color-space-rgb",
        body(output={"metadata": {"color_space": "RGB"}}),
        "output.metadata.color_space",
        {"type": "RGB"},
    ),
    (
        "color-space-rgb-object",
        body(output={"metadata": {"color_space": {"type": "RGB"}}}),
        "output.metadata.color_space",
        {"type": "RGB"},
    ),
    (
        "color-space-cmyk",
        body(output={"metadata": {"color_space": "CMYK"}}),
        "output.metadata.color_space",
        {"type": "CMYK", "color_profile": "USWeb_Coated"},
    ),
    *[
        (
            f"cmyk-{profile}",
            body(
                output={
                    "format": "tiff",
                    "metadata": {"color_space": {"type": "CMYK", "color_profile": profile}},
                }
            ),
            "output.metadata.color_space",
            {"type": "CMYK", "color_profile": profile},
        )
        for profile in ("ISO_Coated", "ISO_Uncoated", "USWeb_Coated", "USWeb_Uncoated")
    ],
]


@pytest.mark.parametrize(
    ("request_body", "path", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID]
)
def test_valid_requests_normalize(request_body: dict[str, Any], path: str, expected: Any) -> None:
    normalized = validate_edit_request(request_body)
    assert at(normalized, path) == expected
    json.dumps(normalized)


def test_optional_sections_are_absent_unless_given() -> None:
    normalized = validate_edit_request(body())
    assert set(normalized["operations"]) == {
        "restorations",
        "resizing",
        "adjustments",
        "background",
        "privacy",
    }
    assert "color" not in normalized["operations"]["background"]
    assert "destination" not in normalized["output"]
    assert "metadata" not in normalized["output"]


# ---------------------------------------------------------------------------------------------
# Invalid requests: (id, request, the path reported, a piece of its message).

INVALID: list[tuple[str, object, str, str]] = [
    # the body
    ("body-list", [], "body", "not a valid object"),
    ("body-null", None, "body", "none is not an allowed value"),
    ("body-string", "x", "body", "not a valid object"),
    ("missing-input", {"operations": {}}, "input", "field required"),
    ("missing-operations", {"input": URL}, "operations", "field required"),
    # input
    ("input-number", {"input": 5, "operations": {}}, "input", "str type expected"),
    ("input-list", {"input": [URL], "operations": {}}, "input", "str type expected"),
    ("input-null", {"input": None, "operations": {}}, "input", "none is not an allowed value"),
    ("input-empty", {"input": "", "operations": {}}, "input", "at least 1"),
    (
        "input-too-long",
        {"input": "https://h/" + "a" * 4087, "operations": {}},
        "input",
        "at most 4096",
    ),
    ("input-ftp", {"input": "ftp://h/a.jpg", "operations": {}}, "input", "scheme"),
    ("input-no-scheme", {"input": "picsum.photos/200.jpg", "operations": {}}, "input", "scheme"),
    ("input-no-host", {"input": "https:///a.jpg", "operations": {}}, "input", "host"),
    ("input-whitespace", {"input": "https://h/a b.jpg", "operations": {}}, "input", "whitespace"),
    (
        "input-storage-folder",
        {"input": "storage://s/folder/", "operations": {}},
        "input",
        "not a folder",
    ),
    ("input-storage-no-path", {"input": "storage://s/", "operations": {}}, "input", "not a folder"),
    ("input-storage-no-slash", {"input": "storage://s", "operations": {}}, "input", "storage://"),
    (
        "input-storage-long-name",
        {"input": f"storage://{'n' * 51}/a.jpg", "operations": {}},
        "input",
        "storage://",
    ),
    # operations
    ("operations-null", body(None), "operations", "none is not an allowed value"),
    ("operations-list", body([]), "operations", "not a valid object"),
    # restorations
    ("restorations-null", body({"restorations": None}), "operations.restorations", "none is not"),
    (
        "decompress-bad",
        body({"restorations": {"decompress": "heavy"}}),
        "operations.restorations.decompress",
        "permitted: 'moderate', 'strong', 'auto'",
    ),
    (
        "decompress-object",
        body({"restorations": {"decompress": {}}}),
        "operations.restorations.decompress",
        "enumeration",
    ),
    (
        "upscale-bad",
        body({"restorations": {"upscale": "x4"}}),
        "operations.restorations.upscale",
        "enumeration",
    ),
    (
        "upscale-photo-no-version",
        body({"restorations": {"upscale": {"type": "photo"}}}),
        "operations.restorations.upscale.version",
        "field required",
    ),
    (
        "upscale-photo-bad-version",
        body({"restorations": {"upscale": {"type": "photo", "version": "4"}}}),
        "operations.restorations.upscale.version",
        "enumeration",
    ),
    (
        "upscale-photo-int-version",
        body({"restorations": {"upscale": {"type": "photo", "version": 2}}}),
        "operations.restorations.upscale.version",
        "enumeration",
    ),
    (
        "upscale-object-other-type",
        body({"restorations": {"upscale": {"type": "faces", "version": "2"}}}),
        "operations.restorations.upscale.type",
        "permitted: 'photo'",
    ),
    (
        "polish-string",
        body({"restorations": {"polish": "true"}}),
        "operations.restorations.polish",
        "not a valid boolean",
    ),
    (
        "polish-int",
        body({"restorations": {"polish": 1}}),
        "operations.restorations.polish",
        "not a valid boolean",
    ),
    # resizing values
    (
        "width-zero",
        body({"resizing": {"width": 0}}),
        "operations.resizing.width",
        "greater than or equal to 1",
    ),
    (
        "width-negative",
        body({"resizing": {"width": -5}}),
        "operations.resizing.width",
        "greater than or equal to 1",
    ),
    (
        "width-fraction",
        body({"resizing": {"width": 10.5}}),
        "operations.resizing.width",
        "positive integer",
    ),
    (
        "width-bool",
        body({"resizing": {"width": True}}),
        "operations.resizing.width",
        "positive integer",
    ),
    (
        "width-px-string",
        body({"resizing": {"width": "1000px"}}),
        "operations.resizing.width",
        "positive integer",
    ),
    (
        "width-digits-string",
        body({"resizing": {"width": "1000"}}),
        "operations.resizing.width",
        "positive integer",
    ),
    (
        "width-zero-percent",
        body({"resizing": {"width": "0%"}}),
        "operations.resizing.width",
        "percentage",
    ),
    (
        "width-decimal-percent",
        body({"resizing": {"width": "50.5%"}}),
        "operations.resizing.width",
        "percentage",
    ),
    (
        "height-null",
        body({"resizing": {"height": None}}),
        "operations.resizing.height",
        "none is not an allowed value",
    ),
    # resizing rules
    (
        "both-auto",
        body({"resizing": {"width": "auto", "height": "auto"}}),
        "operations.resizing",
        "cannot both be 'auto'",
    ),
    (
        "percent-mismatch",
        body({"resizing": {"width": "50%", "height": "60%"}}),
        "operations.resizing",
        "same percentage",
    ),
    (
        "percent-and-px",
        body({"resizing": {"width": "50%", "height": 300}}),
        "operations.resizing",
        "same percentage",
    ),
    (
        "px-and-percent",
        body({"resizing": {"width": 300, "height": "50%"}}),
        "operations.resizing",
        "same percentage",
    ),
    # fit
    (
        "fit-unknown",
        body({"resizing": {"fit": "stretch"}}),
        "operations.resizing.fit",
        "enumeration",
    ),
    (
        "fit-number",
        body({"resizing": {"fit": 1}}),
        "operations.resizing.fit",
        "object with a 'type'",
    ),
    (
        "fit-object-no-type",
        body({"resizing": {"fit": {"crop": "smart"}}}),
        "operations.resizing.fit.type",
        "field required",
    ),
    (
        "fit-object-bad-type",
        body({"resizing": {"fit": {"type": "fill"}}}),
        "operations.resizing.fit.type",
        "enumeration",
    ),
    (
        "fit-crop-mode-bad",
        body({"resizing": {"fit": {"type": "crop", "crop": "top"}}}),
        "operations.resizing.fit.crop",
        "permitted: 'center', 'smart'",
    ),
    (
        "fit-cover-with-crop",
        body({"resizing": {"fit": {"type": "cover", "crop": "smart"}}}),
        "operations.resizing.fit.crop",
        "extra fields not permitted",
    ),
    (
        "fit-crop-with-feathering",
        body({"resizing": {"fit": {"type": "crop", "feathering": "5%"}}}),
        "operations.resizing.fit.feathering",
        "extra fields not permitted",
    ),
    (
        "outpaint-feathering-bad",
        body({"resizing": {"fit": {"type": "outpaint", "feathering": "05%"}}}),
        "operations.resizing.fit.feathering",
        "regex",
    ),
    (
        "outpaint-feathering-number",
        body({"resizing": {"fit": {"type": "outpaint", "feathering": 15}}}),
        "operations.resizing.fit.feathering",
        "regex",
    ),
    (
        "outpaint-by-three",
        body({"resizing": {"fit": {"type": "outpaint", "outpaint_by": "1px 2px 3px"}}}),
        "operations.resizing.fit.outpaint_by",
        "one or two values",
    ),
    (
        "outpaint-by-unit",
        body({"resizing": {"fit": {"type": "outpaint", "outpaint_by": "10em"}}}),
        "operations.resizing.fit.outpaint_by",
        "one or two values",
    ),
    # adjustments
    (
        "hdr-over",
        body({"adjustments": {"hdr": 101}}),
        "operations.adjustments.hdr",
        "less than or equal to 100",
    ),
    (
        "hdr-under",
        body({"adjustments": {"hdr": -1}}),
        "operations.adjustments.hdr",
        "greater than or equal to 0",
    ),
    (
        "hdr-fraction",
        body({"adjustments": {"hdr": 50.5}}),
        "operations.adjustments.hdr",
        "not a valid integer",
    ),
    (
        "hdr-bool",
        body({"adjustments": {"hdr": True}}),
        "operations.adjustments.hdr",
        "not a valid integer",
    ),
    (
        "hdr-intensity-over",
        body({"adjustments": {"hdr": {"intensity": 101}}}),
        "operations.adjustments.hdr.intensity",
        "less than or equal to 100",
    ),
    (
        "hdr-stitching-string",
        body({"adjustments": {"hdr": {"stitching": "no"}}}),
        "operations.adjustments.hdr.stitching",
        "not a valid boolean",
    ),
    (
        "exposure-under",
        body({"adjustments": {"exposure": -101}}),
        "operations.adjustments.exposure",
        "greater than or equal to -100",
    ),
    (
        "saturation-over",
        body({"adjustments": {"saturation": 101}}),
        "operations.adjustments.saturation",
        "less than or equal to 100",
    ),
    (
        "contrast-string",
        body({"adjustments": {"contrast": "5"}}),
        "operations.adjustments.contrast",
        "not a valid integer",
    ),
    (
        "sharpness-negative",
        body({"adjustments": {"sharpness": -1}}),
        "operations.adjustments.sharpness",
        "greater than or equal to 0",
    ),
    (
        "sharpness-over",
        body({"adjustments": {"sharpness": 101}}),
        "operations.adjustments.sharpness",
        "less than or equal to 100",
    ),
    # background
    (
        "remove-string",
        body({"background": {"remove": "yes"}}),
        "operations.background.remove",
        "not a valid boolean",
    ),
    (
        "remove-null",
        body({"background": {"remove": None}}),
        "operations.background.remove",
        "none is not",
    ),
    (
        "remove-category-bad",
        body({"background": {"remove": {"category": "people"}}}),
        "operations.background.remove.category",
        "permitted: 'general', 'cars', 'products'",
    ),
    (
        "remove-clipping-int",
        body({"background": {"remove": {"clipping": 1}}}),
        "operations.background.remove.clipping",
        "not a valid boolean",
    ),
    (
        "selective-short",
        body({"background": {"remove": {"selective": {"object_to_keep": "ab"}}}}),
        "operations.background.remove.selective.object_to_keep",
        "at least 3",
    ),
    (
        "selective-long",
        body({"background": {"blur": {"selective": {"object_to_keep": "a" * 129}}}}),
        "operations.background.blur.selective.object_to_keep",
        "at most 128",
    ),
    (
        "selective-missing",
        body({"background": {"remove": {"selective": {}}}}),
        "operations.background.remove.selective.object_to_keep",
        "field required",
    ),
    (
        "blur-type-bad",
        body({"background": {"blur": {"type": "motion"}}}),
        "operations.background.blur.type",
        "permitted: 'regular', 'lens'",
    ),
    (
        "blur-level-bad",
        body({"background": {"blur": {"level": "max"}}}),
        "operations.background.blur.level",
        "permitted: 'low', 'medium', 'high'",
    ),
    (
        "blur-number",
        body({"background": {"blur": 3}}),
        "operations.background.blur",
        "not a valid boolean",
    ),
    (
        "remove-and-blur",
        body({"background": {"remove": True, "blur": True}}),
        "operations.background",
        "cannot both be on",
    ),
    (
        "remove-object-and-blur-object",
        body({"background": {"remove": {}, "blur": {}}}),
        "operations.background",
        "cannot both be on",
    ),
    (
        "color-short-hex",
        body({"background": {"color": "#fff"}}),
        "operations.background.color",
        "#rrggbb",
    ),
    (
        "color-name",
        body({"background": {"color": "white"}}),
        "operations.background.color",
        "#rrggbb",
    ),
    (
        "color-not-hex",
        body({"background": {"color": "#gggggg"}}),
        "operations.background.color",
        "#rrggbb",
    ),
    (
        "color-number",
        body({"background": {"color": 0xFFFFFF}}),
        "operations.background.color",
        "#rrggbb",
    ),
    (
        "transparent-default-jpeg",
        body({"background": {"color": "transparent"}}),
        "operations.background.color",
        "needs png or webp output",
    ),
    (
        "transparent-tiff",
        body({"background": {"color": "transparent"}}, {"format": "tiff"}),
        "operations.background.color",
        "output format is tiff",
    ),
    (
        "transparent-avif",
        body({"background": {"color": "transparent"}}, {"format": {"type": "avif"}}),
        "operations.background.color",
        "output format is avif",
    ),
    (
        "transparent-jpeg-by-name",
        body({"background": {"color": "transparent"}}, "storage://s/a.jpg"),
        "operations.background.color",
        "output format is jpeg",
    ),
    (
        "use-original-alpha-null",
        body({"background": {"use_original_alpha": None}}),
        "operations.background.use_original_alpha",
        "none is not",
    ),
    # padding
    ("padding-number", body({"padding": 10}), "operations.padding", "str type expected"),
    ("padding-empty", body({"padding": ""}), "operations.padding", "one, two or four values"),
    (
        "padding-three",
        body({"padding": "1px 2px 3px"}),
        "operations.padding",
        "one, two or four values",
    ),
    (
        "padding-five",
        body({"padding": "1px 2px 3px 4px 5px"}),
        "operations.padding",
        "one, two or four values",
    ),
    (
        "padding-unit",
        body({"padding": "10em"}),
        "operations.padding",
        "'10em' is not a padding value",
    ),
    ("padding-no-unit", body({"padding": "10"}), "operations.padding", "not a padding value"),
    ("padding-negative", body({"padding": "-5px"}), "operations.padding", "not a padding value"),
    ("padding-decimal", body({"padding": "5.5%"}), "operations.padding", "not a padding value"),
    ("padding-over-half", body({"padding": "51%"}), "operations.padding", "more than 50%"),
    (
        "padding-four-over-half",
        body({"padding": "10% 5% 60% 5%"}),
        "operations.padding",
        "more than 50%",
    ),
    ("padding-opposites-fill", body({"padding": "50% 0% 50% 0%"}), "operations.padding", "< 100%"),
    ("padding-two-halves", body({"padding": "50% 0%"}), "operations.padding", "< 100%"),
    ("padding-null", body({"padding": None}), "operations.padding", "none is not"),
    # privacy
    (
        "car-plate-string",
        body({"privacy": {"blur_car_plate": "true"}}),
        "operations.privacy.blur_car_plate",
        "not a valid boolean",
    ),
    (
        "identity-crop-int",
        body({"privacy": {"identity_crop": 1}}),
        "operations.privacy.identity_crop",
        "not a valid boolean",
    ),
    # generative: a malformed style transfer is invalid first (then it would be unsupported)
    (
        "style-no-reference",
        body({"generative": {"style_transfer": {}}}),
        "operations.generative.style_transfer.style_reference_image",
        "field required",
    ),
    (
        "style-reference-bad",
        body({"generative": {"style_transfer": {"style_reference_image": "x"}}}),
        "operations.generative.style_transfer.style_reference_image",
        "scheme",
    ),
    (
        "style-prompt-short",
        body({"generative": {"style_transfer": {"style_reference_image": URL, "prompt": "ab"}}}),
        "operations.generative.style_transfer.prompt",
        "at least 3",
    ),
    (
        "style-prompt-long",
        body(
            {"generative": {"style_transfer": {"style_reference_image": URL, "prompt": "a" * 1025}}}
        ),
        "operations.generative.style_transfer.prompt",
        "at most 1024",
    ),
    (
        "style-depth-over",
        body(
            {
                "generative": {
                    "style_transfer": {"style_reference_image": URL, "depth_strength": 1.5}
                }
            }
        ),
        "operations.generative.style_transfer.depth_strength",
        "less than or equal to 1",
    ),
    (
        "style-denoising-under",
        body(
            {
                "generative": {
                    "style_transfer": {"style_reference_image": URL, "denoising_strength": -0.1}
                }
            }
        ),
        "operations.generative.style_transfer.denoising_strength",
        "greater than or equal to 0",
    ),
    (
        "style-strength-string",
        body(
            {
                "generative": {
                    "style_transfer": {"style_reference_image": URL, "style_strength": "high"}
                }
            }
        ),
        "operations.generative.style_transfer.style_strength",
        "not a valid number",
    ),
    # output
    ("output-number", body(output=3), "output", "not a valid object"),
    ("output-null", body(output=None), "output", "none is not"),
    ("output-empty-string", body(output=""), "output", "at least 1"),
    ("output-ftp", body(output="ftp://h/out/"), "output", "scheme"),
    ("output-storage-no-slash", body(output="storage://s"), "output", "storage://"),
    (
        "destination-bad",
        body(output={"destination": "s3://bucket/x"}),
        "output.destination",
        "scheme",
    ),
    (
        "destination-number",
        body(output={"destination": 1}),
        "output.destination",
        "str type expected",
    ),
    (
        "format-gif",
        body(output={"format": "gif"}),
        "output.format",
        "permitted: 'jpeg', 'png', 'webp', 'avif', 'tiff'",
    ),
    ("format-upper", body(output={"format": "JPEG"}), "output.format", "enumeration"),
    (
        "format-object-no-type",
        body(output={"format": {"quality": 90}}),
        "output.format.type",
        "field required",
    ),
    (
        "jpeg-quality-zero",
        body(output={"format": {"type": "jpeg", "quality": 0}}),
        "output.format.quality",
        "greater than or equal to 1",
    ),
    (
        "jpeg-quality-over",
        body(output={"format": {"type": "jpeg", "quality": 101}}),
        "output.format.quality",
        "less than or equal to 100",
    ),
    (
        "jpeg-progressive-string",
        body(output={"format": {"type": "jpeg", "progressive": "yes"}}),
        "output.format.progressive",
        "not a valid boolean",
    ),
    (
        "jpeg-with-compression",
        body(output={"format": {"type": "jpeg", "compression": "best"}}),
        "output.format.compression",
        "extra fields not permitted",
    ),
    (
        "png-compression-bad",
        body(output={"format": {"type": "png", "compression": "max"}}),
        "output.format.compression",
        "permitted: 'fast', 'best', 'optimal'",
    ),
    (
        "png-with-quality",
        body(output={"format": {"type": "png", "quality": 80}}),
        "output.format.quality",
        "extra fields not permitted",
    ),
    (
        "webp-compression-bad",
        body(output={"format": {"type": "webp", "compression": "medium"}}),
        "output.format.compression",
        "permitted: 'lossy', 'lossless'",
    ),
    (
        "webp-quality-over",
        body(output={"format": {"type": "webp", "compression": {"type": "lossy", "quality": 101}}}),
        "output.format.compression.quality",
        "less than or equal to 100",
    ),
    (
        "webp-quality-outside",
        body(output={"format": {"type": "webp", "quality": 80}}),
        "output.format.quality",
        "extra fields not permitted",
    ),
    (
        "avif-lossless-quality",
        body(
            output={"format": {"type": "avif", "compression": {"type": "lossless", "quality": 80}}}
        ),
        "output.format.compression.quality",
        "extra fields not permitted",
    ),
    (
        "tiff-compression-no-type",
        body(output={"format": {"type": "tiff", "compression": {"quality": 80}}}),
        "output.format.compression.type",
        "field required",
    ),
    (
        "dpi-zero",
        body(output={"metadata": {"dpi": 0}}),
        "output.metadata.dpi",
        "greater than or equal to 1",
    ),
    (
        "dpi-over",
        body(output={"metadata": {"dpi": 70000}}),
        "output.metadata.dpi",
        "less than or equal to 65535",
    ),
    (
        "dpi-string",
        body(output={"metadata": {"dpi": "300"}}),
        "output.metadata.dpi",
        "not a valid integer",
    ),
    (
        "color-space-bad",
        body(output={"metadata": {"color_space": "LAB"}}),
        "output.metadata.color_space",
        "permitted: 'RGB', 'CMYK'",
    ),
    (
        "color-space-lower",
        body(output={"metadata": {"color_space": "cmyk"}}),
        "output.metadata.color_space",
        "enumeration",
    ),
    (
        "color-profile-bad",
        body(output={"metadata": {"color_space": {"type": "CMYK", "color_profile": "FOGRA39"}}}),
        "output.metadata.color_space.color_profile",
        "enumeration",
    ),
    (
        "rgb-with-profile",
        body(output={"metadata": {"color_space": {"type": "RGB", "color_profile": "ISO_Coated"}}}),
        "output.metadata.color_space.color_profile",
        "extra fields not permitted",
    ),
    (
        "cmyk-png",
        body(output={"format": "png", "metadata": {"color_space": "CMYK"}}),
        "output.metadata.color_space",
        "CMYK needs jpeg or tiff",
    ),
    (
        "cmyk-webp-by-name",
        body(output={"destination": "storage://s/a.webp", "metadata": {"color_space": "CMYK"}}),
        "output.metadata.color_space",
        "output format is webp",
    ),
    ("metadata-null", body(output={"metadata": None}), "output.metadata", "none is not"),
]


@pytest.mark.parametrize(
    ("request_body", "path", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_requests_name_the_field(request_body: object, path: str, message: str) -> None:
    error = invalid(request_body)
    assert path in error.details, error.details
    assert any(message in m for m in error.details[path]), error.details[path]


# Unknown keys are refused at every level, each at its own path.
UNKNOWN_KEYS: list[tuple[str, object, str]] = [
    ("root", body(extra=1), "extra"),
    ("operations", body({"rotate": 90}), "operations.rotate"),
    ("restorations", body({"restorations": {"denoise": True}}), "operations.restorations.denoise"),
    (
        "upscale-object",
        body({"restorations": {"upscale": {"type": "photo", "version": "2", "scale": 4}}}),
        "operations.restorations.upscale.scale",
    ),
    ("resizing", body({"resizing": {"depth": 3}}), "operations.resizing.depth"),
    (
        "fit-object",
        body({"resizing": {"fit": {"type": "bounds", "gravity": "north"}}}),
        "operations.resizing.fit.gravity",
    ),
    (
        "fit-object-no-type",
        body({"resizing": {"fit": {"gravity": "north"}}}),
        "operations.resizing.fit.gravity",
    ),
    ("adjustments", body({"adjustments": {"brightness": 5}}), "operations.adjustments.brightness"),
    (
        "hdr-object",
        body({"adjustments": {"hdr": {"radius": 5}}}),
        "operations.adjustments.hdr.radius",
    ),
    ("background", body({"background": {"shadow": True}}), "operations.background.shadow"),
    (
        "remove-object",
        body({"background": {"remove": {"mask": True}}}),
        "operations.background.remove.mask",
    ),
    (
        "blur-object",
        body({"background": {"blur": {"radius": 3}}}),
        "operations.background.blur.radius",
    ),
    (
        "selective",
        body({"background": {"remove": {"selective": {"object_to_keep": "cat", "x": 1}}}}),
        "operations.background.remove.selective.x",
    ),
    ("privacy", body({"privacy": {"blur_faces": True}}), "operations.privacy.blur_faces"),
    ("generative", body({"generative": {"inpaint": {}}}), "operations.generative.inpaint"),
    (
        "style-transfer",
        body({"generative": {"style_transfer": {"style_reference_image": URL, "seed": 1}}}),
        "operations.generative.style_transfer.seed",
    ),
    ("output", body(output={"name": "x"}), "output.name"),
    (
        "format-object",
        body(output={"format": {"type": "jpeg", "optimize": True}}),
        "output.format.optimize",
    ),
    (
        "compression-object",
        body(output={"format": {"type": "webp", "compression": {"type": "lossy", "method": 6}}}),
        "output.format.compression.method",
    ),
    ("metadata", body(output={"metadata": {"exif": False}}), "output.metadata.exif"),
    (
        "color-space-object",
        body(output={"metadata": {"color_space": {"type": "CMYK", "intent": "perceptual"}}}),
        "output.metadata.color_space.intent",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "path"), [c[1:] for c in UNKNOWN_KEYS], ids=[c[0] for c in UNKNOWN_KEYS]
)
def test_unknown_keys_are_refused_at_every_level(request_body: object, path: str) -> None:
    error = invalid(request_body)
    assert error.details.get(path) == ["extra fields not permitted"], error.details


# ---------------------------------------------------------------------------------------------
# Many problems at once.


def test_all_problems_are_collected_in_body_order() -> None:
    request = {
        "input": "ftp://host/a.jpg",
        "operations": {
            "resizing": {"width": 0, "fit": "stretch"},
            "adjustments": {"exposure": 500, "sharpness": -1},
            "background": {"color": "transparent", "blur": {"level": "max"}},
            "padding": "1px 2px 3px",
            "privacy": {"blur_car_plate": "yes", "extra": 1},
            "unknown": {},
        },
        "output": {"format": {"type": "jpeg", "quality": 0}, "metadata": {"dpi": -1}},
        "webhook": "https://x",
    }
    error = invalid(request)
    assert list(error.details) == [
        "input",
        "operations.unknown",
        "operations.resizing.width",
        "operations.resizing.fit",
        "operations.adjustments.exposure",
        "operations.adjustments.sharpness",
        "operations.background.blur.level",
        "operations.background.color",
        "operations.padding",
        "operations.privacy.extra",
        "operations.privacy.blur_car_plate",
        "output.format.quality",
        "output.metadata.dpi",
        "webhook",
    ]
    assert error.field == "input"
    assert error.message.startswith("Request validation failed: input: ")
    assert error.message.endswith("(and 13 more)")


def test_one_field_can_carry_several_messages() -> None:
    error = invalid(body({"background": {"remove": True, "blur": True, "color": "transparent"}}))
    assert "cannot both be on" in error.details["operations.background"][0]
    assert "operations.background.color" in error.details


def test_size_rules_are_not_piled_on_a_side_that_is_already_wrong() -> None:
    error = invalid(body({"resizing": {"width": "abc", "height": "auto"}}))
    assert list(error.details) == ["operations.resizing.width"]


# ---------------------------------------------------------------------------------------------
# What cannot run offline here: refused with EditNotSupported, never accepted.

NOT_SUPPORTED: list[tuple[str, dict[str, Any], str]] = [
    (
        "style-transfer",
        body(
            {
                "generative": {
                    "style_transfer": {"style_reference_image": URL, "prompt": "oil painting"}
                }
            }
        ),
        "operations.generative.style_transfer",
    ),
    (
        "style-transfer-storage-ref",
        body({"generative": {"style_transfer": {"style_reference_image": "storage://s/ref.png"}}}),
        "operations.generative.style_transfer",
    ),
    (
        "fit-outpaint",
        body({"resizing": {"width": 2000, "fit": "outpaint"}}),
        "operations.resizing.fit",
    ),
    (
        "fit-outpaint-object",
        body(
            {"resizing": {"fit": {"type": "outpaint", "feathering": "5%", "outpaint_by": "5% 15%"}}}
        ),
        "operations.resizing.fit",
    ),
    (
        "fit-outpaint-px",
        body({"resizing": {"fit": {"type": "outpaint", "outpaint_by": "1024px 512px"}}}),
        "operations.resizing.fit",
    ),
    (
        "remove-selective",
        body({"background": {"remove": {"selective": {"object_to_keep": "the red car"}}}}),
        "operations.background.remove.selective",
    ),
    (
        "blur-selective",
        body({"background": {"blur": {"selective": {"object_to_keep": "dog"}}}}),
        "operations.background.blur.selective",
    ),
]


@pytest.mark.parametrize(
    ("request_body", "path"), [c[1:] for c in NOT_SUPPORTED], ids=[c[0] for c in NOT_SUPPORTED]
)
def test_offline_impossible_operations_are_refused(request_body: dict[str, Any], path: str) -> None:
    with pytest.raises(EditNotSupported) as caught:
        validate_edit_request(request_body)
    error = caught.value
    assert list(error.details) == [path]
    assert "cannot be downloaded or run offline here" in error.details[path][0]
    assert error.message.startswith("This edit cannot run offline here: ")
    assert claid_validation_body(error)["error_code"] == "9000"


def test_several_offline_operations_are_all_named() -> None:
    request = body(
        {
            "resizing": {"fit": "outpaint"},
            "generative": {"style_transfer": {"style_reference_image": URL}},
        }
    )
    with pytest.raises(EditNotSupported) as caught:
        validate_edit_request(request)
    assert set(caught.value.details) == {
        "operations.resizing.fit",
        "operations.generative.style_transfer",
    }


def test_a_request_that_is_also_invalid_is_told_what_is_wrong_first() -> None:
    error = invalid(body({"resizing": {"fit": "outpaint"}, "adjustments": {"hdr": 500}}))
    assert list(error.details) == ["operations.adjustments.hdr"]


def test_not_supported_is_a_validation_error_too() -> None:
    # Callers that map EditRequestInvalid to 422 get this one right without knowing it.
    assert issubclass(EditNotSupported, EditRequestInvalid)


# ---------------------------------------------------------------------------------------------
# The 422 body and the error's plumbing.


def test_claid_validation_body_shape() -> None:
    error = invalid(body({"resizing": {"width": -1}}, output={"format": "bmp"}))
    rendered = claid_validation_body(error)
    assert set(rendered) == {"error_code", "error_type", "error_message", "error_details"}
    assert rendered["error_code"] == "9000"
    assert rendered["error_type"] == "validation"
    assert rendered["error_message"] == error.message
    assert rendered["error_details"] == {
        "operations.resizing.width": ["ensure this value is greater than or equal to 1"],
        "output.format": [
            "value is not a valid enumeration member; permitted: "
            "'jpeg', 'png', 'webp', 'avif', 'tiff'"
        ],
    }
    assert json.loads(json.dumps(rendered)) == rendered
    # The body is a copy: changing it leaves the error alone.
    rendered["error_details"]["output.format"].append("x")
    assert len(error.details["output.format"]) == 1


def test_error_is_an_invalid_argument_that_travels_over_grpc() -> None:
    error = invalid(body({"privacy": {"identity_crop": "no"}}))
    assert isinstance(error, InvalidArgument)
    assert grpc_code_for(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "operations.privacy.identity_crop"
    assert json.loads(error.metadata["error_details"]) == error.details


def test_errors_can_be_built_directly() -> None:
    error = EditRequestInvalid({"input": ["bad"]}, "custom")
    assert error.message == "custom" and error.details == {"input": ["bad"]}
    assert EditRequestInvalid({}).message == "Request validation failed"


# ---------------------------------------------------------------------------------------------
# Padding for the pipeline.


@pytest.mark.parametrize(
    ("padding", "expected"),
    [
        ("10%", Padding(*[Length(10, "%")] * 4)),
        ("5% 25%", Padding(Length(25, "%"), Length(5, "%"), Length(25, "%"), Length(5, "%"))),
        (
            "0px 400px 0px 0px",
            Padding(Length(0, "px"), Length(400, "px"), Length(0, "px"), Length(0, "px")),
        ),
    ],
)
def test_parse_padding(padding: str, expected: Padding) -> None:
    assert parse_padding(padding) == expected
    normalized = validate_edit_request(body({"padding": padding}))["operations"]["padding"]
    assert parse_padding(normalized) == expected


def test_parse_padding_refuses_what_validation_refuses() -> None:
    with pytest.raises(ValueError, match="one, two or four"):
        parse_padding("1px 2px 3px")


# ---------------------------------------------------------------------------------------------
# Cases from a second draft of this file written concurrently (kept: they pass as they are).

DRAFT_URL = "https://images.example.com/photo.jpg"


def draft_request(operations: dict[str, Any], output: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"input": DRAFT_URL, "operations": operations}
    if output is not None:
        request["output"] = output
    return request


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
    validate_edit_request(draft_request(operations))


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
        validate_edit_request(draft_request(operations, output))
    rendered = claid_validation_body(refused.value)
    assert rendered["error_code"] == "9000" and rendered["error_type"] == "validation"
    assert path in rendered["error_details"], rendered


def test_storage_inputs_and_outputs_are_accepted() -> None:
    validate_edit_request(
        {
            "input": "storage://my_storage/folder/photo.png",
            "operations": {},
            "output": {"destination": "storage://my_storage/out/", "format": "png"},
        }
    )


class _FakeRpcError(grpc.RpcError):
    """A stand-in for a failed call: the status a servicer would abort with, no network."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return str(self._status.details)

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def test_the_gateway_renders_every_field_of_a_refused_request() -> None:
    with pytest.raises(EditRequestInvalid) as refused:
        validate_edit_request(
            {"input": "ftp://x", "operations": {"adjustments": {"exposure": 500}}, "zzz": 1}
        )
    call = _FakeRpcError(to_status(refused.value))
    rendered = claid_shape(ApiError.from_rpc_error(call, "kiln.render.v1.ImageService"))
    assert rendered.status == 422
    assert rendered.body["error_code"] == "9000"
    assert rendered.body["error_details"] == claid_validation_body(refused.value)["error_details"]
    assert len(rendered.body["error_details"]) == 3
