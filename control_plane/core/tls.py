"""The control plane's side of mutual TLS on the management link.

The two CAs (``shared.pki``) live under ``SANCTUM_CP_TLS__CA_DIR`` (production names it
and makes it with ``python -m control_plane tls init``; settings refuse to start
without it) or, in development, ``data_dir/keys/ca``, made on first use like the dev
keyring. The control plane's own client certificate (EKU clientAuth, SAN
``shared.pki.CONTROL_PLANE_NAME``) is issued by the management CA to a key kept beside
it, at first use and again before it expires.

Every HTTP call to a node or gateway goes through :func:`management_client`: for an
``https://`` management URL it presents that client certificate and accepts only a
server certificate of the management CA that names the target's *registered* name (the
URL may hold an address; the name is checked, through SNI, not the address). A plain
``http://`` URL is allowed in development, and in production only to a loopback host.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import ssl
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from shared.listeners import is_loopback
from shared.pki import (
    CLIENT,
    CONTROL_PLANE_NAME,
    INGRESS_CA,
    MANAGEMENT_CA,
    CertificateAuthority,
    CertificateError,
    certificate_pem,
    client_context,
    ensure_tls_key,
    load_certificate,
)

log = logging.getLogger(__name__)

CLIENT_KEY = "control-plane.key"
CLIENT_CERT = "control-plane.crt"


class PlaintextRefused(httpx.TransportError):
    """Production does not talk plain HTTP to a non-loopback management address."""


@functools.cache
def authority(which: str) -> CertificateAuthority:
    """The management or the ingress CA (made on first use in development)."""
    cp = settings.SANCTUM
    return CertificateAuthority.open(cp.ca_dir / which, which, create=not cp.production)


def management_ca() -> CertificateAuthority:
    return authority(MANAGEMENT_CA)


def ingress_ca() -> CertificateAuthority:
    return authority(INGRESS_CA)


def init(ca_dir: Path) -> dict[str, str]:
    """Make both CAs in ``ca_dir`` (kept if there); their fingerprints."""
    return {
        which: CertificateAuthority.open(ca_dir / which, which, create=True).fingerprint
        for which in (MANAGEMENT_CA, INGRESS_CA)
    }


def _due(cert_path: Path) -> bool:
    try:
        cert = load_certificate(cert_path.read_bytes())
    except (OSError, CertificateError):
        return True
    renew = dt.timedelta(seconds=settings.SANCTUM.tls.renew_before_seconds)
    return cert.not_valid_after_utc - renew <= dt.datetime.now(dt.UTC)


def client_identity() -> tuple[Path, Path]:
    """The control plane's client key and certificate files, issued or renewed if due."""
    directory = settings.SANCTUM.ca_dir
    key_path, cert_path = directory / CLIENT_KEY, directory / CLIENT_CERT
    try:
        key = ensure_tls_key(key_path)
    except FileExistsError:  # another process made it just now
        key = ensure_tls_key(key_path)
    if _due(cert_path):
        lifetime = dt.timedelta(seconds=settings.SANCTUM.tls.certificate_lifetime_seconds)
        cert = management_ca().issue(
            key.public_key(), CONTROL_PLANE_NAME, usage=CLIENT, lifetime=lifetime
        )
        from shared.keys import write_atomically

        write_atomically(cert_path, certificate_pem(cert).encode("ascii"), 0o644)
        log.info("control plane client certificate issued serial=%x", cert.serial_number)
    return cert_path, key_path


_lock = threading.Lock()
_context: tuple[ssl.SSLContext, dt.datetime] | None = None


def management_context() -> ssl.SSLContext:
    """The client-side context: our certificate, the management CA; rebuilt on renewal."""
    global _context
    with _lock:
        now = dt.datetime.now(dt.UTC)
        if _context is None or _context[1] <= now:
            cert_path, key_path = client_identity()
            renew = dt.timedelta(seconds=settings.SANCTUM.tls.renew_before_seconds)
            expires = load_certificate(cert_path.read_bytes()).not_valid_after_utc
            context = client_context(management_ca().certificate_pem, cert_path, key_path)
            _context = (context, expires - renew)
        return _context[0]


def reset() -> None:
    """Forget cached CAs and contexts (tests that change settings)."""
    global _context
    authority.cache_clear()
    with _lock:
        _context = None


class _TargetTransport(httpx.HTTPTransport):
    """Checks the server certificate against ``name`` whatever host the URL holds."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._name = name

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": self._name}
        elif settings.SANCTUM.production and not is_loopback(request.url.host):
            raise PlaintextRefused(
                f"production refuses plain HTTP to {request.url.host}: give the target an "
                "https:// management URL (it serves mutual TLS once enrolled)",
                request=request,
            )
        return super().handle_request(request)


def management_client(url: str, name: str, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` for the management listener at ``url`` of the target ``name``."""
    https = urlsplit(url).scheme == "https"
    transport = _TargetTransport(name, verify=management_context() if https else True)
    return httpx.Client(base_url=url, transport=transport, **kwargs)
