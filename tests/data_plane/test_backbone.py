"""A node's end of the backbone: what it accepts from a config and what production
requires. WireGuard is a recording stand-in here; the real interface, the real firewall
and nginx over the tunnel are proven in tests/e2e/test_wireguard.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from data_plane.backbone import NodeBackbone
from data_plane.config_store import ConfigRejected
from data_plane.settings import Settings
from shared.backbone import BackboneInterface, BackbonePeer
from shared.config import ConfigBundle
from shared.wireguard import generate_key_pair
from tests.conftest import release_fields, throwaway_trust


class RecordingWireGuard:
    def __init__(self) -> None:
        self.synced: list[BackboneInterface] = []

    async def sync_backbone(self, backbone: BackboneInterface, private_key: str) -> None:
        self.synced.append(backbone)


def bundle(public: str, address: str = "10.90.0.2/24", peers: int = 1) -> ConfigBundle:
    gateways = tuple(
        BackbonePeer(name=f"gw-{n}", public_key=generate_key_pair()[1], address=f"10.90.0.{10 + n}")
        for n in range(peers)
    )
    return ConfigBundle(
        **release_fields(throwaway_trust()),
        version=1,
        node="node-1",
        backbone=BackboneInterface(public_key=public, address=address, peers=gateways),
    )


def node(
    tmp_path: Path, key: str | None, api_host: str = "10.90.0.2"
) -> tuple[NodeBackbone, RecordingWireGuard]:
    settings = Settings(data_dir=tmp_path, listen={"api_host": api_host})
    if key is not None:
        path = tmp_path / "backbone.key"
        path.write_text(key + "\n")
        path.chmod(0o600)
        settings = Settings(
            data_dir=tmp_path, listen={"api_host": api_host}, backbone={"private_key": path}
        )
    wg = RecordingWireGuard()
    return NodeBackbone(settings, wireguard=wg), wg  # type: ignore[arg-type]


def test_the_bundle_must_name_this_nodes_key_and_address(tmp_path: Path) -> None:
    private, public = generate_key_pair()
    backbone, wg = node(tmp_path, private)
    for wrong, code in (
        (bundle(generate_key_pair()[1]), "wrong_backbone_key"),
        (bundle(public, address="10.90.0.9/24"), "backbone_address_mismatch"),
    ):
        with pytest.raises(ConfigRejected) as refused:
            backbone.check(wrong)
        assert (refused.value.status, refused.value.code) == (409, code)
    good = bundle(public, peers=2)
    asyncio.run(backbone.apply(good, backbone.check(good)))
    assert [len(b.peers) for b in wg.synced] == [2]
    # Taken off the backbone: its peers go, the interface stays as it was set up.
    off = ConfigBundle(**release_fields(throwaway_trust()), version=2, node="node-1")
    asyncio.run(backbone.apply(off, backbone.check(off)))
    assert wg.synced[-1].peers == () and wg.synced[-1].address == "10.90.0.2/24"


def test_a_node_without_a_backbone_key_refuses_a_bundle_that_puts_it_on_one(tmp_path: Path) -> None:
    backbone, wg = node(tmp_path, None, api_host="127.0.0.1")
    with pytest.raises(ConfigRejected) as refused:
        backbone.check(bundle(generate_key_pair()[1]))
    assert refused.value.code == "backbone_not_configured"
    plain = ConfigBundle(**release_fields(throwaway_trust()), version=1, node="node-1")
    asyncio.run(backbone.apply(plain, backbone.check(plain)))
    assert wg.synced == []


def test_production_serves_the_client_api_off_loopback_only_on_the_backbone(tmp_path: Path) -> None:
    keys = {"trust_keys": tmp_path / "t.json", "node_private_key": tmp_path / "n.pem"}
    with pytest.raises(ValidationError, match="SANCTUM_DP_BACKBONE__PRIVATE_KEY"):
        Settings(environment="production", listen={"api_host": "10.0.0.5"}, **keys)
    Settings(environment="production", listen={"api_host": "127.0.0.1"}, **keys)
    Settings(
        environment="production",
        listen={"api_host": "10.90.0.2"},
        backbone={"private_key": tmp_path / "bb.key"},
        **keys,
    )
