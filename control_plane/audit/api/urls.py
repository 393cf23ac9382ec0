from django.urls import path
from rest_framework.routers import SimpleRouter

from control_plane.audit.api.views import (
    AllowedReleasesView,
    BundleView,
    CheckpointView,
    ConsistencyView,
    LogKeyView,
    ReceiptViewSet,
    StatementViewSet,
    TreeHeadViewSet,
)

router = SimpleRouter()
router.register("receipts", ReceiptViewSet, basename="receipt")
router.register("tree-heads", TreeHeadViewSet, basename="treehead")
router.register("statements", StatementViewSet, basename="statement")

urlpatterns = [
    path("bundle/", BundleView.as_view(), name="audit-bundle"),
    path("consistency/", ConsistencyView.as_view(), name="audit-consistency"),
    path("checkpoint/", CheckpointView.as_view(), name="audit-checkpoint"),
    path("log-key/", LogKeyView.as_view(), name="audit-log-key"),
    path("releases/", AllowedReleasesView.as_view(), name="audit-releases"),
    *router.urls,
]
