"""Page tokens of lists paged newest first on (created_at, id): opaque to clients, checked
when they come back."""

from __future__ import annotations

import base64
import datetime as dt
import json

from services.runtime.errors import InvalidArgument


def encode_page_token(created_at: dt.datetime, item_id: str) -> str:
    """The token that resumes a list after the item created at `created_at` with `item_id`."""
    raw = json.dumps([created_at.isoformat(), item_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[dt.datetime, str]:
    """(created_at, id) of a token `encode_page_token` made; InvalidArgument otherwise."""
    try:
        padded = token + "=" * (-len(token) % 4)
        created, item_id = json.loads(base64.urlsafe_b64decode(padded))
        return dt.datetime.fromisoformat(created), str(item_id)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            "page_token is not one this server issued", field="page_token"
        ) from exc
