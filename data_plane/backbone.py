"""The node's end of the backbone (``shared.backbone``): the gateways that may reach its
client API, applied to its WireGuard interface from the signed config.

The interface is made at boot with the node's key and backbone address
(``infra/scripts/wireguard-interface.sh`` run with the backbone's settings), so the client
API can bind that address before the first config arrives; each config then sets the
peers (``wg syncconf``: only what differs changes). A config is refused when it names
another key or another address than this node's, so a bundle can never move the client
API off the address it listens on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from data_plane.config_store import ConfigRejected
from data_plane.gateway.commands import CommandFailed
from data_plane.gateway.wireguard import InterfaceMissing, WireGuard
from shared.backbone import BackboneInterface
from shared.listeners import is_loopback
from shared.wireguard import WireGuardKeyError, public_key, read_private_key

if TYPE_CHECKING:
    from data_plane.settings import Settings
    from shared.config import ConfigBundle

logger = logging.getLogger(__name__)


class NodeBackbone:
    """Checks a bundle's backbone against this node, and applies it."""

    def __init__(self, settings: Settings, wireguard: WireGuard | None = None) -> None:
        self._key_path = settings.backbone.private_key
        self._api_host = settings.listen.api_host
        self._wireguard = wireguard or WireGuard(settings.backbone)
        self._applied: BackboneInterface | None = None

    @property
    def enabled(self) -> bool:
        return self._key_path is not None

    def _private_key(self) -> str:
        assert self._key_path is not None
        try:
            return read_private_key(self._key_path)
        except WireGuardKeyError as exc:
            raise ConfigRejected(503, "backbone_key_unavailable", str(exc)) from None

    def check(self, bundle: ConfigBundle) -> str | None:
        """The private key to apply ``bundle.backbone`` with; raises ``ConfigRejected``."""
        backbone = bundle.backbone
        if backbone is None:
            return self._private_key() if self._applied is not None else None
        if not self.enabled:
            raise ConfigRejected(
                409,
                "backbone_not_configured",
                "the config puts this node on the backbone, but it has no backbone key "
                "(SANCTUM_DP_BACKBONE__PRIVATE_KEY)",
            )
        private = self._private_key()
        if public_key(private) != backbone.public_key:
            raise ConfigRejected(
                409, "wrong_backbone_key", "the config names another backbone key than this node's"
            )
        if not is_loopback(self._api_host) and backbone.host != self._api_host:
            raise ConfigRejected(
                409,
                "backbone_address_mismatch",
                f"the config's backbone address {backbone.host} is not the one the client "
                f"API listens on ({self._api_host})",
            )
        return private

    async def apply(self, bundle: ConfigBundle, private_key: str | None) -> None:
        """Set the interface's peers to the bundle's (none once it leaves the backbone)."""
        wanted = bundle.backbone
        if wanted is None and self._applied is not None:
            wanted = self._applied.model_copy(update={"peers": ()})
        if wanted is None or private_key is None:
            return
        try:
            await self._wireguard.sync_backbone(wanted, private_key)
        except (CommandFailed, InterfaceMissing) as exc:
            raise ConfigRejected(
                503, "backbone_apply_failed", f"the backbone interface: {exc}"
            ) from None
        self._applied = wanted
