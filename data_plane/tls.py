"""Mutual TLS on a management listener (a node's or a gateway's): the files, the live
context, renewal without a restart, and who may connect.

Files, in the target's TLS directory (``sanctum enrol`` writes the first three):

- ``management.key``: this host's TLS key, made here at enrolment (0600), never sent;
- ``management.crt``: its server certificate from the control plane's management CA,
  short-lived and replaced by :meth:`ManagementTLS.install` when a signed release brings
  a renewed one;
- ``management-ca.crt``: the management CA (pinned at enrolment), whose client
  certificates the listener requires.

One ``ssl.SSLContext`` serves the listener for the process's life: a renewal loads the
new chain into it, so every handshake after it presents the new certificate while
connections already open (a stream in flight) carry on with theirs. OpenSSL checks that
a client's certificate chains to the CA and is for client authentication (a node's own
server certificate is refused as a client); :class:`ControlPlaneOnly` then closes any
connection whose certificate does not name the control plane.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.keys import write_atomically
from shared.listeners import is_loopback
from shared.pki import (
    CONTROL_PLANE_NAME,
    CertificateError,
    TlsMaterial,
    check_issued,
    load_certificate,
    load_tls_key,
    server_context,
)

logger = logging.getLogger(__name__)

KEY_FILE = "management.key"
CERT_FILE = "management.crt"
CA_FILE = "management-ca.crt"


class ManagementTLS:
    """The TLS side of one management listener (``name``: the node id or gateway name)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key_path = directory / KEY_FILE
        self.cert_path = directory / CERT_FILE
        self.ca_path = directory / CA_FILE
        self._context: ssl.SSLContext | None = None
        self._scrape_context: ssl.SSLContext | None = None

    @property
    def enrolled(self) -> bool:
        """A key and a certificate are here: the listener serves TLS, never plain."""
        return self.key_path.exists() and self.cert_path.exists()

    def context(self) -> ssl.SSLContext:
        """The listener's context, made once (a client certificate is required)."""
        if self._context is None:
            self._context = server_context(self.cert_path, self.key_path, self.ca_path)
        return self._context

    def scrape_context(self) -> ssl.SSLContext:
        """The metrics listener's context: the same certificate, no client certificate
        asked (scrapers bring a bearer token instead; shared.metrics)."""
        if self._scrape_context is None:
            self._scrape_context = server_context(self.cert_path, self.key_path, None)
        return self._scrape_context

    def certificate_summary(self) -> dict[str, Any] | None:
        """Serial and expiry of the certificate in use, for health (no key material)."""
        if not self.cert_path.exists():
            return None
        cert = load_certificate(self.cert_path.read_bytes())
        return {
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }

    def check(self, material: TlsMaterial) -> None:
        """Refuse (``CertificateError``) a certificate that is not for this host's key and
        name, or not issued by the CA that comes with it."""
        if material.certificate is None or not self.key_path.exists():
            return
        check_issued(material.certificate, material.ca, load_tls_key(self.key_path), self.name)

    def install(self, material: TlsMaterial | None) -> bool:
        """Write what ``material`` changes and load it into the live context.

        Call it only with material that passed :meth:`check`. Returns whether the
        certificate changed.
        """
        if material is None or material.certificate is None or not self.key_path.exists():
            return False
        current = self.cert_path.read_text("ascii") if self.cert_path.exists() else ""
        ca_current = self.ca_path.read_text("ascii") if self.ca_path.exists() else ""
        if material.ca != ca_current:
            write_atomically(self.ca_path, material.ca.encode("ascii"), 0o644)
        if material.certificate == current:
            if material.ca != ca_current and self._context is not None:
                self._context.load_verify_locations(cafile=str(self.ca_path))
            return False
        write_atomically(self.cert_path, material.certificate.encode("ascii"), 0o644)
        if self._context is not None:
            # New handshakes take the new chain; open connections keep theirs.
            self._context.load_cert_chain(self.cert_path, self.key_path)
            self._context.load_verify_locations(cafile=str(self.ca_path))
        if self._scrape_context is not None:
            self._scrape_context.load_cert_chain(self.cert_path, self.key_path)
        summary = self.certificate_summary() or {}
        logger.info(
            "management certificate installed serial=%s not_after=%s",
            summary.get("serial"),
            summary.get("not_after"),
        )
        return True


def require_tls(environment: str, host: str, tls: ManagementTLS) -> None:
    """Production refuses a plaintext management listener on a non-loopback address."""
    if environment == "production" and not tls.enrolled and not is_loopback(host):
        raise CertificateError(
            f"production refuses a plaintext management listener on {host}: enrol this "
            f"host first (sanctum enrol), which writes {tls.cert_path}"
        )


class ControlPlaneOnly(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that hangs up on a TLS client not named the control
    plane (a certificate of the CA for clientAuth that names someone else)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if transport.get_extra_info("sslcontext") is None:
            return  # plain loopback in development
        cert = transport.get_extra_info("peercert") or {}
        names = {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}
        if CONTROL_PLANE_NAME not in names:
            logger.warning("management connection refused: client is not the control plane")
            self._refused = True
            # abort, not close: a request sent in the same read as the handshake's end
            # must never reach the parser (close would still hand it over).
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_refused", False):
            return
        super().data_received(data)


def uvicorn_tls(tls: ManagementTLS, *, client_certificate: bool = True) -> dict[str, Any]:
    """``uvicorn.Config`` arguments for a management listener: TLS with the live context
    and the control-plane check when enrolled; plain otherwise. Without
    ``client_certificate`` (the metrics listener): TLS with the same certificate, open
    to any client (the route asks for its own credential)."""
    if not tls.enrolled:
        return {}
    if not client_certificate:
        scrape = tls.scrape_context()
        return {"ssl_context_factory": lambda config, default: scrape}
    context = tls.context()
    return {
        "http": ControlPlaneOnly,
        "ssl_context_factory": lambda config, default: context,
    }
