"""Enrolment: an admin's one-time token, ``sanctum enrol`` on the host, the certificates.

The CLI's own function runs against the control plane's Django app (the real views,
services and database), so what is checked is what a host would meet.
"""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from django.test import Client as DjangoClient
from django.utils import timezone

from control_plane.core.tls import ingress_ca, management_ca
from control_plane.fleet.rollout import build_bundle
from control_plane.network.rollout import build_gateway_config
from control_plane.pki.choices import CertificatePurpose
from control_plane.pki.models import EnrolmentToken, IssuedCertificate
from control_plane.pki.services import tls_material
from shared.cli.enrol import EnrolError, enrol
from shared.pki import dns_names, load_certificate, load_tls_key, same_public_key
from tests.control_plane.factories import ClientFactory, NodeFactory
from tests.control_plane.network.conftest import make_gateway

URL = "http://127.0.0.1"  # loopback: the CLI allows plain HTTP only to this machine


class DjangoTransport(httpx.BaseTransport):
    """httpx over Django's test client: the real views, in the test's transaction."""

    def __init__(self) -> None:
        self.client = DjangoClient()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.generic(
            request.method,
            request.url.raw_path.decode("ascii"),
            data=request.read(),
            content_type=request.headers.get("content-type", ""),
        )
        return httpx.Response(
            answer.status_code, headers=dict(answer.items()), content=answer.content
        )


@pytest.fixture
def wsgi(db) -> DjangoTransport:
    return DjangoTransport()


def _token(admin_api, kind: str, name: str) -> str:
    answer = admin_api.post(
        "/api/enrolment-tokens/", {"kind": kind, "target_name": name}, format="json"
    )
    assert answer.status_code == 201, answer.json()
    assert answer["Cache-Control"] == "no-store"
    return str(answer.json()["token"])


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_node_enrols_once_with_its_own_key_and_gets_a_server_certificate(
    admin_api, wsgi, tmp_path: Path
) -> None:
    node = NodeFactory(name="node-7")
    token = _token(admin_api, "node", "node-7")
    stored = EnrolmentToken.objects.get()
    assert stored.secret_sha256 not in token and token.split(".")[2] not in str(
        admin_api.get(f"/api/enrolment-tokens/{stored.pk}/").json()
    )

    written = enrol(URL, token, "node", "node-7", tmp_path / "tls", transport=wsgi)

    key_path = tmp_path / "tls" / "management.key"
    assert key_path in written and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = load_certificate((tmp_path / "tls" / "management.crt").read_bytes())
    assert same_public_key(cert, load_tls_key(key_path))
    assert dns_names(cert) == ["node-7"] and _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=7, minutes=5)
    assert (tmp_path / "tls" / "management-ca.crt").read_text() == management_ca().certificate_pem
    issued = IssuedCertificate.objects.get()
    assert issued.target_name == "node-7" and issued.serial == format(cert.serial_number, "x")
    # The node's next release carries the certificate.
    bundle = build_bundle(node, 1)
    assert bundle.tls is not None and bundle.tls.certificate == issued.certificate

    # Single use: the same token again is refused, and nothing is issued.
    with pytest.raises(EnrolError, match="used already"):
        enrol(URL, token, "node", "node-7", tmp_path / "again", transport=wsgi)
    assert IssuedCertificate.objects.count() == 1


def test_an_expired_token_is_refused(admin_api, wsgi, tmp_path: Path) -> None:
    NodeFactory(name="node-7")
    token = _token(admin_api, "node", "node-7")
    stored = EnrolmentToken.objects.get()
    stored.expires_at = timezone.now() - dt.timedelta(seconds=1)
    stored.save()

    with pytest.raises(EnrolError, match="expired"):
        enrol(URL, token, "node", "node-7", tmp_path / "tls", transport=wsgi)
    assert not IssuedCertificate.objects.exists()


def test_a_token_naming_another_ca_is_refused_before_the_token_is_sent(
    admin_api, wsgi, tmp_path: Path
) -> None:
    NodeFactory(name="node-7")
    token = _token(admin_api, "node", "node-7")
    forged = token[:-64] + "0" * 64  # the fingerprint of some other CA

    with pytest.raises(EnrolError, match="not the one the token names"):
        enrol(URL, forged, "node", "node-7", tmp_path / "tls", transport=wsgi)
    assert EnrolmentToken.objects.get().used_at is None  # never presented
    assert not (tmp_path / "tls" / "management.key").exists()


