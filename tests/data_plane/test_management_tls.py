"""Mutual TLS on a real node's management listener (``python -m data_plane serve``).

The node is enrolled the way ``sanctum enrol`` leaves it (its key, its certificate from
the management CA, the CA), and the handshakes are real: only the control plane's
client certificate gets through; no certificate, another CA's, a node's own server
certificate or a client certificate naming someone else get nothing. A renewed
certificate arrives in a signed release and new handshakes present it while a
connection opened before keeps working.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from shared.config import ConfigBundle, sign_bundle
from shared.keyring import Keyring, dev_keyring
from shared.keys import b64url_decode, write_key_pair
from shared.management import CONFIG_PATH, HEALTH_PATH, JOSE
from shared.pki import (
    CLIENT,
    CONTROL_PLANE_NAME,
    SERVER,
    CertificateAuthority,
    TlsMaterial,
    certificate_pem,
    client_context,
    ensure_tls_key,
)
from shared.signed_request import SignedRequestAuth
from shared.trust import CONFIG, MANAGEMENT, TARGET_PURPOSES, TRUST_FILE
from tests.conftest import REPO, free_port, release_fields
from tests.control_plane.processes import Process

NODE = "node-1"
DAY = dt.timedelta(days=1)


@dataclass
class Identity:
    cert: Path
    key: Path


@dataclass
class Enrolled:
    port: int
    ca: CertificateAuthority
    ring: Keyring
    tls_dir: Path
    cp: Identity

    def identity(
        self, directory: Path, ca: CertificateAuthority, name: str, usage: str
    ) -> Identity:
        key = ensure_tls_key(directory / "client.key")
        cert = ca.issue(key.public_key(), name, usage=usage, lifetime=DAY)
        path = directory / "client.crt"
        path.write_text(certificate_pem(cert))
        return Identity(path, directory / "client.key")

    def client(self, identity: Identity | None = None) -> httpx.Client:
        """The control plane's way in: its certificate, the CA, the node's name (SNI)."""
        who = identity or self.cp
        context = client_context(self.ca.certificate_pem, who.cert, who.key)
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=context, timeout=20)

    def get(self, client: httpx.Client, path: str) -> httpx.Response:
        auth = SignedRequestAuth(self.ring.signer(MANAGEMENT), NODE)
        return client.get(path, auth=auth, extensions={"sni_hostname": NODE})


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Enrolled]:
    ring = dev_keyring(tmp_path / "cp" / "keys")
    trust = tmp_path / "cp" / TRUST_FILE
    ring.publish(trust)
    node_key = write_key_pair(tmp_path / "node-keys", "node")
    ca = CertificateAuthority.open(tmp_path / "ca", "management", create=True)
    tls_dir = tmp_path / "dp" / "tls"
    key = ensure_tls_key(tls_dir / "management.key")
    (tls_dir / "management.crt").write_text(
        certificate_pem(ca.issue(key.public_key(), NODE, usage=SERVER, lifetime=DAY))
    )
    (tls_dir / "management-ca.crt").write_text(ca.certificate_pem)
    cp_dir = tmp_path / "cp" / "tls"
    enrolled = Enrolled(0, ca, ring, tls_dir, Identity(Path(), Path()))
    enrolled.cp = enrolled.identity(cp_dir, ca, CONTROL_PLANE_NAME, CLIENT)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANCTUM_", "DJANGO_"))}
    env.update(
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        SANCTUM_DP_DATA_DIR=str(tmp_path / "dp"),
        SANCTUM_DP_NODE_ID=NODE,
        SANCTUM_DP_TRUST_KEYS=str(trust),
        SANCTUM_DP_NODE_PRIVATE_KEY=str(node_key),
        SANCTUM_DP_LISTEN__API_PORT=str(free_port()),
        SANCTUM_DP_LISTEN__MANAGEMENT_PORT=str(port),
        SANCTUM_DP_RETRIEVAL__ENABLED="false",
    )
    process = Process("node", [sys.executable, "-m", "data_plane", "serve"], env)
    try:
        ready = process.wait_for("SANCTUM_DP_READY", timeout=120)
        assert f"management=https://127.0.0.1:{port}" in ready
        enrolled.port = port
        yield enrolled
    finally:
        process.stop()


def _exchange(node: Enrolled, identity: Identity | None) -> bytes:
    """One raw request over TLS presenting ``identity``; what came back."""
    context = client_context(
        node.ca.certificate_pem, *((identity.cert, identity.key) if identity else ())
    )
    with (
        socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw,
        # A torn-down handshake must raise, not read as an empty answer.
        context.wrap_socket(raw, server_hostname=NODE, suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(b"GET /internal/health HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        return data


def _socket(response: httpx.Response) -> ssl.SSLSocket:
    sock: ssl.SSLSocket = response.extensions["network_stream"].get_extra_info("socket")
    return sock


def _serial(response: httpx.Response) -> int:
    der = _socket(response).getpeercert(True)
    return x509.load_der_x509_certificate(der).serial_number


def test_only_the_control_planes_client_certificate_gets_through(
    node: Enrolled, tmp_path: Path
) -> None:
    with node.client() as client:
        health = node.get(client, HEALTH_PATH)
    assert health.status_code == 200

    # No certificate; the CA's client certificate for another name; another CA's client
    # certificate; the node's own (server) certificate used as a client.
    other_ca = CertificateAuthority.open(tmp_path / "other-ca", "other", create=True)
    stranger = node.identity(tmp_path / "stranger", other_ca, CONTROL_PLANE_NAME, CLIENT)
    impostor = node.identity(tmp_path / "impostor", node.ca, "intruder", CLIENT)
    as_client = Identity(node.tls_dir / "management.crt", node.tls_dir / "management.key")
    assert _exchange(node, node.cp).startswith(b"HTTP/1.1 401")  # TLS fine; request unsigned
    for identity in (None, stranger, as_client):
        with pytest.raises(ssl.SSLError):  # the listener drops it mid-handshake
            _exchange(node, identity)
    # The CA's client certificate naming someone else: TLS completes, then the listener
    # aborts the connection without parsing a byte of the request (no answer at all).
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _exchange(node, impostor)

    # And the control plane refuses a server that is not the node it meant.
    with node.client() as client, pytest.raises(httpx.ConnectError, match="match"):
        client.get(HEALTH_PATH, extensions={"sni_hostname": "node-2"})


def test_a_renewed_certificate_comes_in_a_release_without_breaking_open_connections(
    node: Enrolled,
) -> None:
    key = ensure_tls_key(node.tls_dir / "management.key")  # the key enrolment recorded
    renewed = node.ca.issue(key.public_key(), NODE, usage=SERVER, lifetime=DAY)
    bundle = ConfigBundle(
        version=1,
        **release_fields(node.ring.key_set(TARGET_PURPOSES)),
        node=NODE,
        tls=TlsMaterial(ca=node.ca.certificate_pem, certificate=certificate_pem(renewed)),
    )
    token = sign_bundle(bundle, node.ring.signer(CONFIG)).encode()

    with node.client() as kept:
        before = node.get(kept, HEALTH_PATH)
        old_serial = _serial(before)
        with node.client() as pusher:
            pushed = pusher.put(
                CONFIG_PATH,
                content=token,
                headers={"Content-Type": JOSE},
                auth=SignedRequestAuth(node.ring.signer(MANAGEMENT), NODE),
                extensions={"sni_hostname": NODE},
            )
        assert pushed.status_code == 200, pushed.text
        # The connection opened before the renewal carries on, with the old certificate.
        again = node.get(kept, HEALTH_PATH)
        assert again.status_code == 200 and _serial(again) == old_serial
        assert _socket(again) is _socket(before)
    with node.client() as fresh:
        after = node.get(fresh, HEALTH_PATH)
        assert _serial(after) == renewed.serial_number != old_serial
    health = json.loads(b64url_decode(after.text.split(".")[1]))  # the node-signed report
    assert health["management_certificate"]["serial"] == format(renewed.serial_number, "x")
