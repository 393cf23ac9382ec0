"""Canonical JSON: the one byte form of a document that signatures and hashes cover.

The form is RFC 8785, the JSON Canonicalization Scheme (JCS), produced by the
``rfc8785`` package: object keys sorted by their UTF-16 code units, no insignificant
whitespace, UTF-8, strings escaped as ECMAScript does, numbers in ECMAScript's shortest
round-trip form. Two entry points, one mechanism:

- :func:`canonical_json` for the documents Sanctum itself signs and hashes (usage
  records, config bundles, ledger files, key ids). Floats are refused: those contracts
  hold strings, integers (within +-(2**53 - 1), what a JSON number holds exactly),
  booleans, nulls, lists and objects, never a float, and a number written as ``1.5``
  in one contract and ``3/2`` in another has no business being signed. For such
  documents (ASCII keys, no floats) the bytes are the same as the ``json.dumps``
  form used before JCS, so every record, receipt and bundle signed earlier keeps its
  signature and leaf hash (``tests/shared/test_canonical.py`` proves it on files the
  old code produced).
- :func:`jcs` for documents that hold a client's JSON (content commitments,
  ``shared.commitment``): floats are allowed and take JCS's number form, and an
  integer beyond +-(2**53 - 1) is the IEEE 754 double it denotes (as in any JCS
  implementation that reads JSON numbers as doubles). Its errors never quote the
  document: they may concern client content.

Both refuse what JCS can't encode: NaN and infinities, lone surrogates in a string or
key (not UTF-8), non-string keys, and values that are not JSON.

Also the canonical base64 and base64url decoders, for hashes and signatures carried as
text inside signed or hashed files.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

import rfc8785

_SAFE_INT = 2**53 - 1


class CanonicalJSONError(ValueError):
    """The value can't be put in canonical form (a float, or a non-JSON type)."""


def _string(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalJSONError(
            f"{where} holds a lone surrogate (not Unicode text, so not JSON)"
        ) from None


MAX_DEPTH = 64
"""Arrays and objects nest at most this deep: deeper, a document is refused (the
recursion would otherwise end in a RecursionError, and a client's JSON is unbounded)."""


def _normalise(value: Any, path: str | None, *, floats: bool, depth: int = 0) -> Any:
    """``value`` checked for JCS (and, under :func:`jcs`, big integers made doubles).

    ``path`` is where the value sits, for error messages; None when it must not be told
    (client documents: a key could be content)."""
    where = (path or "$") if path is not None else "a value"
    if depth > MAX_DEPTH:
        raise CanonicalJSONError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if -_SAFE_INT <= value <= _SAFE_INT:
            return value
        if not floats:
            raise CanonicalJSONError(f"integer at {where} is beyond +-(2**53 - 1)")
        try:
            return float(value)
        except OverflowError:
            raise CanonicalJSONError("an integer is too large for a JSON number") from None
    if isinstance(value, str):
        _string(value, f"string at {where}" if path is not None else "a string")
        return value
    if isinstance(value, float):
        if not floats:
            raise CanonicalJSONError(f"float at {where}: use an integer or a string")
        if math.isnan(value) or math.isinf(value):
            raise CanonicalJSONError(f"{where} is NaN or infinite, which JSON can't hold")
        return value
    if isinstance(value, (list, tuple)):
        return [
            _normalise(
                item, None if path is None else f"{path}[{i}]", floats=floats, depth=depth + 1
            )
            for i, item in enumerate(value)
        ]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"non-string key at {where}")
            _string(key, f"key at {where}" if path is not None else "a key")
            out[key] = _normalise(
                item, None if path is None else f"{path}.{key}", floats=floats, depth=depth + 1
            )
        return out
    raise CanonicalJSONError(f"{type(value).__name__} at {where} is not JSON")


def _dumps(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:  # checked above; kept as a last guard
        raise CanonicalJSONError(f"not canonicalizable: {type(exc).__name__}") from None


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) bytes of a document Sanctum signs: no floats allowed."""
    return _dumps(_normalise(value, "", floats=False))


def jcs(value: Any) -> bytes:
    """The RFC 8785 (JCS) bytes of any JSON value, floats included (client documents).

    Errors say what is wrong, never where or with what text.
    """
    return _dumps(_normalise(value, None, floats=True))


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


NONCE_MIN_BYTES = 16
NONCE_MAX_BYTES = 64


def decode_nonce(text: object, *, what: str = "nonce") -> bytes:
    """A client's nonce (commitments, node statements): 16 to 64 bytes in canonical
    unpadded base64url. The message names ``what``, never the value."""
    if not isinstance(text, str):
        raise CanonicalEncodingError(f"{what} must be a base64url string")
    if len(text) > 4 * NONCE_MAX_BYTES:  # don't decode a megabyte to refuse it
        raise CanonicalEncodingError(f"{what} must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes")
    try:
        nonce = b64urldecode_canonical(text, what=what)
    except CanonicalEncodingError:
        raise CanonicalEncodingError(
            f"{what} must be base64url without padding (RFC 4648 section 5), in its canonical form"
        ) from None
    if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
        raise CanonicalEncodingError(
            f"{what} must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes, got {len(nonce)}"
        )
    return nonce
