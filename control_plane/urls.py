"""URLs: the admin console at /admin/, the REST API at /api/ (its OpenAPI schema at
/api/schema/), the auditors' page at /audit/, operators' TOTP enrolment at
/accounts/mfa/enrol/, and single sign-on at /oidc/ (when a provider is configured: its
redirect URI is /oidc/callback/), and Prometheus's /metrics."""

from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from control_plane.core.metrics import metrics_view

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
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include((api_patterns, "api"))),
    path("audit/", include("control_plane.audit.urls")),
    path("accounts/", include("control_plane.accounts.urls")),
]

if settings.SANCTUM.auth.oidc.enabled:
    from control_plane.accounts.views import SignInCallbackView, SignInStartView

    urlpatterns += [
        # The names are mozilla-django-oidc's: its views reverse them.
        path("oidc/authenticate/", SignInStartView.as_view(), name="oidc_authentication_init"),
        path("oidc/callback/", SignInCallbackView.as_view(), name="oidc_authentication_callback"),
    ]
