from rest_framework.routers import SimpleRouter

from control_plane.changes.api.views import ObjectChangeViewSet

router = SimpleRouter()
router.register("changes", ObjectChangeViewSet, basename="objectchange")

urlpatterns = router.urls
