"""The gateway's iptables rules, reloaded through the infra script on every config change.

The rules themselves live in ``infra/scripts/gateway-firewall.sh`` (one place for the
agent, the boot unit and an operator's shell); the agent hands it the interface names
and ports, which may change with a config.

The script fails closed: on a host with IPv6 where it could not load the IPv6 rules
(``ip6tables-restore`` missing or refusing) it exits non-zero instead of reporting
"applied". :meth:`Firewall.reload` raises
:class:`~data_plane.gateway.commands.CommandFailed` with its message, so the
agent answers the push with 503 ``firewall_reload_failed``, does not save the config, and
its health names the cause until a push gets through.
"""

from __future__ import annotations

import logging

from data_plane.gateway.commands import run
from data_plane.gateway.settings import FirewallSettings
from shared.gateway import GatewayConfig, tunnel_ports

logger = logging.getLogger(__name__)


class Firewall:
    def __init__(self, settings: FirewallSettings) -> None:
        self._script = settings.script
        self._public = settings.public_interface

    @property
    def enabled(self) -> bool:
        return self._script is not None

    def environment(self, config: GatewayConfig) -> dict[str, str]:
        return {
            "SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE": self._public,
            "SANCTUM_GW_WG_INTERFACE": config.interface.name,
            "SANCTUM_GW_WG_PORT": str(config.interface.listen_port),
            # What nginx serves on the tunnel: TLS, and plain HTTP only when turned on.
            "SANCTUM_GW_TUNNEL_PORTS": ",".join(str(p) for p in tunnel_ports(config)),
            "SANCTUM_GW_BACKBONE_IF": config.backbone.name if config.backbone else "",
        }

    async def reload(self, config: GatewayConfig) -> None:
        if self._script is None:
            logger.warning("firewall script not configured: iptables left as they are")
            return
        result = await run([str(self._script), "apply"], env=self.environment(config))
        # The script's last line says what it loaded, IPv6 included (or that it is absent).
        summary = (result.stderr.strip().splitlines() or [""])[-1]
        logger.info(
            "firewall reloaded public=%s wg_port=%d: %s",
            self._public,
            config.interface.listen_port,
            summary,
        )
