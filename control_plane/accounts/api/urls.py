from rest_framework.routers import SimpleRouter

from control_plane.accounts.api.views import AuditorScopeViewSet

router = SimpleRouter()
router.register("auditor-scopes", AuditorScopeViewSet, basename="auditorscope")

urlpatterns = router.urls
