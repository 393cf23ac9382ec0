from rest_framework.routers import SimpleRouter

from control_plane.registry.api.views import ModelPinViewSet

router = SimpleRouter()
router.register("model-pins", ModelPinViewSet, basename="modelpin")

urlpatterns = router.urls
