from django.urls import path

from control_plane.core.api.views import KeySetView

urlpatterns = [path("keys/", KeySetView.as_view(), name="keys")]
