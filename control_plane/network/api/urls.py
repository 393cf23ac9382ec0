from rest_framework.routers import SimpleRouter

from control_plane.network.api.views import (
    AddressPoolViewSet,
    GatewayReleaseViewSet,
    GatewayViewSet,
    PeerViewSet,
)

router = SimpleRouter()
router.register("address-pools", AddressPoolViewSet, basename="addresspool")
router.register("gateways", GatewayViewSet, basename="gateway")
router.register("peers", PeerViewSet, basename="peer")
router.register("gateway-releases", GatewayReleaseViewSet, basename="gatewayrelease")

urlpatterns = router.urls
