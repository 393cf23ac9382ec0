from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "control_plane.registry"
    label = "registry"
    verbose_name = "Model registry"
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}
