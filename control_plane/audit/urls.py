from django.urls import path

from control_plane.audit.views import ReceiptsPage, UsageChartView

app_name = "audit"

urlpatterns = [
    path("", ReceiptsPage.as_view(), name="receipts"),
    path("charts/<slug:name>.svg", UsageChartView.as_view(), name="chart"),
]
