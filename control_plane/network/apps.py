from django.apps import AppConfig


class NetworkConfig(AppConfig):
    name = "control_plane.network"
    label = "network"
    verbose_name = "Network"
    # Auditors read pools, gateways and peers; downloading a peer's config (it holds the
    # preshared key) needs change_peer, which only admins have.
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}

    def ready(self) -> None:
        from control_plane.clients.models import Client
        from control_plane.core.rollout import register
        from control_plane.core.signals import release_on_change
        from control_plane.fleet.models import Node, NodePool
        from control_plane.network.models import (
            AddressPool,
            BackboneMember,
            Gateway,
            GatewayUpstream,
            Peer,
        )
        from control_plane.network.rollout import GATEWAYS

        register(GATEWAYS)
        # What a gateway config is built from (network.rollout.build_gateway_config): a
        # disabled peer or client, a changed upstream, a client moved to another pool, a
        # node drained reach every gateway on commit.
        release_on_change(
            GATEWAYS.name,
            Client,
            Peer,
            Gateway,
            GatewayUpstream,
            AddressPool,
            Node,
            NodePool,
            BackboneMember,
        )
