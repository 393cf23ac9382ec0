"""The internal certificate authorities: TLS keys, CSRs, certificates, pins, tokens.

Two CAs, both held by the control plane, each for one kind of link:

- **management**: the management link between the control plane and its nodes and
  gateways, mutual TLS. A node or gateway gets a *server* certificate (EKU serverAuth,
  SAN = its registered name); the control plane alone gets a *client* certificate (EKU
  clientAuth, SAN = :data:`CONTROL_PLANE_NAME`). Listeners accept only client
  certificates of this CA, and only this CA ever issues clientAuth, so a node's own
  certificate can't be used to talk to another node (OpenSSL refuses it as a client).
- **ingress**: nginx on a gateway, which clients reach through their WireGuard tunnel
  (EKU serverAuth, SAN = the gateway's name and its tunnel addresses). Clients are
  given this CA only: nothing they trust is valid on the management link, and nothing
  issued for the ingress (whose key lives in nginx, the most exposed process) is
  accepted by the control plane or a management listener.

Keys are ECDSA P-256 (every TLS stack and nginx take it). Private keys are written with
``shared.keys``' rules: created exclusively, mode 0600, refused at load when others may
read them; a TLS private key is made where it is used and never travels: a node or
gateway sends a CSR, and later renewals reuse the public key recorded from it.

An enrolment token (:class:`EnrolmentToken`) carries the SHA-256 fingerprint of the
management CA's certificate, as kubeadm's discovery hash does, so that ``sanctum enrol``
can pin the CA it is given before it trusts anything the control plane says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import secrets
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field

from shared.keys import KeyFileError, check_private_file, write_atomically

MANAGEMENT_CA = "management"
INGRESS_CA = "ingress"

SERVER = "server"
CLIENT = "client"

CONTROL_PLANE_NAME = "control-plane.sanctum.internal"
"""The name the control plane's client certificate carries; listeners accept no other."""

TOKEN_PREFIX = "snc1"  # noqa: S105 (a format tag, not a secret)
_TOKEN_RE = re.compile(
    rf"^{TOKEN_PREFIX}\.([A-Za-z0-9]{{8}})\.([A-Za-z0-9_-]{{32,}})\.([0-9a-f]{{64}})$"
)
# Clocks of targets and the control plane differ a little; a certificate is valid from
# a few minutes before it is made.
BACKDATE = dt.timedelta(minutes=5)


class CertificateError(ValueError):
    """A certificate, CSR, key or token is malformed or does not fit what it is for."""


# --- keys ------------------------------------------------------------------------------


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def tls_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_tls_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """``key`` in a 0600 file, created exclusively (``FileExistsError`` if one is there)."""
    if path.exists():
        raise FileExistsError(f"{path} exists: a TLS key is made once, where it is used")
    write_atomically(path, tls_key_pem(key), 0o600)


def load_tls_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    check_private_file(path)
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"can't read TLS key {path}: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path} is not an ECDSA key")
    return key


def ensure_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        write_tls_key(path, generate_tls_key())
    return load_tls_key(path)


def spki_pem(public_key: ec.EllipticCurvePublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_from_spki(pem: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except ValueError:
        raise CertificateError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise CertificateError("a TLS key must be ECDSA P-256 or P-384")
    return key


_CURVES = {"secp256r1", "secp384r1"}


# --- certificates ------------------------------------------------------------------------


def load_certificate(pem: str | bytes) -> x509.Certificate:
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError("not a PEM certificate") from None


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def fingerprint(cert: x509.Certificate | str) -> str:
    """SHA-256 of the certificate's DER, lower-case hex: what a pin names."""
    if isinstance(cert, str):
        cert = load_certificate(cert)
    return cert.fingerprint(hashes.SHA256()).hex()


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))


def same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hmac.compare_digest(mine, theirs)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """``cert`` is signed by ``ca``'s key (and names it as issuer)."""
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_issued(
    cert_pem: str, ca_pem: str, key: ec.EllipticCurvePrivateKey, name: str
) -> x509.Certificate:
    """The certificate, if it is issued by ``ca_pem``, for ``key``, naming ``name``.

    What a node, a gateway and ``sanctum enrol`` check before they install one.
    """
    cert = load_certificate(cert_pem)
    ca = load_certificate(ca_pem)
    if not issued_by(cert, ca):
        raise CertificateError("the certificate is not issued by the pinned CA")
    if not same_public_key(cert, key):
        raise CertificateError("the certificate is for another key than this host's")
    if name not in dns_names(cert):
        raise CertificateError(f"the certificate does not name {name}")
    return cert


