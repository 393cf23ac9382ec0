from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "control_plane.knowledge"
    label = "knowledge"
    verbose_name = "Knowledge bases"
    # Admins load and delete; auditors see the catalog (names, sizes, hashes), never text.
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}
