from rest_framework.routers import SimpleRouter

from control_plane.fleet.api.views import ConfigReleaseViewSet, NodeViewSet

router = SimpleRouter()
router.register("nodes", NodeViewSet, basename="node")
router.register("releases", ConfigReleaseViewSet, basename="configrelease")

urlpatterns = router.urls
