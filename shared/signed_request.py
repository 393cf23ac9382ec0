"""Requests signed by the control plane's key, for the management listeners.

A config bundle authenticates itself; other management calls (usage records and their
acknowledgement, knowledge-base loading) carry ``Authorization: Sanctum-Signed <JWS>``
whose payload binds the method, the path with its query, a SHA-256 of the body, a time
and a one-time id. The receiver checks the signature against the control plane's public
key, that all of these match the request, that the time is within the allowed skew and
that the id was not seen before (replay).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Generator
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared import envelope

SCHEME = "Sanctum-Signed"
MAX_SKEW_SECONDS = 300


class SignedRequestError(ValueError):
    """The request's signature is missing, wrong, stale or replayed."""


def _claims(method: str, path: str, body: bytes) -> dict[str, Any]:
    return {
        "method": method.upper(),
        "path": path,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "iat": int(time.time()),
        "jti": secrets.token_hex(16),
    }


def authorization(key: Ed25519PrivateKey, method: str, path: str, body: bytes = b"") -> str:
    """The ``Authorization`` header value for one request."""
    token = envelope.sign(_claims(method, path, body), key, envelope.TYP_REQUEST)
    return f"{SCHEME} {token}"


class SignedRequestAuth(httpx.Auth):
    """httpx auth that signs every request with the control plane's key."""

    requires_request_body = True

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        request.headers["Authorization"] = authorization(
            self._key, request.method, target, request.content
        )
        yield request


class SignedRequestVerifier:
    """Checks signed requests; remembers recent ids to refuse replays."""

    def __init__(self, trusted: Ed25519PublicKey, max_skew: int = MAX_SKEW_SECONDS) -> None:
        self._trusted = trusted
        self._max_skew = max_skew
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, header: str | None, method: str, path: str, body: bytes) -> None:
        if not header or not header.startswith(SCHEME + " "):
            raise SignedRequestError("missing signed authorization")
        try:
            claims = envelope.verify(
                header[len(SCHEME) + 1 :].strip(), self._trusted, envelope.TYP_REQUEST
            )
        except envelope.EnvelopeError as exc:
            raise SignedRequestError(str(exc)) from None
        if claims.get("method") != method.upper() or claims.get("path") != path:
            raise SignedRequestError("signature is for another request")
        if claims.get("body_sha256") != hashlib.sha256(body).hexdigest():
            raise SignedRequestError("signature does not cover this body")
        now = time.time()
        iat = claims.get("iat")
        if not isinstance(iat, int) or abs(now - iat) > self._max_skew:
            raise SignedRequestError("signature is too old or from the future")
        jti = str(claims.get("jti", ""))
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - 2 * self._max_skew:
                self._seen.popitem(last=False)
            if not jti or jti in self._seen:
                raise SignedRequestError("request replayed")
            self._seen[jti] = now
