"""Canonical JSON: the one byte form of a document that signatures and hashes cover.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinities. For the documents
Sanctum signs (strings, integers, booleans, nulls, lists and objects) this is the
RFC 8785 (JCS) form. Floats are refused: their text form differs between JSON libraries,
and a hash that depends on the library would not verify offline.
"""

from __future__ import annotations

import json
from typing import Any


class CanonicalJSONError(ValueError):
    """The value can't be put in canonical form (a float, or a non-JSON type)."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        raise CanonicalJSONError(f"float at {path or '$'}: use an integer or a string")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"non-string key at {path or '$'}")
            _check(item, f"{path}.{key}")
        return
    raise CanonicalJSONError(f"{type(value).__name__} at {path or '$'} is not JSON")


def canonical_json(value: Any) -> bytes:
    """Return the canonical UTF-8 bytes of ``value``."""
    _check(value, "")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
