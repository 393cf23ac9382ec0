from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "control_plane.fleet"
    label = "fleet"
    verbose_name = "Fleet"
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}

    def ready(self) -> None:
        from control_plane.clients.models import ApiKey, Client
        from control_plane.core.rollout import register
        from control_plane.core.signals import release_on_change
        from control_plane.fleet.models import Node, NodePool
        from control_plane.fleet.rollout import NODES
        from control_plane.knowledge.models import KnowledgeBase
        from control_plane.network.models import BackboneMember, Gateway, GatewayUpstream
        from control_plane.registry.models import ModelPin

        register(NODES)
        # What a bundle is built from (fleet.rollout.build_bundle): a revoked key, a
        # disabled client, a changed pin, node or knowledge base reaches every node when
        # it commits; so does a change to the backbone (the gateways that may reach it)
        # or to placement (a client or a pin moved to another pool, a pool's kind).
        release_on_change(
            NODES.name,
            Client,
            ApiKey,
            ModelPin,
            Node,
            NodePool,
            KnowledgeBase,
            BackboneMember,
            Gateway,
            GatewayUpstream,
        )
