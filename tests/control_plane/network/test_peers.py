"""Peers through the API: provisioning (own key preferred, generated key shown once),
config and QR downloads, permissions, enable/disable/expiry with the reason in the trail."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.contenttypes.models import ContentType
from django.core import serializers as django_serializers
from django.utils import timezone

from control_plane.changes.models import ObjectChange
from control_plane.network.models import Peer
from control_plane.network.services import client_config, provision_peer
from control_plane.network.tasks import expire_peers
from shared.wireguard import generate_key_pair, public_key
from tests.control_plane.factories import ClientFactory
from tests.control_plane.network.conftest import GatewayKeys

pytestmark = pytest.mark.django_db


def decode_qr_svg(svg: bytes) -> str:
    """Rasterise the served SVG (one rect per dark module) and read it with zxing-cpp."""
    import zxingcpp

    root = ET.fromstring(svg)  # noqa: S314 (our own server's SVG, in a test)
    width = int(float(re.sub(r"[a-z]+$", "", root.attrib["width"])))
    rects = [el for el in root.iter() if el.tag.endswith("rect")]
    assert rects, "no modules in the SVG"
    size = float(re.sub(r"[a-z]+$", "", rects[0].attrib["width"]))
    modules = round(width / size)
    image = np.full((modules, modules), 255, dtype=np.uint8)
    for rect in rects:
        x = round(float(re.sub(r"[a-z]+$", "", rect.attrib["x"])) / size)
        y = round(float(re.sub(r"[a-z]+$", "", rect.attrib["y"])) / size)
        image[y, x] = 0
    image = np.kron(image, np.ones((6, 6), dtype=np.uint8))
    (found,) = zxingcpp.read_barcodes(image)
    return str(found.text)


def test_provisioning_with_the_clients_own_key(admin_api, gateway: GatewayKeys):
    ClientFactory(slug="acme")
    own_private, own_public = generate_key_pair()

    response = admin_api.post(
        "/api/peers/",
        {"client": "acme", "gateway": "gw-1", "name": "laptop", "public_key": own_public},
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert response["Cache-Control"] == "no-store"
    assert (body["address_v4"], body["address_v6"]) == ("10.77.0.2", "fd77::2")
    assert body["public_key"] == own_public and body["key_generated"] is False
    peer = Peer.objects.get(pk=body["id"])
    config = body["config"]
    assert config == client_config(peer)
    assert "\nPrivateKey" not in config
    assert f"PublicKey = {gateway.gateway.public_key}" in config
    assert f"PresharedKey = {peer.preshared_key}" in config
    assert "Address = 10.77.0.2/32, fd77::2/128" in config
    assert "AllowedIPs = 10.77.0.1/32, fd77::1/128" in config
    assert "Endpoint = gw-1.example.net:51820" in config
    assert "preshared_key" not in body
    assert own_private not in str(body)


def test_a_generated_private_key_is_shown_once_and_never_stored(admin_api, gateway):
    ClientFactory(slug="acme")

    response = admin_api.post("/api/peers/", {"client": "acme", "gateway": "gw-1"}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    (private,) = re.findall(r"^PrivateKey = (\S+)$", body["config"], re.MULTILINE)
    assert public_key(private) == body["public_key"] and body["key_generated"] is True
    # Nowhere in the database, the change trail included...
    dump = django_serializers.serialize("json", [*Peer.objects.all(), *ObjectChange.objects.all()])
    assert private not in dump
    # ...and not in any later download.
    again = admin_api.get(f"/api/peers/{body['id']}/config/")
    assert again.status_code == 200 and private not in again.content.decode()
    assert private not in str(admin_api.get(f"/api/peers/{body['id']}/").json())


def test_config_download_and_qr_code(admin_api, gateway):
    client = ClientFactory(slug="acme")
    peer = provision_peer(client, gateway.gateway, name="phone").peer

    config = admin_api.get(f"/api/peers/{peer.pk}/config/")
    qr = admin_api.get(f"/api/peers/{peer.pk}/qr/")

    assert config.status_code == 200
    assert config["Content-Type"].startswith("text/plain")
    assert config["Content-Disposition"] == f'attachment; filename="sanctum{peer.pk}.conf"'
    assert config["Cache-Control"] == "no-store"
    assert config.content.decode() == client_config(peer)
    assert qr.status_code == 200 and qr["Content-Type"] == "image/svg+xml"
    # The QR code holds exactly the config file.
    assert decode_qr_svg(qr.content) == client_config(peer)


def test_config_downloads_hold_the_psk_so_auditors_and_anonymous_get_none(
    auditor_api, anon_api, gateway
):
    peer = provision_peer(ClientFactory(slug="acme"), gateway.gateway).peer

    listed = auditor_api.get("/api/peers/")
    assert listed.status_code == 200 and listed.json()["results"][0]["id"] == peer.pk
    assert peer.preshared_key not in listed.content.decode()
    for url in (f"/api/peers/{peer.pk}/config/", f"/api/peers/{peer.pk}/qr/"):
        assert auditor_api.get(url).status_code == 403
        assert anon_api.get(url).status_code == 401
    created = auditor_api.post("/api/peers/", {"client": "acme", "gateway": "gw-1"}, format="json")
    assert created.status_code == 403


def test_bad_provisioning_requests_get_field_errors_or_409(admin_api, gateway):
    ClientFactory(slug="acme")
    _, key = generate_key_pair()
    bad_key = admin_api.post(
        "/api/peers/",
        {"client": "acme", "gateway": "gw-1", "public_key": "not-a-key"},
        format="json",
    )
    unknown = admin_api.post("/api/peers/", {"client": "nobody", "gateway": "nope"}, format="json")
    past = admin_api.post(
        "/api/peers/",
        {"client": "acme", "gateway": "gw-1", "expires_at": "2001-01-01T00:00:00Z"},
        format="json",
    )
    gateway_key = admin_api.post(
        "/api/peers/",
        {"client": "acme", "gateway": "gw-1", "public_key": gateway.gateway.public_key},
        format="json",
    )
    first = admin_api.post(
        "/api/peers/", {"client": "acme", "gateway": "gw-1", "public_key": key}, format="json"
    )
    twice = admin_api.post(
        "/api/peers/", {"client": "acme", "gateway": "gw-1", "public_key": key}, format="json"
    )

    assert bad_key.status_code == 400 and set(bad_key.json()) == {"public_key"}
    assert "not-a-key" not in str(bad_key.json())
    assert unknown.status_code == 400 and set(unknown.json()) == {"client", "gateway"}
    assert past.status_code == 400 and set(past.json()) == {"expires_at"}
    assert gateway_key.status_code == 400 and set(gateway_key.json()) == {"public_key"}
    assert first.status_code == 201
    assert twice.status_code == 409 and twice.json()["code"] == "duplicate_public_key"


def _trail(peer: Peer) -> list[ObjectChange]:
    return list(
        ObjectChange.objects.filter(
            changed_object_type=ContentType.objects.get_for_model(Peer),
            changed_object_id=str(peer.pk),
        ).order_by("pk")
    )


def test_disable_and_enable_keep_the_reason_in_the_trail(admin_api, admin_user, gateway):
    peer = provision_peer(ClientFactory(slug="acme"), gateway.gateway).peer

    disabled = admin_api.post(
        f"/api/peers/{peer.pk}/disable/", {"reason": "laptop stolen"}, format="json"
    )
    no_reason = admin_api.post(f"/api/peers/{peer.pk}/disable/", {}, format="json")
    enabled = admin_api.post(f"/api/peers/{peer.pk}/enable/", {}, format="json")

    assert disabled.status_code == 200
    assert disabled.json()["status"] == "disabled"
    assert disabled.json()["disabled_reason"] == "laptop stolen"
    assert no_reason.status_code == 400 and set(no_reason.json()) == {"reason"}
    assert enabled.status_code == 200 and enabled.json()["status"] == "active"
    create, disable, enable = _trail(peer)
    assert disable.user == admin_user
    assert disable.diff()["enabled"] == (True, False)
    assert disable.diff()["disabled_reason"] == ("", "laptop stolen")
    assert enable.diff()["disabled_reason"] == ("laptop stolen", "")
    for change in (create, disable, enable):
        assert peer.preshared_key not in str(change.prechange_data)
        assert peer.preshared_key not in str(change.postchange_data)


def test_the_expiry_task_disables_expired_peers_with_the_reason(
    gateway, fake_agent_factory, on_commit
):
    agent, keys = fake_agent_factory("gw-exp")
    client = ClientFactory(slug="acme")
    soon = timezone.now() + timedelta(seconds=30)
    expiring = provision_peer(client, keys.gateway, expires_at=soon).peer
    lasting = provision_peer(client, keys.gateway).peer
    elsewhere = provision_peer(client, gateway.gateway, expires_at=soon).peer
    Peer.objects.filter(pk__in=[expiring.pk, elsewhere.pk]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    with on_commit():
        assert expire_peers() == 2

    expiring.refresh_from_db()
    lasting.refresh_from_db()
    assert not expiring.enabled and expiring.disabled_reason.startswith("expired at ")
    assert lasting.enabled
    last = _trail(expiring)[-1]
    assert last.source == "task" and last.diff()["disabled_reason"][1].startswith("expired")
    # Its (enabled) gateway was rolled out: the expired peer's tunnel is out of the config.
    assert agent.held is not None
    assert [p.id for p in agent.held.enabled_peers()] == [lasting.config_id]
    assert expire_peers() == 0


def test_renaming_and_deleting(admin_api, gateway):
    peer = provision_peer(ClientFactory(slug="acme"), gateway.gateway).peer
    renamed = admin_api.patch(f"/api/peers/{peer.pk}/", {"name": "desk"}, format="json")
    readonly = admin_api.patch(
        f"/api/peers/{peer.pk}/", {"address_v4": "10.77.0.99"}, format="json"
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "desk"
    assert readonly.status_code == 200 and readonly.json()["address_v4"] == "10.77.0.2"
    assert admin_api.delete(f"/api/peers/{peer.pk}/").status_code == 204
    assert not Peer.objects.exists()
    assert [c.action for c in _trail(peer)] == ["create", "update", "delete"]
