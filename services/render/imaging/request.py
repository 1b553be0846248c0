"""Claid's image edit request contract (`EditRequest` / `AsyncEditRequest`, api-spec §4.3).

`validate_edit_request(body)` takes the decoded JSON of a request, checks every rule below,
collects every problem (not only the first) and returns a normalized copy that a pipeline can
consume knowing only §4.3. It never fetches, decodes or touches an image: rules that depend on
the input (its size, its alpha) are the pipeline's.

Errors
------
* `EditRequestInvalid` (an `InvalidArgument`): any rule broken. `details` maps field paths
  (`operations.resizing.width`, `output.format.quality`, `body` for a body that is not an
  object) to messages. `claid_validation_body(error)` renders Claid's 422 body
  `{"error_code": "9000", "error_type": "validation", "error_message", "error_details"}`.
* `EditNotSupported` (a subclass of `EditRequestInvalid`, so also 422 / 9000): a well-formed
  request asking for something that needs a model this deployment cannot download and run
  offline: `generative.style_transfer`, `resizing.fit` `outpaint`, and `selective`
  (`object_to_keep`, an open-vocabulary segmentation) under `background.remove` or
  `background.blur`. It is raised only when nothing else is wrong, so a client fixes its
  mistakes first and is then told plainly what cannot run here.

Both carry `details` in `metadata["error_details"]` as JSON, and the first path in `field`, so
the gateway can rebuild the per-field body from a gRPC status.

Rules (messages follow pydantic's wording, as Claid's FastAPI service does)
-------------------------------------------------------------------------
* Every object refuses keys it does not define (`additionalProperties: false` at every
  level), each reported at its own path; `null` is refused except where §4.3 allows it
  (`restorations.decompress`, `restorations.upscale`). Booleans are JSON booleans only, integers
  are integers (an integral float such as `1000.0` is accepted; `true` is not an integer).
* `input` (required): a string of 1..4096 characters, either `http(s)://host/...` or
  `storage://{name}/{path}` naming a file (the path is not empty and does not end in `/`).
* `operations` (required, may be `{}`): an object with `restorations`, `resizing`,
  `adjustments`, `background`, `padding`, `privacy`, `generative`.
* `restorations`: `decompress` null | moderate | strong | auto; `upscale` null |
  smart_enhance | smart_resize | faces | digital_art | photo | `{"type": "photo", "version":
  "1"|"2"|"3"}` (both keys required); `polish` boolean.
* `resizing`: `width` / `height` each a positive integer (px), `"auto"` or an integer
  percentage (`"50%"`, `"200%"`; not `"0%"`); both cannot be given as `"auto"`; when one is a
  percentage the other is the same percentage or `"auto"`; `fit` crop | cover | bounds |
  canvas | outpaint or the object forms (`{"type": "crop", "crop": center|smart}`,
  `{"type": "outpaint", "feathering": ^[1-9][0-9]+%$|^[0-9]%$, "outpaint_by": one or two
  values of Npx or N%}`, the others `{"type": ...}` alone).
* `adjustments`: `hdr` an integer 0..100 or `{"intensity": 0..100, "stitching": bool}`;
  `exposure`, `saturation`, `contrast` integers -100..100; `sharpness` an integer 0..100.
* `background`: `remove` bool | `{"category": general|cars|products, "selective":
  {"object_to_keep": 3..128 chars}, "clipping": bool}`; `color` `#rrggbb` or `"transparent"`,
  and transparent needs png or webp output; `blur` bool | `{"category", "selective", "type":
  regular|lens, "level": low|medium|high}`; `use_original_alpha` bool (it is in §4.3's default).
  `remove` and `blur` both on is refused: once the background is removed there is nothing
  left to blur.
* `padding`: a string of one, two or four values, each `Npx` or `N%` (N a non-negative
  integer); a percentage is at most 50% (half the side) and opposite sides together stay
  below 100%. Pixel paddings depend on the image and are the pipeline's to check.
* `privacy`: `blur_car_plate`, `identity_crop` booleans.
* `generative.style_transfer`: `style_reference_image` (required, a URL), `prompt` 3..1024
  characters, `depth_strength` / `denoising_strength` / `style_strength` numbers 0..1; then
  refused as not supported.
* `output`: a destination string, or `{"destination", "format", "metadata"}`. A destination is
  1..4096 characters, `http(s)://...` or `storage://{name}/` with an optional path (a folder
  ends in `/`). `format` jpeg | png | webp | avif | tiff or `{"type": "jpeg", "quality": 1..100,
  "progressive": bool}`, `{"type": "png", "compression": fast|best|optimal}`, `{"type":
  webp|avif|tiff, "compression": lossy|lossless|{"type": "lossy", "quality": 1..100}|{"type":
  "lossless"}}`. `metadata`: `dpi` an integer 1..65535 (JFIF stores density in 16 bits),
  `color_space` RGB | CMYK | `{"type": "RGB"}` | `{"type": "CMYK", "color_profile":
  ISO_Coated|ISO_Uncoated|USWeb_Coated|USWeb_Uncoated}`; CMYK needs jpeg or tiff output (the
  other formats cannot carry it, and converting back silently would ignore the request).

Normalizations (the returned dict; the caller's body is never modified)
-----------------------------------------------------------------------
* Shape: `{"input": str, "operations": {...}, "output": {...}}`, JSON types only; the same
  keys and value forms as §4.3. Booleans stay booleans; integral floats become ints; percent
  strings stay strings (`"50%"`).
* `operations` always has `restorations`, `resizing`, `adjustments`, `background` and
  `privacy`, with §4.3's defaults filled in:
  - `restorations`: `{"decompress": None, "upscale": None, "polish": False}` merged under what
    was given (`upscale` keeps its string or `{"type": "photo", "version"}` form);
  - `resizing`: `{"width": "auto", "height": "auto", "fit": {"type": "crop", "crop": "center"}}`;
  - `adjustments`: `hdr`, `exposure`, `saturation`, `contrast`, `sharpness` all 0 unless given;
    an `hdr` object gets `intensity` 100 and `stitching` False unless given (an integer `hdr`
    stays an integer);
  - `background`: `{"remove": False, "blur": False, "use_original_alpha": False}`; a `remove`
    object gets `category` "general" and `clipping` False, a `blur` object gets `category`
    "general", `type` "regular" and `level` "medium". `color` is present only when given
    (lower-cased `#rrggbb` or `"transparent"`): its default depends on the input (white, or
    transparent when the input has alpha), so the pipeline decides it;
  - `privacy`: `{"blur_car_plate": False, "identity_crop": False}`.
  `padding` is present only when given, and then always as four values in CSS order
  (`"top right bottom left"`, e.g. `"10% 5% 10% 5%"`); `parse_padding` turns it into numbers.
  `generative` is present only when given (and then the request is refused unless it is `{}`).
* Type shorthands become their `{"type": ...}` object forms with defaults filled in:
  - `resizing.fit`: `"crop"` -> `{"type": "crop", "crop": "center"}`, `"cover"` ->
    `{"type": "cover"}`, and so on (`outpaint` gets `feathering` "15%");
  - `output` as a string -> `{"destination": <string>, "format": ...}`; no `output` ->
    `{"format": <jpeg defaults>}` (no `destination`: the temporary bucket);
  - `output.format` -> jpeg `{"type": "jpeg", "quality": 85, "progressive": True}`, png
    `{"type": "png", "compression": "optimal"}`, webp `{"type": "webp", "compression":
    {"type": "lossy", "quality": 75}}`, avif the same with quality 50, tiff `{"type": "tiff",
    "compression": {"type": "lossless"}}`; a compression string becomes its object form (a
    lossy one with that format's default quality).
  When no format is given and the destination's file name ends in a known extension (`.jpg`,
  `.jpeg`, `.png`, `.webp`, `.avif`, `.tif`, `.tiff`), that format is used; otherwise jpeg.
  - `output.metadata.color_space`: `"RGB"` -> `{"type": "RGB"}`, `"CMYK"` ->
    `{"type": "CMYK", "color_profile": "USWeb_Coated"}`. `metadata` is present only when given.

The async task's `request` echo is the body as sent (§4.4), not this normalized copy. Nor is
the copy a request to validate again: it spells out `"width": "auto", "height": "auto"`, which
§4.3 refuses when a caller sends both. Store and re-validate the original body instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from services.runtime.errors import InvalidArgument

__all__ = [
    "CLAID_VALIDATION_CODE",
    "CLAID_VALIDATION_TYPE",
    "EditNotSupported",
    "EditRequestInvalid",
    "Length",
    "Padding",
    "claid_validation_body",
    "parse_padding",
    "validate_edit_request",
]

CLAID_VALIDATION_CODE = "9000"
CLAID_VALIDATION_TYPE = "validation"

# §4.3 quotes both 512 (prose) and 4096 (the OpenAPI schema, which Claid's validator enforces).
MAX_URL_LENGTH = 4096

#: The `details` key a body that is not even an object is reported under.
ROOT_PATH = "body"

Details = dict[str, list[str]]


class EditRequestInvalid(InvalidArgument):
    """An edit request broke one or more rules of §4.3; `details` maps paths to messages."""

    error_code = CLAID_VALIDATION_CODE
    error_type = CLAID_VALIDATION_TYPE
    _summary = "Request validation failed"

    def __init__(self, details: Mapping[str, Sequence[str]], message: str | None = None) -> None:
        self.details: Details = {path: list(messages) for path, messages in details.items()}
        first = next(iter(self.details.items()), None)
        if message is None:
            message = self._summary
            if first is not None:
                message = f"{message}: {first[0]}: {first[1][0] if first[1] else 'invalid'}"
                more = sum(len(m) for m in self.details.values()) - 1
                if more > 0:
                    message += f" (and {more} more)"
        # ErrorInfo metadata is str -> str: the whole map travels as JSON so the gateway can
        # rebuild Claid's per-field `error_details` from a gRPC status.
        super().__init__(
            message,
            field=first[0] if first is not None else None,
            metadata={"error_details": json.dumps(self.details, separators=(",", ":"))},
        )


class EditNotSupported(EditRequestInvalid):
    """A well-formed request for an operation that needs a model this deployment cannot run
    offline (style transfer, outpainting, selective segmentation)."""

    _summary = "This edit cannot run offline here"


def claid_validation_body(error: EditRequestInvalid) -> dict[str, Any]:
    """Claid's 422 body for `error`: code "9000", type "validation", the per-field details."""
    return {
        "error_code": error.error_code,
        "error_type": error.error_type,
        "error_message": error.message,
        "error_details": {path: list(messages) for path, messages in error.details.items()},
    }


