"""Helpers for the gateway agent's tests: keys, signed configs, a WireGuard stand-in."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from data_plane.gateway.settings import GatewaySettings
from data_plane.gateway.wireguard import InterfaceStatus, PeerStatus
from shared.backbone import BackboneInterface
from shared.gateway import GatewayConfig, Upstream, WireGuardInterface, make_peer
from shared.gateway import sign_gateway_config as sign
from shared.keyring import Keyring, dev_keyring
from shared.keys import load_private_key
from shared.signed_request import authorization
from shared.trust import CONFIG, MANAGEMENT, TARGET_PURPOSES, TRUST_FILE
from shared.wireguard import generate_key_pair, generate_preshared_key, public_key
from tests.conftest import free_port, release_fields

GATEWAY = "gw-test"

NEEDS_NGINX = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.environ.get("CI"), reason="nginx not installed"
)


@dataclass
class PeerKeys:
    id: str
    public_key: str
    private_key: str
    psk: str
    address: str


class FakeWireGuard:
    """Records what the agent would give ``wg syncconf`` (for the agent's own logic)."""

    def __init__(self) -> None:
        self.synced: list[tuple[GatewayConfig, str, dict[str, str]]] = []
        self.backbones: list[tuple[BackboneInterface, str]] = []
        self.downs: list[str] = []
        self.addresses: list[tuple[str, tuple[str, ...]]] = []
        self.fail_next = False

    @staticmethod
    def ifindex(name: str) -> int:
        return 7

    async def sync(
        self, config: GatewayConfig, private_key: str, preshared_keys: Mapping[str, str]
    ) -> None:
        from data_plane.gateway.commands import CommandFailed

        if self.fail_next:
            self.fail_next = False
            raise CommandFailed("wg", "exit status 1 (its output is withheld: it was fed keys)")
        self.synced.append((config, private_key, dict(preshared_keys)))

    async def sync_backbone(self, backbone: BackboneInterface, private_key: str) -> None:
        self.backbones.append((backbone, private_key))

    async def add_addresses(self, iface: str, wanted: tuple[str, ...]) -> None:
        self.addresses.append((iface, wanted))

    async def down(self, iface: str) -> None:
        self.downs.append(iface)

    async def status(self, iface: str) -> InterfaceStatus:
        config, private_key, _ = self.synced[-1]
        return InterfaceStatus(
            name=iface,
            ifindex=7,
            public_key=public_key(private_key),
            listen_port=config.interface.listen_port,
            peers=tuple(
                PeerStatus(
                    public_key=p.public_key,
                    latest_handshake=1_700_000_000 + i,
                    rx_bytes=100,
                    tx_bytes=200,
                    allowed_ips=p.addresses,
                )
                for i, p in enumerate(config.enabled_peers())
            ),
        )


@dataclass
class Kit:
    """One gateway's keys and state directory, and a way to make signed configs."""

    state: Path
    cp_key: Ed25519PrivateKey
    wg_private: str
    wg_public: str
    http_port: int
    peers: list[PeerKeys] = field(default_factory=list)
    version: int = 0

    def settings(self, **overrides: Any) -> GatewaySettings:
        nginx = {
            "listen_host": "127.0.0.1",
            "user": None,
            "pid_file": self.state / "nginx" / "nginx.pid",
            **overrides.pop("nginx", {}),
        }
        return GatewaySettings(
            name=GATEWAY,
            state_dir=self.state,
            trust_keys=self.state / "keys" / TRUST_FILE,
            nginx=nginx,
            firewall=overrides.pop("firewall", {"script": None}),
            http_port=self.http_port,
            **overrides,
        )

    def add_peer(self, n: int) -> PeerKeys:
        private, public = generate_key_pair()
        peer = PeerKeys(f"peer-{n}", public, private, generate_preshared_key(), f"10.77.0.{n}")
        self.peers.append(peer)
        return peer

    def config(
        self,
        *,
        disabled: tuple[str, ...] = (),
        upstreams: tuple[Upstream, ...] | None = None,
        gateway: str = GATEWAY,
        sealed_to: str | None = None,
        version: int | None = None,
        expires_at: datetime | None = None,
        backbone: BackboneInterface | None = None,
    ) -> GatewayConfig:
        self.version = version if version is not None else self.version + 1
        to = sealed_to or self.wg_public
        fields = release_fields(self.keyring.key_set(TARGET_PURPOSES))
        if expires_at is not None:
            fields["expires_at"] = expires_at
            fields["issued_at"] = min(fields["issued_at"], expires_at - timedelta(hours=1))
        return GatewayConfig.create(
            version=self.version,
            **fields,
            gateway=gateway,
            interface=WireGuardInterface(
                name="wgt0", public_key=to, listen_port=51820, addresses=("10.77.0.1/24",)
            ),
            http_port=self.http_port,
            plain_http=True,  # these tests speak plain HTTP; TLS has its own in test_nginx
            peers=[
                make_peer(
                    id=p.id,
                    client="acme",
                    public_key=p.public_key,
                    addresses=(p.address,),
                    enabled=p.id not in disabled,
                    preshared_key=p.psk,
                    gateway=gateway,
                    gateway_public_key=to,
                )
                for p in self.peers
            ],
            upstreams=upstreams
            if upstreams is not None
            else (Upstream(node="node-1", host="127.0.0.1", port=9),),
            backbone=backbone,
        )

    def sign(self, config: GatewayConfig, key: Ed25519PrivateKey | None = None) -> str:
        return sign(config, key or self.cp_key)

    @property
    def keyring(self) -> Keyring:
        return dev_keyring(self.state / "keys")

    @property
    def gateway_key(self) -> Ed25519PrivateKey:
        """The key the agent signs its health with (made at its first start here)."""
        return load_private_key(self.state / "keys" / "gateway.key")

    def signed(
        self, method: str, path: str, body: bytes = b"", audience: str = GATEWAY, key: Any = None
    ) -> tuple[dict[str, str], str]:
        """Headers of a management request signed for this gateway, and its one-time id."""
        header, jti = authorization(
            key or self.keyring.signer(MANAGEMENT), method, path, body, audience=audience
        )
        return {"Authorization": header}, jti


def stop_nginx(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    state = tmp_path / "gw"
    cp_key = dev_keyring(state / "keys").signer(CONFIG)
    wg_private, wg_public = generate_key_pair()
    key_file = state / "wireguard.key"
    key_file.write_text(wg_private + "\n")
    key_file.chmod(0o600)
    k = Kit(state, cp_key, wg_private, wg_public, http_port=free_port())
    yield k
    stop_nginx(state / "nginx" / "nginx.pid")
