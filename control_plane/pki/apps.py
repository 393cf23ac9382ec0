from django.apps import AppConfig


class PkiConfig(AppConfig):
    name = "control_plane.pki"
    label = "pki"
    verbose_name = "Certificates"
    # Admins make enrolment tokens; auditors may see what was issued to whom.
    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}