# --- certificate signing requests ----------------------------------------------------------


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> str:
    """A CSR for ``name`` (CN and DNS SAN), signed by ``key``: proof the sender holds it."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class RequestedName:
    """What a CSR asks for, once its signature has been checked."""

    name: str
    public_key: ec.EllipticCurvePublicKey


def read_csr(pem: str) -> RequestedName:
    """Check a CSR's self-signature and key type; return the one name it asks for.

    The CN and every DNS SAN must be the same name; anything else in the request (other
    extensions, IP SANs) is ignored: the CA decides what a certificate holds.
    """
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CertificateError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CertificateError("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise CertificateError("a TLS key must be ECDSA P-256 or P-384")
    names = {str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names |= set(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    if len(names) != 1:
        raise CertificateError("the CSR must name exactly one host (CN and DNS SAN alike)")
    return RequestedName(names.pop(), key)


# --- the CA ------------------------------------------------------------------------------


class CertificateAuthority:
    """One CA: its key (0600) and self-signed certificate, in a directory.

    ``ca.key`` and ``ca.crt`` under ``directory``; :meth:`open` makes them on first use
    when asked to (development), and otherwise refuses a directory without them.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.certificate = cert

    @classmethod
    def open(
        cls, directory: Path, label: str, *, create: bool = False, lifetime_days: int = 3650
    ) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if not key_path.exists():
            if not create:
                raise KeyFileError(
                    f"no {label} CA at {directory} (make it with: python -m control_plane tls init)"
                )
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = generate_tls_key()
            cert = _self_signed(key, label, lifetime_days)
            write_tls_key(key_path, key)
            write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        key = load_tls_key(key_path)
        try:
            cert = load_certificate(cert_path.read_bytes())
        except OSError:
            raise KeyFileError(f"no CA certificate at {cert_path}") from None
        if not same_public_key(cert, key):
            raise KeyFileError(f"{cert_path} is not the certificate of {key_path}")
        return cls(key, cert)

    @property
    def certificate_pem(self) -> str:
        return certificate_pem(self.certificate)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        name: str,
        *,
        usage: str,
        lifetime: dt.timedelta,
        ip_addresses: Iterable[str] = (),
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A leaf certificate for ``name`` (CN and DNS SAN), ``usage`` server or client."""
        if usage not in (SERVER, CLIENT):
            raise ValueError(f"usage is {SERVER!r} or {CLIENT!r}")
        now = now or dt.datetime.now(dt.UTC)
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.DNSName(name)]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        eku = (
            ExtendedKeyUsageOID.SERVER_AUTH if usage == SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def _self_signed(key: ec.EllipticCurvePrivateKey, label: str, days: int) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sanctum"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Sanctum {label} CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


# --- what a release carries ---------------------------------------------------------------


class TlsMaterial(BaseModel):
    """Certificates a release brings its target (never a private key).

    ``certificate``: the target's management server certificate, renewed before it
    expires for the public key recorded at enrolment. ``ca``: the management CA, whose
    client certificates the management listener accepts. A gateway's config also brings
    its ingress certificate (nginx) and the ingress CA, for the clients' download.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: str = Field(min_length=1, max_length=16_384)
    certificate: str | None = Field(default=None, max_length=16_384)
    ingress_ca: str | None = Field(default=None, max_length=16_384)
    ingress_certificate: str | None = Field(default=None, max_length=16_384)


# --- enrolment tokens ------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentToken:
    """``snc1.<id>.<secret>.<CA fingerprint>``: shown once, stored as the secret's hash.

    The id finds the stored token; the secret proves the holder was given it; the
    fingerprint is what ``sanctum enrol`` pins the management CA to.
    """

    token_id: str
    secret: str
    ca_fingerprint: str

    @classmethod
    def new(cls, ca_fingerprint: str) -> EnrolmentToken:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
        token_id = "".join(secrets.choice(alphabet) for _ in range(8))
        return cls(token_id, secrets.token_urlsafe(32), ca_fingerprint)

    @classmethod
    def parse(cls, text: str) -> EnrolmentToken:
        match = _TOKEN_RE.match(text.strip())
        if match is None:
            raise CertificateError(
                f"not an enrolment token (expected {TOKEN_PREFIX}.<id>.<secret>.<fingerprint>)"
            )
        return cls(*match.groups())

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.token_id}.{self.secret}.{self.ca_fingerprint}"

    @property
    def secret_sha256(self) -> str:
        return hash_secret(self.secret)


def hash_secret(secret: str) -> str:
    """SHA-256 of a token secret: 256 random bits, so a fast hash is the right one."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def ip_addresses_of(interfaces: Sequence[str]) -> list[str]:
    """``10.77.0.1/24`` -> ``10.77.0.1``: the addresses an ingress certificate names."""
    return [str(ipaddress.ip_interface(i).ip) for i in interfaces]


# --- TLS contexts ------------------------------------------------------------------------


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS 1.3 for a management listener; with ``client_ca``, a client certificate issued
    by it (EKU clientAuth: OpenSSL checks the purpose) is required."""
    check_private_file(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_pem: str, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.3 to a server whose certificate ``ca_pem`` issued (hostname checked), with
    a client certificate when ``cert`` and ``key`` are given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=ca_pem)
    if cert is not None and key is not None:
        check_private_file(key)
        context.load_cert_chain(cert, key)
    return context
