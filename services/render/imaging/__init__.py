"""Image editing for the render service: Claid's request contract (`request`) and the pyvips
operations that carry it out."""

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
    "EditNotSupported",
    "EditRequestInvalid",
    "Length",
    "Padding",
    "claid_validation_body",
    "parse_padding",
    "validate_edit_request",
]
