"""Requests signed by the control plane's management key, for the management listeners.

Every management call (config pushes, health, usage records and their acknowledgement,
knowledge-base loading) carries ``Authorization: Sanctum-Signed <JWS>`` whose payload
binds the method, the path with its query, a SHA-256 of the body, the audience (the id
of the node or gateway it is meant for), a time and a one-time id. The receiver checks
the signature against the management keys it trusts, that all of these match the
request and itself, that the time is within the allowed skew and that the id was not
seen before. Seen ids are kept in a file (:class:`ReplayGuard`), so a restart does not
reopen the window for a replay, and a request for one node is refused by every other.

Why not HTTP Message Signatures (RFC 9421): the maintained package for it (pyauth's
``http-message-signatures``) would sign the same components (``@method``,
``@target-uri``, ``content-digest``, the ``created`` and ``nonce`` parameters), but it
leaves what matters here to the application, as the RFC does (its section 7): the
audience, remembering nonces across restarts, and trusting a set of keys by purpose and
``not_after``. Everything else on the management link (bundles, usage records, health
answers) is a JWS checked by ``shared.envelope``; requests in the same envelope keep one
format, one verifier and one key-selection rule instead of two. Revisit if a party
outside Sanctum must verify these requests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import envelope
from shared.keys import Signer, write_atomically

logger = logging.getLogger(__name__)

SCHEME = "Sanctum-Signed"
MAX_SKEW_SECONDS = 300


class SignedRequestError(ValueError):
    """The request's signature is missing, wrong, stale, replayed or for someone else."""


def _claims(method: str, path: str, body: bytes, audience: str) -> dict[str, Any]:
    return {
        "method": method.upper(),
        "path": path,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "aud": audience,
        "iat": int(time.time()),
        "jti": secrets.token_hex(16),
    }


def authorization(
    key: Signer, method: str, path: str, body: bytes = b"", *, audience: str
) -> tuple[str, str]:
    """The ``Authorization`` header value for one request, and its one-time id."""
    claims = _claims(method, path, body, audience)
    token = envelope.sign(claims, key, envelope.TYP_REQUEST)
    return f"{SCHEME} {token}", claims["jti"]


class SignedRequestAuth(httpx.Auth):
    """httpx auth that signs every request for ``audience`` with ``key``.

    ``jti`` is the one-time id of the last request signed: a signed answer (health)
    echoes it as its nonce.
    """

    requires_request_body = True

    def __init__(self, key: Signer, audience: str) -> None:
        self._key = key
        self._audience = audience
        self.jti: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        request.headers["Authorization"], self.jti = authorization(
            self._key, request.method, target, request.content, audience=self._audience
        )
        yield request


