from django.apps import AppConfig


class NetworkConfig(AppConfig):
    name = "control_plane.network"
    label = "network"
    verbose_name = "Network"
    # Auditors read pools, gateways and peers; downloading a peer's config (it holds the
    # preshared key) needs change_peer, which only admins have.
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}

    def ready(self) -> None:
        from control_plane.core.rollout import register
        from control_plane.network.rollout import GATEWAYS

        register(GATEWAYS)
