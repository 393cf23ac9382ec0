from rest_framework.routers import SimpleRouter

from control_plane.network.api.views import (
    AddressPoolViewSet,
    BackboneMemberViewSet,
    GatewayReleaseViewSet,
    GatewayViewSet,
    PeerViewSet,
)

router = SimpleRouter()
router.register("address-pools", AddressPoolViewSet, basename="addresspool")
router.register("gateways", GatewayViewSet, basename="gateway")
router.register("backbone-members", BackboneMemberViewSet, basename="backbonemember")
router.register("peers", PeerViewSet, basename="peer")
router.register("gateway-releases", GatewayReleaseViewSet, basename="gatewayrelease")

urlpatterns = router.urls
