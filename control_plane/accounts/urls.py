from django.urls import path

from control_plane.accounts.views import TotpEnrolView

app_name = "accounts"

urlpatterns = [
    path("mfa/enrol/", TotpEnrolView.as_view(), name="totp-enrol"),
]
