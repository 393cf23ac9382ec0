"""Thin API views: validate, call a service, serialize.

Tokens and issued certificates are admin objects (model permissions). The two
``enrol`` views are for hosts that have no account: ``GET /api/enrol/ca/`` publishes the
CA certificates (public), ``POST /api/enrol/`` takes a token and CSRs; the token is the
only credential there.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control_plane.core.tls import ingress_ca, management_ca
from control_plane.pki.api.serializers import (
    CertificateAuthoritiesSerializer,
    EnrolmentSerializer,
    EnrolmentTokenCreateSerializer,
    EnrolmentTokenSerializer,
    EnrolRequestSerializer,
    IssuedCertificateSerializer,
    IssuedEnrolmentTokenSerializer,
)
from control_plane.pki.models import EnrolmentToken, IssuedCertificate
from control_plane.pki.services import EnrolmentRefused, create_enrolment_token, enrol


class EnrolmentTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Enrolment tokens: make one (its text is in the answer, once), list, delete."""

    queryset = EnrolmentToken.objects.select_related("created_by")
    serializer_class = EnrolmentTokenSerializer
    filterset_fields = ("kind", "target_name")
    ordering_fields = ("created_at", "expires_at")

    @extend_schema(
        request=EnrolmentTokenCreateSerializer, responses={201: IssuedEnrolmentTokenSerializer}
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = EnrolmentTokenCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        issued = create_enrolment_token(
            form.validated_data["kind"],
            form.validated_data["target_name"],
            lifetime_seconds=form.validated_data.get("lifetime_seconds"),
        )
        data = dict(IssuedEnrolmentTokenSerializer(issued.token).data)
        data["token"] = issued.text
        response = Response(data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class IssuedCertificateViewSet(viewsets.ReadOnlyModelViewSet):
    """Every certificate the CAs issued (public material only)."""

    queryset = IssuedCertificate.objects.all()
    serializer_class = IssuedCertificateSerializer
    filterset_fields = ("kind", "target_name", "purpose")
    ordering_fields = ("created_at", "not_after")


class CertificateAuthoritiesView(APIView):
    """The CA certificates, for anyone (``sanctum enrol`` checks them against its pin)."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(responses={200: CertificateAuthoritiesSerializer})
    def get(self, request: Request) -> Response:
        management, ingress = management_ca(), ingress_ca()
        return Response(
            {
                "management_ca": management.certificate_pem,
                "management_ca_fingerprint": management.fingerprint,
                "ingress_ca": ingress.certificate_pem,
                "ingress_ca_fingerprint": ingress.fingerprint,
            }
        )


class EnrolView(APIView):
    """A host's CSR(s) with its enrolment token; its certificates and the CAs back."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(request=EnrolRequestSerializer, responses={201: EnrolmentSerializer})
    def post(self, request: Request) -> Response:
        form = EnrolRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            enrolment = enrol(
                form.validated_data["token"],
                form.validated_data["csr"],
                form.validated_data.get("ingress_csr"),
            )
        except EnrolmentRefused as exc:
            return Response({"detail": exc.message, "code": exc.code}, status=exc.status)
        return Response(EnrolmentSerializer(enrolment).data, status=status.HTTP_201_CREATED)
