from rest_framework.routers import SimpleRouter

from control_plane.registry.api.views import ModelPinViewSet, SoftwareReleaseViewSet

router = SimpleRouter()
router.register("model-pins", ModelPinViewSet, basename="modelpin")
# Not "releases": that is the fleet's config releases (ConfigRelease).
router.register("software-releases", SoftwareReleaseViewSet, basename="softwarerelease")

urlpatterns = router.urls
