from django.urls import path
from rest_framework.routers import SimpleRouter

from control_plane.pki.api.views import (
    CertificateAuthoritiesView,
    EnrolmentTokenViewSet,
    EnrolView,
    IssuedCertificateViewSet,
)

router = SimpleRouter()
router.register("enrolment-tokens", EnrolmentTokenViewSet, basename="enrolmenttoken")
router.register("certificates", IssuedCertificateViewSet, basename="issuedcertificate")

urlpatterns = [
    path("enrol/", EnrolView.as_view(), name="enrol"),
    path("enrol/ca/", CertificateAuthoritiesView.as_view(), name="enrol-ca"),
    *router.urls,
]
