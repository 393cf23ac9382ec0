"""Single sign-on through an OpenID Connect provider, with mozilla-django-oidc.

The flow is the authorization code flow with PKCE (S256), a ``state`` and a ``nonce``
(mozilla-django-oidc's views keep them in the session and check them). On the callback
this backend exchanges the code, checks the ID token's signature (the provider's JWKS),
expiry, nonce, issuer and audience, reads the user-info claims and hands them to
``services.sign_in_with_claims``, which maps the roles claim to the ``admin`` and
``auditor`` groups.

The provider's endpoints are read from its discovery document when they are not all
configured, at the first sign-in (not at start-up: the control plane starts and local
sign-in works while the provider is down).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from control_plane.accounts.services import SignInRefused, sign_in_with_claims
from control_plane.environment import OIDC_ENDPOINTS, OidcSettings

REFUSAL_ATTRIBUTE = "sanctum_sign_in_refused"
logger = logging.getLogger(__name__)


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be read."""


@dataclass(frozen=True)
class ProviderEndpoints:
    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str


_discovered: dict[str, ProviderEndpoints] = {}
_lock = threading.Lock()


def provider_endpoints(oidc: OidcSettings | None = None) -> ProviderEndpoints:
    """The configured endpoints, completed from the provider's discovery document."""
    oidc = oidc or settings.SANCTUM.auth.oidc
    configured = {name: getattr(oidc, name) for name in OIDC_ENDPOINTS}
    if all(configured.values()):
        return ProviderEndpoints(issuer=oidc.issuer, **configured)
    issuer = str(oidc.issuer)
    with _lock:
        if issuer not in _discovered:
            _discovered[issuer] = _discover(issuer, oidc.timeout_seconds)
        found = _discovered[issuer]
    return ProviderEndpoints(
        issuer=found.issuer,
        **{name: configured[name] or getattr(found, name) for name in OIDC_ENDPOINTS},
    )


def _discover(issuer: str, timeout: float) -> ProviderEndpoints:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        document = response.json()
        endpoints = {name: str(document[name]) for name in OIDC_ENDPOINTS}
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise ProviderUnavailable(f"{url}: {type(exc).__name__}") from None
    if document.get("issuer") != issuer:
        # OpenID Connect Discovery 1.0, section 4.3: the document must name this issuer.
        raise ProviderUnavailable(f"{url} names another issuer")
    return ProviderEndpoints(issuer=issuer, **endpoints)


def is_sso_callback(request: Any, credentials: dict[str, Any] | None = None) -> bool:
    """django-axes' AXES_WHITELIST_CALLABLE: the callback's sign-ins are not counted.

    There is nothing to guess there: state, nonce and PKCE tie the answer to the browser
    that started it, the code is single-use and the provider checks it (and throttles its
    own sign-in). Counting its refusals by address would let one user with no role lock
    everyone behind the same address out of single sign-on.
    """
    credentials = credentials or {}
    return "nonce" in credentials and "password" not in credentials


class OperatorOIDCBackend(OIDCAuthenticationBackend):
    """Authenticates the OpenID Connect callback, and nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Not the parent's: it reads the endpoints, which may need the network, and
        # Django builds every backend for every password sign-in too.
        self.UserModel = get_user_model()
        self.oidc: OidcSettings = settings.SANCTUM.auth.oidc
        self.OIDC_RP_CLIENT_ID = self.oidc.client_id
        self.OIDC_RP_CLIENT_SECRET = ""  # read at the callback (a bad file can't stop
        # password sign-ins, for which Django builds this backend too)
        self.OIDC_RP_SIGN_ALGO = self.oidc.sign_algorithm
        self.OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        # The callback view passes the nonce and PKCE verifier it kept in the session;
        # a password form posted to a URL carrying ?code=&state= must not land here.
        if request is None or "nonce" not in kwargs or "password" in kwargs:
            return None
        self.OIDC_RP_CLIENT_SECRET = self.oidc.client_secret()
        endpoints = provider_endpoints(self.oidc)
        self.issuer = endpoints.issuer
        self.OIDC_OP_TOKEN_ENDPOINT = endpoints.token_endpoint
        self.OIDC_OP_USER_ENDPOINT = endpoints.userinfo_endpoint
        self.OIDC_OP_JWKS_ENDPOINT = endpoints.jwks_uri
        try:
            return super().authenticate(request, **kwargs)
        except (httpx.HTTPError, requests.RequestException) as exc:
            # The provider failed mid-way (token, keys or user info): the person is told
            # so; the log names the error's kind, never the URL's code or a token.
            logger.warning("single sign-on: the provider failed: %s", type(exc).__name__)
            setattr(request, REFUSAL_ATTRIBUTE, "The sign-in provider did not answer; try again.")
            return None

    def retrieve_matching_jwk(self, token: str) -> Any:
        """The provider's key for this token: by its key id, or, for a token that names
        none, the provider's only signing key (never a guess among several)."""
        if "kid" in jwt.get_unverified_header(token):
            return super().retrieve_matching_jwk(token)
        response = httpx.get(self.OIDC_OP_JWKS_ENDPOINT, timeout=self.oidc.timeout_seconds)
        response.raise_for_status()
        keys = [key for key in response.json().get("keys", []) if key.get("use", "sig") == "sig"]
        if len(keys) != 1:
            raise SuspiciousOperation("ID token names no key and the provider has several")
        return jwt.PyJWK(keys[0])

    def verify_token(self, token: str, **kwargs: Any) -> Any:
        """The parent checks signature, expiry and nonce; audience and issuer here."""
        payload = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token is not for this client")
        if self.issuer and payload.get("iss") != self.issuer:
            raise SuspiciousOperation("ID token is from another issuer")
        return payload

    def get_or_create_user(self, access_token: str, id_token: str, payload: Any) -> Any:
        claims = {**payload, **self.get_userinfo(access_token, id_token, payload)}
        if claims.get("sub") != payload.get("sub"):
            raise SuspiciousOperation("user info is about another subject")
        try:
            return sign_in_with_claims(
                issuer=self.issuer or str(self.oidc.issuer or self.OIDC_OP_TOKEN_ENDPOINT),
                claims=claims,
                roles_claim=self.oidc.roles_claim,
                role_groups=self.oidc.role_groups,
                username_claim=self.oidc.username_claim,
                scope_new_auditors=self.oidc.scope_new_auditors,
            )
        except SignInRefused as refused:
            # The callback view shows this to the person (a 403 page), not a crash.
            setattr(self.request, REFUSAL_ATTRIBUTE, str(refused))
            return None
