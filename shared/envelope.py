"""The signed envelope: compact JWS (RFC 7515) with ``alg: EdDSA`` over Ed25519.

Every document that crosses between the planes travels in one: config bundles, gateway
config, usage records, signed management requests. The protected header carries
``kid`` (the signer's RFC 7638 thumbprint) and ``typ`` (what the document is), so a
config bundle can't be replayed as a usage record or the other way round. The payload
is the document's canonical JSON.

Signing goes through :class:`shared.keys.Signer` (a file key or a hardware one: only
its ``sign`` is called, over the JWS signing input); checking is joserfc's. This module
pins the algorithm, the key type and the header rules in one place.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from shared.canonical import canonical_json
from shared.keys import Signer, b64url, key_id

ALGORITHM = "EdDSA"

TYP_CONFIG = "sanctum-config+jws"
TYP_GATEWAY_CONFIG = "sanctum-gateway-config+jws"
TYP_USAGE_RECORD = "sanctum-usage-record+jws"
TYP_REQUEST = "sanctum-request+jws"
TYP_TREE_HEAD = "sanctum-tree-head+jws"
TYP_AUDIT_MANIFEST = "sanctum-audit-manifest+jws"
TYP_HEALTH = "sanctum-health+jws"
TYP_NODE_STATEMENT = "sanctum-node-statement+jws"
TYP_RELEASE_LIST = "sanctum-allowed-releases+jws"


# joserfc refuses payloads over 128,000 bytes by default; an audit manifest lists every
# receipt of a bundle (about 120 bytes each), so a client with a thousand sessions in a
# period would pass it. The listeners bound request bodies themselves (data_plane's
# max_*_body_bytes), so the envelope's own ceiling only has to stop the absurd.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024


class _Registry(JWSRegistry):
    max_payload_length = MAX_PAYLOAD_BYTES


_REGISTRY = _Registry(algorithms=[ALGORITHM])


class EnvelopeError(ValueError):
    """The envelope is malformed, of the wrong type, or not signed by a trusted key.

    The message names what failed and never includes the payload.
    """


def _okp(key: Ed25519PublicKey) -> OKPKey:
    return OKPKey.import_key(key)


def sign(document: dict[str, Any], key: Signer, typ: str) -> str:
    """Sign ``document`` (its canonical JSON) and return the compact JWS (RFC 7515 §7.1)."""
    header = {"alg": ALGORITHM, "typ": typ, "kid": key_id(key.public_key())}
    signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(document))}"
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def peek_header(token: str) -> dict[str, Any]:
    """The protected header, unverified (to pick a key by ``kid``)."""
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
    except (JoseError, ValueError, UnicodeError):
        raise EnvelopeError("malformed envelope: not a compact JWS") from None
    return dict(obj.headers())


def verify(
    token: str | bytes,
    trusted: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    typ: str,
) -> dict[str, Any]:
    """Check the envelope against the trusted key(s) and return the document.

    Raises :class:`EnvelopeError` unless the header says ``alg: EdDSA`` and ``typ``,
    its ``kid`` names one of the trusted keys, and the signature verifies.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii").strip()
        except UnicodeDecodeError:
            raise EnvelopeError("malformed envelope: not ASCII") from None
    keys = [trusted] if isinstance(trusted, Ed25519PublicKey) else list(trusted)
    header = peek_header(token)
    if header.get("alg") != ALGORITHM:
        raise EnvelopeError(f"envelope algorithm must be {ALGORITHM}")
    if header.get("typ") != typ:
        raise EnvelopeError(f"envelope type must be {typ!r}")
    by_kid = {key_id(k): k for k in keys}
    key = by_kid.get(str(header.get("kid")))
    if key is None:
        raise EnvelopeError("envelope signed by an untrusted key")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = jws.deserialize_compact(token, _okp(key), registry=_REGISTRY)
    except JoseError:
        raise EnvelopeError("envelope signature does not verify") from None
    try:
        document = json.loads(obj.payload)
    except ValueError:
        raise EnvelopeError("envelope payload is not JSON") from None
    if not isinstance(document, dict):
        raise EnvelopeError("envelope payload is not a JSON object")
    return document
