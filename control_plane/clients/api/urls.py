from rest_framework.routers import SimpleRouter

from control_plane.clients.api.views import ApiKeyViewSet, ClientViewSet

router = SimpleRouter()
router.register("clients", ClientViewSet, basename="client")
router.register("api-keys", ApiKeyViewSet, basename="apikey")

urlpatterns = router.urls
