"""Opaque pagination cursors: base64url JSON of the last key seen (keyset pagination)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from mixopt.errors import InvalidInput

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(key: list[Any]) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    """The key inside ``cursor``; ``InvalidInput`` (422, query.cursor) if it is not ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or not all(
            isinstance(k, t) and not isinstance(k, bool) for k, t in zip(key, shape, strict=True)
        )
    ):
        raise InvalidInput.at(("query", "cursor"), "invalid cursor")
    return key