class Length(NamedTuple):
    """One padding value: `value` pixels, or `value` percent of the image side."""

    value: int
    unit: Literal["px", "%"]


class Padding(NamedTuple):
    top: Length
    right: Length
    bottom: Length
    left: Length


def parse_padding(padding: str) -> Padding:
    """The four sides of a padding string (one, two or four values; the normalized form is
    always four, CSS order). Raises ValueError on a string `validate_edit_request` refuses."""
    sides, problem = _padding_sides(padding)
    if sides is None:
        raise ValueError(problem)
    return sides


# ---------------------------------------------------------------------------------------------
# The public entry point.


def validate_edit_request(body: object) -> dict[str, Any]:
    """The normalized copy of an `EditRequest` body (see the module docstring for the rules and
    the normalizations); raises EditRequestInvalid, or EditNotSupported when the request is
    valid but asks for something that cannot run offline here."""
    report = _Report()
    normalized = _request(report, body)
    if report.invalid:
        raise EditRequestInvalid(_in_body_order(report.invalid))
    if report.unsupported:
        raise EditNotSupported(_in_body_order(report.unsupported))
    return normalized


_TOP_LEVEL_ORDER = {ROOT_PATH: 0, "input": 1, "operations": 2, "output": 3}


def _in_body_order(details: Details) -> Details:
    # `output` is checked before `operations` (a transparent colour needs its format), but the
    # answer should read in the order of the body; within a section, checking order is kept.
    def rank(path: str) -> int:
        return _TOP_LEVEL_ORDER.get(path.split(".", 1)[0], len(_TOP_LEVEL_ORDER))

    return dict(sorted(details.items(), key=lambda item: rank(item[0])))


