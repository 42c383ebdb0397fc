"""Opaque pagination cursors: base64url JSON of the last key seen (keyset pagination)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from mixopt.errors import InvalidInput
from mixopt.schemas import NAME_PATTERN

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
        or not all(_valid(k, t) for k, t in zip(key, shape, strict=True))
    ):
        raise InvalidInput.at(("query", "cursor"), "invalid cursor")
    return key


def _valid(value: Any, kind: type) -> bool:
    """Keys we issue: ids and steps within BIGINT, names matching the name pattern. Anything
    else is forged and must not reach the database (out-of-range integers fail there)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**63
    if isinstance(value, str):
        return re.fullmatch(NAME_PATTERN, value) is not None
    return False
