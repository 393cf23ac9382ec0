"""Enrolment and certificates: one service function per use case.

- :func:`create_enrolment_token`: an admin lets one node or gateway enrol (admin, REST).
- :func:`enrol`: a host presents the token and its CSR(s) (``POST /api/enrol/``) and gets
  its certificates and the CAs. The token is used up in the same transaction.
- :func:`tls_material`: what a target's next release carries: its current certificates,
  re-issued for the recorded public key when they are due (called by the rollout kinds'
  builders, so renewal rides on the rollout that already keeps releases fresh).
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from control_plane.changes.services import current_change_context
from control_plane.core.errors import Conflict
from control_plane.core.rollout import release_on_commit, rollout_kind
from control_plane.core.tls import ingress_ca, management_ca
from control_plane.pki.choices import CertificatePurpose, TargetKind
from control_plane.pki.models import EnrolmentToken, IssuedCertificate
from shared.pki import (
    SERVER,
    CertificateAuthority,
    CertificateError,
    TlsMaterial,
    certificate_pem,
    load_certificate,
    public_key_from_spki,
    read_csr,
    spki_pem,
)
from shared.pki import EnrolmentToken as TokenText


class EnrolmentRefused(Exception):
    """An enrolment the API refuses: ``status`` and ``code`` say how, the message why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class IssuedToken:
    token: EnrolmentToken
    text: str  # shown once


@dataclass(frozen=True)
class Enrolment:
    kind: str
    name: str
    certificate: str
    ca: str
    ingress_certificate: str | None = None
    ingress_ca: str | None = None


def _target_exists(kind: str, name: str) -> bool:
    return rollout_kind(kind).target_model.objects.filter(name=name).exists()


def create_enrolment_token(
    kind: str, target_name: str, *, lifetime_seconds: int | None = None
) -> IssuedToken:
    """A one-time token for the registered node or gateway ``target_name``.

    Refused (409) for a name that is not registered, or that a target of the other kind
    also has: a certificate names the target, and one name must mean one host.
    """
    if kind not in TargetKind.values:
        raise Conflict(f"no target kind {kind!r}", "unknown_kind")
    if not _target_exists(kind, target_name):
        raise Conflict(f"no {kind} named {target_name!r} is registered", "unknown_target")
    for other in TargetKind.values:
        if other != kind and _target_exists(other, target_name):
            raise Conflict(
                f"a {other} is also named {target_name!r}: certificates name one host",
                "ambiguous_name",
            )
    tls = settings.SANCTUM.tls
    lifetime = lifetime_seconds or tls.enrolment_token_lifetime_seconds
    if not 60 <= lifetime <= tls.enrolment_token_lifetime_seconds:
        raise Conflict(
            f"a token lives 60 to {tls.enrolment_token_lifetime_seconds} seconds", "bad_lifetime"
        )
    text = TokenText.new(management_ca().fingerprint)
    token = EnrolmentToken(
        kind=kind,
        target_name=target_name,
        token_id=text.token_id,
        secret_sha256=text.secret_sha256,
        ca_fingerprint=text.ca_fingerprint,
        expires_at=timezone.now() + dt.timedelta(seconds=lifetime),
        created_by=current_change_context().actor(),
    )
    token.save()
    return IssuedToken(token, str(text))


