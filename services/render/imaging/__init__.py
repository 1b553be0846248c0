"""Image editing for the render service: Claid's request contract (`request`) and the pyvips
operations that carry it out (`pipeline`)."""

from services.render.imaging.pipeline import (
    EditedImage,
    EditLimits,
    ImageObject,
    edit_image,
    probe_image,
)
from services.render.imaging.request import (
    CLAID_VALIDATION_CODE,
    CLAID_VALIDATION_TYPE,
    EditNotSupported,
    EditRequestInvalid,
    Length,
    Padding,
    claid_validation_body,
    parse_padding,
    validate_edit_request,
)

__all__ = [
    "CLAID_VALIDATION_CODE",
    "CLAID_VALIDATION_TYPE",
    "EditLimits",
    "EditNotSupported",
    "EditRequestInvalid",
    "EditedImage",
    "ImageObject",
    "Length",
    "Padding",
    "claid_validation_body",
    "edit_image",
    "parse_padding",
    "probe_image",
    "validate_edit_request",
]