class ReplayGuard:
    """One-time ids seen within the skew window, kept in memory and, given a path, in a
    file, so they stay refused across a restart.

    The file is append-only lines of ``<expiry> <id>``, fsynced before a request is let
    through, and rewritten without the expired ones when it is opened and when it grows.
    """

    def __init__(self, path: Path | None = None, max_skew: int = MAX_SKEW_SECONDS) -> None:
        self._path = path
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._lines = 0
        # Until then every request is refused: the ids seen before a restart are
        # unknown, so a replay could not be told apart.
        self._blind_until = 0.0
        if path is not None:
            self._load(path, max_skew)

    def _load(self, path: Path, max_skew: int) -> None:
        now = time.time()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError:
            logger.error("replay state unreadable; refusing management requests for a while")
            self._blind_until = now + 2 * max_skew + 1
            data = b""
        for line in data.splitlines():
            expiry, _, jti = line.partition(b" ")
            try:
                until, text = float(expiry), jti.decode("ascii")
            except (ValueError, UnicodeDecodeError):
                continue  # a torn or damaged line: the others still count
            if until > now and text:
                self._seen[text] = until
        try:
            self._rewrite()
        except OSError:
            logger.error("replay state not writable; refusing management requests")
            self._blind_until = float("inf")

    def _rewrite(self) -> None:
        if self._path is None:
            return
        text = "".join(f"{until:.0f} {jti}\n" for jti, until in self._seen.items())
        write_atomically(self._path, text.encode("ascii"))
        self._lines = len(self._seen)

    def first_use(self, jti: str, until: float) -> bool:
        """Record ``jti`` until ``until``; False if it was seen already."""
        now = time.time()
        if now < self._blind_until:
            return False
        with self._lock:
            for old in [k for k, t in self._seen.items() if t <= now]:
                del self._seen[old]
            if jti in self._seen:
                return False
            self._seen[jti] = until
            if self._path is None:
                return True
            try:
                if self._lines > 4 * len(self._seen) + 1024:
                    self._rewrite()
                else:
                    with open(self._path, "a", encoding="ascii") as fh:
                        fh.write(f"{until:.0f} {jti}\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                    self._lines += 1
            except OSError:
                # Not on disk, not let through: it would be replayable after a restart.
                del self._seen[jti]
                logger.error("replay state not writable; management request refused")
                return False
            return True


class SignedRequestVerifier:
    """Checks signed requests meant for ``audience``; refuses replays via ``replay``.

    ``trusted`` gives the management keys trusted right now (a node's set changes when
    a config bundle brings a new one).
    """

    def __init__(
        self,
        trusted: Callable[[], Iterable[Ed25519PublicKey]],
        audience: str,
        replay: ReplayGuard,
        max_skew: int = MAX_SKEW_SECONDS,
    ) -> None:
        self._trusted = trusted
        self._audience = audience
        self._replay = replay
        self._max_skew = max_skew

    def verify(self, header: str | None, method: str, path: str, body: bytes) -> dict[str, Any]:
        """The request's claims, once every check holds (else :class:`SignedRequestError`)."""
        if not header or not header.startswith(SCHEME + " "):
            raise SignedRequestError("missing signed authorization")
        try:
            claims = envelope.verify(
                header[len(SCHEME) + 1 :].strip(), list(self._trusted()), envelope.TYP_REQUEST
            )
        except envelope.EnvelopeError as exc:
            raise SignedRequestError(str(exc)) from None
        if claims.get("aud") != self._audience:
            raise SignedRequestError("signature is for another node or gateway")
        if claims.get("method") != method.upper() or claims.get("path") != path:
            raise SignedRequestError("signature is for another request")
        if claims.get("body_sha256") != hashlib.sha256(body).hexdigest():
            raise SignedRequestError("signature does not cover this body")
        now = time.time()
        iat = claims.get("iat")
        if not isinstance(iat, int) or abs(now - iat) > self._max_skew:
            raise SignedRequestError("signature is too old or from the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 16 <= len(jti) <= 64:
            raise SignedRequestError("signature has no one-time id")
        if not self._replay.first_use(jti, iat + self._max_skew + 1):
            raise SignedRequestError("request replayed (or this node can't tell yet)")
        return claims


# --- signed answers ------------------------------------------------------------------


def sign_answer(document: dict[str, Any], key: Signer, *, nonce: str, audience: str) -> str:
    """A node's or gateway's answer (health), signed, bound to the request's one-time id."""
    body = {**document, "nonce": nonce, "aud": audience, "iat": int(time.time())}
    return envelope.sign(body, key, envelope.TYP_HEALTH)


def open_answer(
    token: str | bytes, key: Ed25519PublicKey, *, nonce: str, audience: str
) -> dict[str, Any]:
    """The answer's document, if ``key`` signed it for our request (else SignedRequestError)."""
    try:
        document = envelope.verify(token, key, envelope.TYP_HEALTH)
    except envelope.EnvelopeError as exc:
        raise SignedRequestError(f"answer refused: {exc}") from None
    if document.get("nonce") != nonce or document.get("aud") != audience:
        raise SignedRequestError("answer is not for this request")
    return document