def _record(
    ca: CertificateAuthority,
    kind: str,
    name: str,
    purpose: str,
    public_key_pem: str,
    *,
    ip_addresses: Sequence[str] = (),
    enrolment: EnrolmentToken | None = None,
) -> IssuedCertificate:
    tls = settings.SANCTUM.tls
    seconds = (
        tls.ingress_certificate_lifetime_seconds
        if purpose == CertificatePurpose.INGRESS
        else tls.certificate_lifetime_seconds
    )
    cert = ca.issue(
        public_key_from_spki(public_key_pem),
        name,
        usage=SERVER,
        lifetime=dt.timedelta(seconds=seconds),
        ip_addresses=ip_addresses,
    )
    row = IssuedCertificate(
        kind=kind,
        target_name=name,
        purpose=purpose,
        serial=format(cert.serial_number, "x"),
        public_key=public_key_pem,
        certificate=certificate_pem(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        enrolment=enrolment,
    )
    row.save()
    return row


def _find_token(text: str) -> tuple[TokenText, EnrolmentToken]:
    try:
        presented = TokenText.parse(text)
    except CertificateError as exc:
        raise EnrolmentRefused(401, "invalid_token", str(exc)) from None
    token = EnrolmentToken.objects.select_for_update().filter(token_id=presented.token_id).first()
    if token is None or not hmac.compare_digest(token.secret_sha256, presented.secret_sha256):
        raise EnrolmentRefused(401, "invalid_token", "unknown enrolment token")
    return presented, token


def enrol(token_text: str, csr: str, ingress_csr: str | None = None) -> Enrolment:
    """Use ``token_text`` once: check the CSR(s) name the token's target, issue, record.

    A gateway sends a second CSR for its ingress (nginx) key. Once this commits, the
    target's next release is made (it now carries the certificates, and renewals after).
    """
    now = timezone.now()
    with transaction.atomic():
        presented, token = _find_token(token_text)
        if token.used_at is not None:
            raise EnrolmentRefused(401, "token_used", "this enrolment token was used already")
        if now >= token.expires_at:
            raise EnrolmentRefused(401, "token_expired", "this enrolment token has expired")
        ca = management_ca()
        if presented.ca_fingerprint != ca.fingerprint:
            raise EnrolmentRefused(
                409, "ca_changed", "the management CA is not the one this token names"
            )
        requests = [(CertificatePurpose.MANAGEMENT, csr)]
        if token.kind == TargetKind.GATEWAY:
            if not ingress_csr:
                raise EnrolmentRefused(400, "ingress_csr_required", "a gateway sends ingress_csr")
            requests.append((CertificatePurpose.INGRESS, ingress_csr))
        keys = {}
        for purpose, pem in requests:
            try:
                asked = read_csr(pem)
            except CertificateError as exc:
                raise EnrolmentRefused(400, "invalid_csr", f"{purpose} CSR: {exc}") from None
            if asked.name != token.target_name:
                raise EnrolmentRefused(
                    403,
                    "wrong_name",
                    f"the {purpose} CSR names {asked.name!r}; this token is for "
                    f"{token.target_name!r}",
                )
            keys[purpose] = spki_pem(asked.public_key)
        if len(set(keys.values())) != len(keys):
            raise EnrolmentRefused(400, "invalid_csr", "use one key per purpose")
        token.used_at = now
        token.save()
        # Every other token for this target is void now: one enrolment per token made,
        # and a token stolen earlier can't re-key the target later.
        voided = EnrolmentToken.objects.filter(
            kind=token.kind, target_name=token.target_name, used_at__isnull=True
        ).exclude(pk=token.pk)
        for other in voided:
            other.expires_at = min(other.expires_at, now)
            other.save()
        issued = {
            purpose: _record(
                _ca_for(purpose),
                token.kind,
                token.target_name,
                purpose,
                key,
                ip_addresses=_ingress_ips(token.kind, token.target_name)
                if purpose == CertificatePurpose.INGRESS
                else (),
                enrolment=token,
            )
            for purpose, key in keys.items()
        }
        release_on_commit(token.kind)
    ingress = issued.get(CertificatePurpose.INGRESS)
    return Enrolment(
        kind=token.kind,
        name=token.target_name,
        certificate=issued[CertificatePurpose.MANAGEMENT].certificate,
        ca=ca.certificate_pem,
        ingress_certificate=ingress.certificate if ingress else None,
        ingress_ca=ingress_ca().certificate_pem if ingress else None,
    )


def _ca_for(purpose: str) -> CertificateAuthority:
    return ingress_ca() if purpose == CertificatePurpose.INGRESS else management_ca()


def _ingress_ips(kind: str, name: str) -> list[str]:
    """The tunnel addresses a gateway's ingress certificate names (its kind says them)."""
    target = rollout_kind(kind).target_model.objects.filter(name=name).first()
    addresses = getattr(target, "tunnel_addresses", None)
    return list(addresses()) if callable(addresses) else []


def _ip_sans(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def current_certificate(
    kind: str, name: str, purpose: str, *, ip_addresses: Sequence[str] = ()
) -> IssuedCertificate | None:
    """The target's certificate for ``purpose``, re-issued for the same public key when
    it expires within ``tls.renew_before_seconds`` (or names other tunnel addresses);
    ``None`` for a target that never enrolled."""
    latest = IssuedCertificate.objects.latest_of(kind, name, purpose)
    if latest is None:
        return None
    renew = dt.timedelta(seconds=settings.SANCTUM.tls.renew_before_seconds)
    due = latest.not_after - renew <= timezone.now()
    if purpose == CertificatePurpose.INGRESS and not due:
        due = _ip_sans(load_certificate(latest.certificate)) != set(ip_addresses)
    if not due:
        return latest
    return _record(
        _ca_for(purpose), kind, name, purpose, latest.public_key, ip_addresses=ip_addresses
    )


def renew_now(kind: str, name: str) -> list[IssuedCertificate]:
    """Re-issue every certificate of ``name`` now, for the same keys, as when one is due
    (an operator's choice: a CA reissue, a test of renewal). The target's next release
    carries them; nothing is pushed from here."""
    renewed = []
    for purpose in CertificatePurpose.values:
        latest = IssuedCertificate.objects.latest_of(kind, name, purpose)
        if latest is None:
            continue
        ips = _ingress_ips(kind, name) if purpose == CertificatePurpose.INGRESS else ()
        renewed.append(
            _record(_ca_for(purpose), kind, name, purpose, latest.public_key, ip_addresses=ips)
        )
    return renewed


def tls_material(kind: str, name: str, *, ingress_ips: Sequence[str] = ()) -> TlsMaterial | None:
    """What ``name``'s next release carries (``shared.pki.TlsMaterial``), or ``None``."""
    management = current_certificate(kind, name, CertificatePurpose.MANAGEMENT)
    if management is None:
        return None
    ingress = current_certificate(kind, name, CertificatePurpose.INGRESS, ip_addresses=ingress_ips)
    return TlsMaterial(
        ca=management_ca().certificate_pem,
        certificate=management.certificate,
        ingress_ca=ingress_ca().certificate_pem if ingress else None,
        ingress_certificate=ingress.certificate if ingress else None,
    )
