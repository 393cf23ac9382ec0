from rest_framework.routers import SimpleRouter

from control_plane.fleet.api.views import ConfigReleaseViewSet, NodePoolViewSet, NodeViewSet

router = SimpleRouter()
router.register("node-pools", NodePoolViewSet, basename="nodepool")
router.register("nodes", NodeViewSet, basename="node")
router.register("releases", ConfigReleaseViewSet, basename="configrelease")

urlpatterns = router.urls
