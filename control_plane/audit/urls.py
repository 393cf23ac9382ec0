from django.urls import path

from control_plane.audit.views import ReceiptsPage

app_name = "audit"

urlpatterns = [
    path("", ReceiptsPage.as_view(), name="receipts"),
]
