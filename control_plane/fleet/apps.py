from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "control_plane.fleet"
    label = "fleet"
    verbose_name = "Fleet"
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}

    def ready(self) -> None:
        from control_plane.core.rollout import register
        from control_plane.fleet.rollout import NODES

        register(NODES)
