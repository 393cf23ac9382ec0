"""The admin console for peers: provisioning shows the config and QR code once,
downloads need change_peer, the disable action keeps its reason, CSRF stays on."""

from __future__ import annotations

import re

import pytest
from django.test import Client as BrowserClient

from control_plane.network.models import Peer
from control_plane.network.services import client_config, provision_peer
from shared.wireguard import generate_key_pair, public_key
from tests.control_plane.factories import ClientFactory
from tests.control_plane.network.test_peers import decode_qr_svg

pytestmark = pytest.mark.django_db

PRIVATE_RE = re.compile(r"^PrivateKey = (\S+)$", re.MULTILINE)


def _signed_in(user, **kwargs) -> BrowserClient:
    browser = BrowserClient(**kwargs)
    browser.force_login(user)
    return browser


def test_provisioning_in_the_console_shows_the_private_key_once(admin_user, gateway):
    acme = ClientFactory(slug="acme")
    browser = _signed_in(admin_user)
    assert browser.get("/admin/network/peer/add/").status_code == 200

    page = browser.post(
        "/admin/network/peer/add/",
        {"client": acme.pk, "gateway": gateway.gateway.pk, "name": "laptop"},
    )

    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    text = page.content.decode()
    (private,) = set(PRIVATE_RE.findall(text))
    peer = Peer.objects.get()
    assert public_key(private) == peer.public_key and peer.key_generated
    assert "<svg" in text and "10.77.0.2" in text
    qr_block = text[text.index('class="peer-qr"') :]
    svg = qr_block[qr_block.index("<svg") : qr_block.index("</svg>") + len("</svg>")]
    decoded = decode_qr_svg(svg.encode())
    assert f"PrivateKey = {private}" in decoded
    # Not on any later page, not in any download.
    for url in (
        "/admin/network/peer/",
        f"/admin/network/peer/{peer.pk}/change/",
        f"/admin/network/peer/{peer.pk}/config/",
        "/admin/changes/objectchange/",
    ):
        later = browser.get(url)
        assert later.status_code == 200, url
        assert private not in later.content.decode()
        assert peer.preshared_key not in later.content.decode() or url.endswith("/config/")
    download = browser.get(f"/admin/network/peer/{peer.pk}/config/")
    assert download.content.decode() == client_config(peer)
    qr = browser.get(f"/admin/network/peer/{peer.pk}/qr/")
    assert qr["Content-Type"] == "image/svg+xml"
    assert decode_qr_svg(qr.content) == client_config(peer)


def test_provisioning_with_the_clients_own_key_and_an_exhausted_pool(admin_user):
    from tests.control_plane.network.conftest import make_gateway

    tiny = make_gateway("gw-tiny", ipv4="10.99.0.0/30", ipv6="").gateway
    acme = ClientFactory(slug="acme")
    browser = _signed_in(admin_user)
    _, own = generate_key_pair()

    first = browser.post(
        "/admin/network/peer/add/",
        {"client": acme.pk, "gateway": tiny.pk, "public_key": own},
    )
    second = browser.post("/admin/network/peer/add/", {"client": acme.pk, "gateway": tiny.pk})

    assert first.status_code == 200 and not PRIVATE_RE.findall(first.content.decode())
    assert "keeps its own private key" in first.content.decode()
    assert second.status_code == 200
    assert "address pool 10.99.0.0/30 is exhausted" in second.content.decode()
    assert Peer.objects.count() == 1


def test_auditors_read_peers_but_get_no_config(auditor_user, gateway):
    peer = provision_peer(ClientFactory(slug="acme"), gateway.gateway).peer
    browser = _signed_in(auditor_user)

    assert browser.get("/admin/network/peer/").status_code == 200
    assert browser.get(f"/admin/network/peer/{peer.pk}/config/").status_code == 403
    assert browser.get(f"/admin/network/peer/{peer.pk}/qr/").status_code == 403
    assert browser.get("/admin/network/peer/add/").status_code == 403


def test_the_disable_action_records_who_and_why(admin_user, gateway):
    peer = provision_peer(ClientFactory(slug="acme"), gateway.gateway).peer
    browser = _signed_in(admin_user)

    page = browser.post(
        "/admin/network/peer/",
        {"action": "disable_selected", "_selected_action": [peer.pk]},
        follow=True,
    )

    assert page.status_code == 200
    peer.refresh_from_db()
    assert not peer.enabled
    assert peer.disabled_reason == "disabled in the admin console by alice"


def test_the_provisioning_form_needs_a_csrf_token(admin_user, gateway):
    acme = ClientFactory(slug="acme")
    browser = _signed_in(admin_user, enforce_csrf_checks=True)
    page = browser.post(
        "/admin/network/peer/add/", {"client": acme.pk, "gateway": gateway.gateway.pk}
    )
    assert page.status_code == 403
    assert not Peer.objects.exists()


def test_the_gateway_rollout_pages_show_progress_and_roll_out(
    admin_user, auditor_user, fake_agent_factory, on_commit
):
    from control_plane.core.rollout import roll_out
    from control_plane.network.rollout import GATEWAYS

    agent, keys = fake_agent_factory()
    with on_commit():
        roll_out(GATEWAYS, [keys.gateway])
    browser = _signed_in(admin_user)

    gateways = browser.get("/admin/network/gateway/").content.decode()
    releases = browser.get("/admin/network/gatewayrelease/").content.decode()
    with on_commit():
        done = browser.post(
            "/admin/network/gateway/",
            {"action": "roll_out_now", "_selected_action": [keys.gateway.pk]},
            follow=True,
        )
    denied = _signed_in(auditor_user).post(
        "/admin/network/gateway/",
        {"action": "roll_out_now", "_selected_action": [keys.gateway.pk]},
    )

    assert "In sync" in gateways and "gw-1" in gateways
    assert "Applied" in releases
    assert "Released gw-1 v2." in done.content.decode()
    assert agent.held is not None and agent.held.version == 2
    assert denied.status_code < 500 and keys.gateway.releases.count() == 2  # none for auditors
