"""Canonical JSON: the one byte form of a document that signatures and hashes cover.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinities. For the documents
Sanctum signs (strings, integers, booleans, nulls, lists and objects) this is the
RFC 8785 (JCS) form. Floats are refused: their text form differs between JSON libraries,
and a hash that depends on the library would not verify offline.

Also the canonical base64 and base64url decoders, for hashes and signatures carried as
text inside signed or hashed files.
"""

from __future__ import annotations

import base64
import json
import re
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


# --- canonical base64 -------------------------------------------------------------------
# A base64 text whose length isn't a multiple of 3 bytes leaves unused bits in its last
# character; lax decoders ignore them, so several texts decode to the same bytes. Where a
# signature or a hash travels as text in a signed or hashed file, that slack would let a
# byte change go unnoticed, so these decoders accept only the one text the encoder makes.

_B64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64URL_CHARS = re.compile(r"[A-Za-z0-9_-]*")


class CanonicalEncodingError(ValueError):
    """A base64 or base64url text is malformed or not in its one canonical form."""


def _check_length(data: bytes, length: int | None, what: str) -> bytes:
    if length is not None and len(data) != length:
        raise CanonicalEncodingError(f"{what} must be {length} bytes, got {len(data)}")
    return data


def b64decode_canonical(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Decode standard base64 with padding (RFC 4648 section 4), canonical form only."""
    if not isinstance(text, str) or not _B64_CHARS.fullmatch(text) or len(text) % 4:
        raise CanonicalEncodingError(f"{what} is not base64")
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise CanonicalEncodingError(f"{what} is not in canonical base64")
    return _check_length(data, length, what)


def b64urldecode_canonical(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Decode unpadded base64url (RFC 7515 / RFC 4648 section 5), canonical form only."""
    if not isinstance(text, str) or not _B64URL_CHARS.fullmatch(text) or len(text) % 4 == 1:
        raise CanonicalEncodingError(f"{what} is not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        raise CanonicalEncodingError(f"{what} is not in canonical base64url")
    return _check_length(data, length, what)