def test_a_csr_for_another_name_is_refused_and_the_token_stays_unused(
    admin_api, wsgi, tmp_path: Path
) -> None:
    NodeFactory(name="node-7")
    NodeFactory(name="node-8")
    token = _token(admin_api, "node", "node-7")

    with pytest.raises(EnrolError, match=r"HTTP 403.*names 'node-8'"):
        enrol(URL, token, "node", "node-8", tmp_path / "tls", transport=wsgi)
    assert EnrolmentToken.objects.get().used_at is None
    assert not IssuedCertificate.objects.exists()


def test_the_cli_sends_no_token_in_clear_across_a_network(admin_api, tmp_path: Path) -> None:
    NodeFactory(name="node-7")
    token = _token(admin_api, "node", "node-7")
    with pytest.raises(EnrolError, match="https"):
        enrol("http://cp.example.net", token, "node", "node-7", tmp_path / "tls")


def test_tokens_are_for_registered_unambiguous_names_and_admins_only(
    admin_api, auditor_api, db
) -> None:
    NodeFactory(name="edge")
    make_gateway("edge")
    unknown = admin_api.post(
        "/api/enrolment-tokens/", {"kind": "node", "target_name": "nope"}, format="json"
    )
    both = admin_api.post(
        "/api/enrolment-tokens/", {"kind": "node", "target_name": "edge"}, format="json"
    )
    auditor = auditor_api.post(
        "/api/enrolment-tokens/", {"kind": "node", "target_name": "edge"}, format="json"
    )
    assert (unknown.status_code, unknown.json()["code"]) == (409, "unknown_target")
    assert (both.status_code, both.json()["code"]) == (409, "ambiguous_name")
    assert auditor.status_code == 403


def test_a_gateway_gets_an_ingress_certificate_for_its_name_and_tunnel_addresses(
    admin_api, wsgi, tmp_path: Path
) -> None:
    gateway = make_gateway("gw-9").gateway
    token = _token(admin_api, "gateway", "gw-9")

    enrol(URL, token, "gateway", "gw-9", tmp_path / "tls", transport=wsgi)

    ingress = load_certificate((tmp_path / "tls" / "ingress.crt").read_bytes())
    san = ingress.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw-9"]
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"10.77.0.1", "fd77::1"}
    assert (tmp_path / "tls" / "ingress-ca.crt").read_text() == ingress_ca().certificate_pem
    assert ingress_ca().fingerprint != management_ca().fingerprint  # a CA of its own
    config = build_gateway_config(gateway, 1)
    assert config.tls is not None and config.tls.ingress_ca == ingress_ca().certificate_pem
    assert config.tls.ingress_certificate is not None and not config.plain_http


def test_a_certificate_due_for_renewal_is_reissued_for_the_same_key(
    admin_api, wsgi, tmp_path: Path
) -> None:
    NodeFactory(name="node-7")
    enrol(URL, _token(admin_api, "node", "node-7"), "node", "node-7", tmp_path, transport=wsgi)
    first = IssuedCertificate.objects.get()
    assert tls_material("node", "node-7").certificate == first.certificate  # not due yet

    first.not_after = timezone.now() + dt.timedelta(hours=1)  # inside renew_before
    first.save()
    material = tls_material("node", "node-7")

    renewed = IssuedCertificate.objects.latest_of("node", "node-7", CertificatePurpose.MANAGEMENT)
    assert renewed is not None and renewed.pk != first.pk
    assert material is not None and material.certificate == renewed.certificate
    assert renewed.public_key == first.public_key
    cert = load_certificate(renewed.certificate)
    assert same_public_key(cert, load_tls_key(tmp_path / "management.key"))


def test_a_peers_download_comes_with_the_ingress_ca_and_its_pin(admin_api, db) -> None:
    ClientFactory(slug="acme")
    make_gateway("gw-1")
    created = admin_api.post("/api/peers/", {"client": "acme", "gateway": "gw-1"}, format="json")

    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["ingress_ca"] == ingress_ca().certificate_pem
    assert f"ingress CA SHA-256 {ingress_ca().fingerprint}" in body["config"]
    assert "API https://10.77.0.1/v1" in body["config"]
    ca = admin_api.get(f"/api/peers/{body['id']}/ca/")
    assert ca.status_code == 200 and ca.content.decode() == ingress_ca().certificate_pem


def test_enrolling_voids_the_targets_other_tokens(admin_api, wsgi, tmp_path: Path) -> None:
    """A token made earlier (and stolen meanwhile) can't re-key the target later."""
    NodeFactory(name="node-7")
    earlier = _token(admin_api, "node", "node-7")
    used = _token(admin_api, "node", "node-7")
    enrol(URL, used, "node", "node-7", tmp_path / "tls", transport=wsgi)
    with pytest.raises(EnrolError, match="expired"):
        enrol(URL, earlier, "node", "node-7", tmp_path / "thief", transport=wsgi)
    assert IssuedCertificate.objects.count() == 1
