"""URLs: the admin console at /admin/, the REST API at /api/ (its OpenAPI schema at
/api/schema/), and the auditors' page at /audit/."""

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

admin.site.site_header = "Sanctum control plane"
admin.site.site_title = "Sanctum"
admin.site.index_title = "Operations"

api_patterns: list[URLPattern | URLResolver] = [
    path("", include("control_plane.core.api.urls")),
    path("", include("control_plane.accounts.api.urls")),
    path("", include("control_plane.clients.api.urls")),
    path("", include("control_plane.registry.api.urls")),
    path("", include("control_plane.fleet.api.urls")),
    path("", include("control_plane.knowledge.api.urls")),
    path("", include("control_plane.network.api.urls")),
    path("", include("control_plane.changes.api.urls")),
    path("", include("control_plane.pki.api.urls")),
    path("audit/", include("control_plane.audit.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", include((api_patterns, "api"))),
    path("audit/", include("control_plane.audit.urls")),
]