# ---------------------------------------------------------------------------------------------
# Collecting problems.


class _Report:
    def __init__(self) -> None:
        self.invalid: Details = {}
        self.unsupported: Details = {}

    def bad(self, path: str, message: str) -> None:
        self.invalid.setdefault(path, []).append(message)

    def offline(self, path: str, what: str) -> None:
        self.unsupported.setdefault(path, []).append(
            f"{what} needs a model that cannot be downloaded or run offline here; "
            "remove it from the request"
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _none_or(value: object, expected: str) -> str:
    if value is None:
        return "none is not an allowed value"
    return f"{expected} (got {_type_name(value)})"


def _expected(value: object, expected: str) -> str:
    """`expected`, naming the JSON type received when it is not even a string."""
    return expected if isinstance(value, str) else _none_or(value, expected)


def _object(
    report: _Report,
    value: object,
    path: str,
    keys: Collection[str],
    required: Collection[str] = (),
) -> dict[str, Any] | None:
    """`value` as an object with only `keys` (unknown ones reported one by one, at their own
    path) and every one of `required`; None when it is not an object."""
    if not isinstance(value, dict):
        report.bad(path, _none_or(value, "value is not a valid object"))
        return None
    for key in value:
        if key not in keys:
            report.bad(_join(path, str(key)), "extra fields not permitted")
    for key in required:
        if key not in value:
            report.bad(_join(path, key), "field required")
    return value


def _boolean(report: _Report, value: object, path: str) -> bool | None:
    # Strict: pydantic would take "true" or 1, but §4.3's booleans are JSON booleans.
    if isinstance(value, bool):
        return value
    report.bad(path, _none_or(value, "value is not a valid boolean"))
    return None


def _as_int(value: object) -> int | None:
    # bool is an int subclass in Python but never a number in JSON; an integral float is what
    # some JSON encoders write for an integer.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _in_range(report: _Report, number: float, path: str, low: float, high: float | None) -> bool:
    if number < low:
        report.bad(path, f"ensure this value is greater than or equal to {low}")
        return False
    if high is not None and number > high:
        report.bad(path, f"ensure this value is less than or equal to {high}")
        return False
    return True


def _integer(report: _Report, value: object, path: str, low: int, high: int | None) -> int | None:
    number = _as_int(value)
    if number is None:
        report.bad(path, _none_or(value, "value is not a valid integer"))
        return None
    return number if _in_range(report, number, path, low, high) else None


def _number(report: _Report, value: object, path: str, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        report.bad(path, _none_or(value, "value is not a valid number"))
        return None
    return value if _in_range(report, value, path, low, high) else None


def _choice(report: _Report, value: object, path: str, choices: Sequence[str]) -> str | None:
    if isinstance(value, str) and value in choices:
        return value
    permitted = ", ".join(f"'{c}'" for c in choices)
    report.bad(
        path, _expected(value, f"value is not a valid enumeration member; permitted: {permitted}")
    )
    return None


def _text(report: _Report, value: object, path: str, low: int, high: int) -> str | None:
    if not isinstance(value, str):
        report.bad(path, _none_or(value, "str type expected"))
        return None
    if len(value) < low:
        report.bad(path, f"ensure this value has at least {low} characters")
        return None
    if len(value) > high:
        report.bad(path, f"ensure this value has at most {high} characters")
        return None
    return value


def _typed(
    report: _Report,
    value: object,
    path: str,
    variants: Mapping[str, Collection[str]],
) -> tuple[str, dict[str, Any]] | None:
    """A field that is either a type name or `{"type": <name>, <that type's options>}`:
    (type, options given). Options are checked against the keys of the named type only."""
    names = list(variants)
    if isinstance(value, str):
        kind = _choice(report, value, path, names)
        return None if kind is None else (kind, {})
    if not isinstance(value, dict):
        permitted = ", ".join(f"'{n}'" for n in names)
        report.bad(
            path, _none_or(value, f"value must be one of {permitted} or an object with a 'type'")
        )
        return None
    if "type" not in value:
        report.bad(_join(path, "type"), "field required")
        for key in value:
            if all(key not in options for options in variants.values()):
                report.bad(_join(path, str(key)), "extra fields not permitted")
        return None
    kind = _choice(report, value["type"], _join(path, "type"), names)
    if kind is None:
        return None
    options = _object(report, value, path, {"type", *variants[kind]})
    return None if options is None else (kind, options)


# ---------------------------------------------------------------------------------------------
# URLs.


_STORAGE_URI = re.compile(r"storage://(?P<name>[^/\s]{1,50})/(?P<path>\S*)")


def _url_problem(value: str, *, file_only: bool) -> str | None:
    """What is wrong with an http(s) or storage URL, or None. `file_only` refuses a storage
    folder (a path that is empty or ends in `/`): an edit reads one file."""
    if any(c.isspace() for c in value):
        return "must not contain whitespace"
    if value.lower().startswith("storage://"):
        match = _STORAGE_URI.fullmatch(value)
        if match is None:
            return "must be storage://{storage_name}/{path} (a name of 1 to 50 characters)"
        if file_only and (not match["path"] or match["path"].endswith("/")):
            return "must name a file in the storage, not a folder"
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return "invalid or missing URL scheme"
    if parts.scheme not in ("http", "https"):
        return "URL scheme should be 'http', 'https' or 'storage'"
    if not host:
        return "URL host invalid"
    return None


def _url(report: _Report, value: object, path: str, *, file_only: bool) -> str | None:
    text = _text(report, value, path, 1, MAX_URL_LENGTH)
    if text is None:
        return None
    problem = _url_problem(text, file_only=file_only)
    if problem is not None:
        report.bad(path, problem)
        return None
    return text


# ---------------------------------------------------------------------------------------------
# The request and its operations.


def _request(report: _Report, body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        report.bad(ROOT_PATH, _none_or(body, "value is not a valid object"))
        return {}
    root = _object(report, body, "", ("input", "operations", "output"), ("input", "operations"))
    if root is None:
        return {}
    normalized: dict[str, Any] = {}
    if "input" in root:
        normalized["input"] = _url(report, root["input"], "input", file_only=True)
    output = _output(report, root.get("output"), "output" in root)
    operations = _operations(report, root["operations"], output) if "operations" in root else {}
    normalized["operations"] = operations
    normalized["output"] = output
    return normalized


_OPERATIONS = (
    "restorations",
    "resizing",
    "adjustments",
    "background",
    "padding",
    "privacy",
    "generative",
)


def _operations(report: _Report, value: object, output: dict[str, Any]) -> dict[str, Any]:
    path = "operations"
    given = _object(report, value, path, _OPERATIONS) or {}
    output_format = output.get("format", {}).get("type") if output else None
    ops: dict[str, Any] = {
        "restorations": _restorations(
            report, given.get("restorations", {}), f"{path}.restorations"
        ),
        "resizing": _resizing(report, given.get("resizing", {}), f"{path}.resizing"),
        "adjustments": _adjustments(report, given.get("adjustments", {}), f"{path}.adjustments"),
        "background": _background(
            report, given.get("background", {}), f"{path}.background", output_format
        ),
    }
    if "padding" in given:
        padding = _padding(report, given["padding"], f"{path}.padding")
        if padding is not None:
            ops["padding"] = padding
    ops["privacy"] = _privacy(report, given.get("privacy", {}), f"{path}.privacy")
    if "generative" in given:
        ops["generative"] = _generative(report, given["generative"], f"{path}.generative")
    return ops


_DECOMPRESS = ("moderate", "strong", "auto")
_UPSCALE = ("smart_enhance", "smart_resize", "faces", "digital_art", "photo")
_PHOTO_VERSIONS = ("1", "2", "3")


def _restorations(report: _Report, value: object, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"decompress": None, "upscale": None, "polish": False}
    given = _object(report, value, path, ("decompress", "upscale", "polish"))
    if given is None:
        return out
    if given.get("decompress") is not None:
        out["decompress"] = _choice(report, given["decompress"], f"{path}.decompress", _DECOMPRESS)
    upscale = given.get("upscale")
    if isinstance(upscale, dict):
        options = _object(
            report, upscale, f"{path}.upscale", ("type", "version"), ("type", "version")
        )
        if options is not None and "type" in options and "version" in options:
            kind = _choice(report, options["type"], f"{path}.upscale.type", ("photo",))
            version = _choice(
                report, options["version"], f"{path}.upscale.version", _PHOTO_VERSIONS
            )
            out["upscale"] = {"type": kind, "version": version}
    elif upscale is not None:
        out["upscale"] = _choice(report, upscale, f"{path}.upscale", _UPSCALE)
    if "polish" in given:
        out["polish"] = _boolean(report, given["polish"], f"{path}.polish")
    return out


_PERCENT = re.compile(r"[1-9][0-9]*%")
_FITS: dict[str, tuple[str, ...]] = {
    "crop": ("crop",),
    "cover": (),
    "bounds": (),
    "canvas": (),
    "outpaint": ("feathering", "outpaint_by"),
}
_FEATHERING = re.compile(r"[1-9][0-9]+%|[0-9]%")
_OUTPAINT_BY = re.compile(r"(?:0|[1-9][0-9]*)(?:px|%)")


def _size(report: _Report, value: object, path: str) -> int | str | None:
    number = _as_int(value)
    if number is not None:
        return number if _in_range(report, number, path, 1, None) else None
    if value == "auto" or (isinstance(value, str) and _PERCENT.fullmatch(value)):
        return str(value)
    report.bad(
        path,
        _expected(
            value, "value must be a positive integer (pixels), 'auto' or a percentage like '50%'"
        ),
    )
    return None


def _resizing(report: _Report, value: object, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "width": "auto",
        "height": "auto",
        "fit": {"type": "crop", "crop": "center"},
    }
    given = _object(report, value, path, ("width", "height", "fit"))
    if given is None:
        return out
    sides: dict[str, int | str | None] = {}
    for side in ("width", "height"):
        if side in given:
            sides[side] = _size(report, given[side], f"{path}.{side}")
            if sides[side] is not None:
                out[side] = sides[side]
    if "fit" in given:
        fit = _fit(report, given["fit"], f"{path}.fit")
        if fit is not None:
            out["fit"] = fit
    # The size rules, checked only when both sides parsed (a bad side is already reported).
    if None not in sides.values():
        width, height = out["width"], out["height"]
        if sides.get("width") == "auto" and sides.get("height") == "auto":
            report.bad(path, "width and height cannot both be 'auto'")
        percents = [s for s in (width, height) if isinstance(s, str) and s.endswith("%")]
        if percents and not (width == height or "auto" in (width, height)):
            report.bad(
                path,
                "when width or height is a percentage, the other must be the same "
                "percentage or 'auto'",
            )
    return out


def _fit(report: _Report, value: object, path: str) -> dict[str, Any] | None:
    typed = _typed(report, value, path, _FITS)
    if typed is None:
        return None
    kind, options = typed
    fit: dict[str, Any] = {"type": kind}
    if kind == "crop":
        mode = options.get("crop", "center")
        fit["crop"] = _choice(report, mode, f"{path}.crop", ("center", "smart"))
    elif kind == "outpaint":
        feathering = options.get("feathering", "15%")
        if not (isinstance(feathering, str) and _FEATHERING.fullmatch(feathering)):
            report.bad(
                f"{path}.feathering",
                _expected(feathering, 'string does not match regex "^[1-9][0-9]+%$|^[0-9]%$"'),
            )
        fit["feathering"] = feathering
        if "outpaint_by" in options:
            by = options["outpaint_by"]
            values = by.split() if isinstance(by, str) else []
            if not (1 <= len(values) <= 2 and all(_OUTPAINT_BY.fullmatch(v) for v in values)):
                report.bad(
                    f"{path}.outpaint_by",
                    "must be one or two values, each in pixels ('1024px') or percent ('10%')",
                )
            else:
                fit["outpaint_by"] = " ".join(values)
        report.offline(path, "fit 'outpaint' (generative outpainting)")
    return fit


def _adjustments(report: _Report, value: object, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"hdr": 0, "exposure": 0, "saturation": 0, "contrast": 0, "sharpness": 0}
    given = _object(report, value, path, tuple(out))
    if given is None:
        return out
    if "hdr" in given:
        hdr = given["hdr"]
        if isinstance(hdr, dict):
            options = _object(report, hdr, f"{path}.hdr", ("intensity", "stitching"))
            if options is not None:
                out["hdr"] = {
                    "intensity": _integer(
                        report, options.get("intensity", 100), f"{path}.hdr.intensity", 0, 100
                    ),
                    "stitching": _boolean(
                        report, options.get("stitching", False), f"{path}.hdr.stitching"
                    ),
                }
        else:
            out["hdr"] = _integer(report, hdr, f"{path}.hdr", 0, 100)
    for name in ("exposure", "saturation", "contrast"):
        if name in given:
            out[name] = _integer(report, given[name], f"{path}.{name}", -100, 100)
    if "sharpness" in given:
        out["sharpness"] = _integer(report, given["sharpness"], f"{path}.sharpness", 0, 100)
    return out


_CATEGORIES = ("general", "cars", "products")
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
#: Output formats that can carry an alpha channel a transparent background needs.
_ALPHA_FORMATS = ("png", "webp")


def _selective(report: _Report, value: object, path: str) -> dict[str, Any] | None:
    given = _object(report, value, path, ("object_to_keep",), ("object_to_keep",))
    if given is None or "object_to_keep" not in given:
        return None
    keep = _text(report, given["object_to_keep"], f"{path}.object_to_keep", 3, 128)
    report.offline(path, "selective background ('object_to_keep', text-prompted segmentation)")
    return {"object_to_keep": keep}


def _background(
    report: _Report, value: object, path: str, output_format: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"remove": False, "blur": False, "use_original_alpha": False}
    given = _object(report, value, path, ("remove", "color", "blur", "use_original_alpha"))
    if given is None:
        return out
    if "remove" in given:
        remove = given["remove"]
        if isinstance(remove, dict):
            options = _object(
                report, remove, f"{path}.remove", ("category", "selective", "clipping")
            )
            if options is not None:
                removal: dict[str, Any] = {
                    "category": _choice(
                        report,
                        options.get("category", "general"),
                        f"{path}.remove.category",
                        _CATEGORIES,
                    ),
                    "clipping": _boolean(
                        report, options.get("clipping", False), f"{path}.remove.clipping"
                    ),
                }
                if "selective" in options:
                    removal["selective"] = _selective(
                        report, options["selective"], f"{path}.remove.selective"
                    )
                out["remove"] = removal
        else:
            out["remove"] = _boolean(report, remove, f"{path}.remove")
    if "blur" in given:
        blur = given["blur"]
        if isinstance(blur, dict):
            options = _object(
                report, blur, f"{path}.blur", ("category", "selective", "type", "level")
            )
            if options is not None:
                blurring: dict[str, Any] = {
                    "category": _choice(
                        report,
                        options.get("category", "general"),
                        f"{path}.blur.category",
                        _CATEGORIES,
                    ),
                    "type": _choice(
                        report,
                        options.get("type", "regular"),
                        f"{path}.blur.type",
                        ("regular", "lens"),
                    ),
                    "level": _choice(
                        report,
                        options.get("level", "medium"),
                        f"{path}.blur.level",
                        ("low", "medium", "high"),
                    ),
                }
                if "selective" in options:
                    blurring["selective"] = _selective(
                        report, options["selective"], f"{path}.blur.selective"
                    )
                out["blur"] = blurring
        else:
            out["blur"] = _boolean(report, blur, f"{path}.blur")
    if "use_original_alpha" in given:
        out["use_original_alpha"] = _boolean(
            report, given["use_original_alpha"], f"{path}.use_original_alpha"
        )
    # A dict is "on with options"; False (or an invalid value, None) is off.
    if out["remove"] not in (False, None) and out["blur"] not in (False, None):
        report.bad(
            path, "remove and blur cannot both be on: a removed background cannot be blurred"
        )
    if "color" in given:
        color = given["color"]
        if color == "transparent":
            out["color"] = "transparent"
            if output_format is not None and output_format not in _ALPHA_FORMATS:
                report.bad(
                    f"{path}.color",
                    f"'transparent' needs png or webp output (output format is {output_format})",
                )
        elif isinstance(color, str) and _HEX_COLOR.fullmatch(color):
            out["color"] = color.lower()
        else:
            report.bad(
                f"{path}.color",
                _expected(color, "must be a hexadecimal color '#rrggbb' or 'transparent'"),
            )
    return out


_PADDING_VALUE = re.compile(r"(?P<value>0|[1-9][0-9]*)(?P<unit>px|%)")


def _padding_sides(padding: object) -> tuple[Padding | None, str]:
    if not isinstance(padding, str):
        return None, _none_or(padding, "str type expected")
    lengths: list[Length] = []
    for token in padding.split():
        match = _PADDING_VALUE.fullmatch(token)
        if match is None:
            return None, f"'{token}' is not a padding value: use pixels ('30px') or percent ('10%')"
        unit: Literal["px", "%"] = "px" if match["unit"] == "px" else "%"
        lengths.append(Length(int(match["value"]), unit))
    if len(lengths) == 1:
        sides = Padding(*(lengths * 4))
    elif len(lengths) == 2:
        # §4.3: two values are horizontal then vertical.
        horizontal, vertical = lengths
        sides = Padding(vertical, horizontal, vertical, horizontal)
    elif len(lengths) == 4:
        sides = Padding(*lengths)
    else:
        return None, "must have one, two or four values separated by spaces"
    for length in sides:
        if length.unit == "%" and length.value > 50:
            return None, "a percentage padding cannot be more than 50% (half of the side)"
    for first, second in ((sides.top, sides.bottom), (sides.left, sides.right)):
        if first.unit == second.unit == "%" and first.value + second.value >= 100:
            return None, "opposite paddings together must leave part of the image (< 100%)"
    return sides, ""


def _padding(report: _Report, value: object, path: str) -> str | None:
    sides, problem = _padding_sides(value)
    if sides is None:
        report.bad(path, problem)
        return None
    return " ".join(f"{side.value}{side.unit}" for side in sides)


def _privacy(report: _Report, value: object, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"blur_car_plate": False, "identity_crop": False}
    given = _object(report, value, path, tuple(out))
    if given is None:
        return out
    for name in out:
        if name in given:
            out[name] = _boolean(report, given[name], f"{path}.{name}")
    return out


_STYLE_TRANSFER_DEFAULTS = {
    "depth_strength": 1.0,
    "denoising_strength": 0.75,
    "style_strength": 0.75,
}


def _generative(report: _Report, value: object, path: str) -> dict[str, Any]:
    given = _object(report, value, path, ("style_transfer",))
    if given is None or "style_transfer" not in given:
        return {}
    spath = f"{path}.style_transfer"
    options = _object(
        report,
        given["style_transfer"],
        spath,
        ("style_reference_image", "prompt", *_STYLE_TRANSFER_DEFAULTS),
        ("style_reference_image",),
    )
    transfer: dict[str, Any] = {}
    if options is not None:
        if "style_reference_image" in options:
            transfer["style_reference_image"] = _url(
                report,
                options["style_reference_image"],
                f"{spath}.style_reference_image",
                file_only=True,
            )
        if "prompt" in options:
            transfer["prompt"] = _text(report, options["prompt"], f"{spath}.prompt", 3, 1024)
        for name, default in _STYLE_TRANSFER_DEFAULTS.items():
            transfer[name] = _number(report, options.get(name, default), f"{spath}.{name}", 0, 1)
    report.offline(spath, "style transfer (a generative diffusion model)")
    return {"style_transfer": transfer}


# ---------------------------------------------------------------------------------------------
# Output.

_FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": ("quality", "progressive"),
    "png": ("compression",),
    "webp": ("compression",),
    "avif": ("compression",),
    "tiff": ("compression",),
}
_COMPRESSIONS: dict[str, tuple[str, ...]] = {"lossy": ("quality",), "lossless": ()}
#: The lossy quality each format uses when none is given; None: lossless by default.
_LOSSY_QUALITY = {"webp": 75, "avif": 50, "tiff": 75}
_DEFAULT_COMPRESSION = {"webp": "lossy", "avif": "lossy", "tiff": "lossless"}
_EXTENSIONS = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "tif": "tiff",
    "tiff": "tiff",
}
_COLOR_PROFILES = ("ISO_Coated", "ISO_Uncoated", "USWeb_Coated", "USWeb_Uncoated")
#: Formats that can hold CMYK pixels.
_CMYK_FORMATS = ("jpeg", "tiff")


def _default_format(kind: str) -> dict[str, Any]:
    if kind == "jpeg":
        return {"type": "jpeg", "quality": 85, "progressive": True}
    if kind == "png":
        return {"type": "png", "compression": "optimal"}
    return {"type": kind, "compression": _compression_defaults(kind, _DEFAULT_COMPRESSION[kind])}


def _compression_defaults(kind: str, compression: str) -> dict[str, Any]:
    if compression == "lossy":
        return {"type": "lossy", "quality": _LOSSY_QUALITY[kind]}
    return {"type": "lossless"}


def _format_from_destination(destination: str | None) -> str:
    if destination:
        name = destination.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
        if "." in name:
            return _EXTENSIONS.get(name.rsplit(".", 1)[-1].lower(), "jpeg")
    return "jpeg"


def _format(report: _Report, value: object, path: str) -> dict[str, Any] | None:
    typed = _typed(report, value, path, _FORMATS)
    if typed is None:
        return None
    kind, options = typed
    out = _default_format(kind)
    if kind == "jpeg":
        if "quality" in options:
            out["quality"] = _integer(report, options["quality"], f"{path}.quality", 1, 100)
        if "progressive" in options:
            out["progressive"] = _boolean(report, options["progressive"], f"{path}.progressive")
    elif kind == "png":
        if "compression" in options:
            out["compression"] = _choice(
                report, options["compression"], f"{path}.compression", ("fast", "best", "optimal")
            )
    elif "compression" in options:
        cpath = f"{path}.compression"
        compression = _typed(report, options["compression"], cpath, _COMPRESSIONS)
        if compression is None:
            out["compression"] = None
        else:
            ctype, coptions = compression
            out["compression"] = _compression_defaults(kind, ctype)
            if "quality" in coptions:
                out["compression"]["quality"] = _integer(
                    report, coptions["quality"], f"{cpath}.quality", 1, 100
                )
    return out


def _metadata(report: _Report, value: object, path: str) -> dict[str, Any]:
    given = _object(report, value, path, ("dpi", "color_space")) or {}
    out: dict[str, Any] = {}
    if "dpi" in given:
        out["dpi"] = _integer(report, given["dpi"], f"{path}.dpi", 1, 65535)
    if "color_space" in given:
        cpath = f"{path}.color_space"
        typed = _typed(report, given["color_space"], cpath, {"RGB": (), "CMYK": ("color_profile",)})
        if typed is not None:
            kind, options = typed
            space: dict[str, Any] = {"type": kind}
            if kind == "CMYK":
                space["color_profile"] = _choice(
                    report,
                    options.get("color_profile", "USWeb_Coated"),
                    f"{cpath}.color_profile",
                    _COLOR_PROFILES,
                )
            out["color_space"] = space
    return out


def _output(report: _Report, value: object, given: bool) -> dict[str, Any]:
    path = "output"
    if not given:
        return {"format": _default_format("jpeg")}
    if isinstance(value, str):
        destination = _url(report, value, path, file_only=False)
        return {
            "destination": value,
            "format": _default_format(_format_from_destination(destination)),
        }
    options = _object(report, value, path, ("destination", "format", "metadata"))
    if options is None:
        return {}
    out: dict[str, Any] = {}
    destination = None
    if "destination" in options:
        destination = _url(report, options["destination"], f"{path}.destination", file_only=False)
        out["destination"] = options["destination"]
    if "format" in options:
        fmt = _format(report, options["format"], f"{path}.format")
        if fmt is not None:
            out["format"] = fmt
    else:
        out["format"] = _default_format(_format_from_destination(destination))
    if "metadata" in options:
        out["metadata"] = _metadata(report, options["metadata"], f"{path}.metadata")
        space = out["metadata"].get("color_space")
        kind = out.get("format", {}).get("type")
        if (
            space is not None
            and space["type"] == "CMYK"
            and kind is not None
            and kind not in _CMYK_FORMATS
        ):
            report.bad(
                f"{path}.metadata.color_space",
                f"CMYK needs jpeg or tiff output (output format is {kind})",
            )
    return out
