from django.apps import AppConfig


class ClientsConfig(AppConfig):
    name = "control_plane.clients"
    label = "clients"
    verbose_name = "Clients"
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}
