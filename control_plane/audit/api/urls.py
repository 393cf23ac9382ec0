from django.urls import path
from rest_framework.routers import SimpleRouter

from control_plane.audit.api.views import (
    BundleView,
    CheckpointView,
    ConsistencyView,
    LogKeyView,
    ReceiptViewSet,
    TreeHeadViewSet,
)

router = SimpleRouter()
router.register("receipts", ReceiptViewSet, basename="receipt")
router.register("tree-heads", TreeHeadViewSet, basename="treehead")

urlpatterns = [
    path("bundle/", BundleView.as_view(), name="audit-bundle"),
    path("consistency/", ConsistencyView.as_view(), name="audit-consistency"),
    path("checkpoint/", CheckpointView.as_view(), name="audit-checkpoint"),
    path("log-key/", LogKeyView.as_view(), name="audit-log-key"),
    *router.urls,
]
