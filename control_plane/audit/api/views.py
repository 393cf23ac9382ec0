"""The auditors' API: receipts, tree heads, bundles, consistency proofs. Read-only.

Reading needs ``audit.view_receipt`` / ``audit.view_treehead`` (the ``auditor`` and
``admin`` roles); no role holds add, change or delete, so every write is 403 (401
without credentials). An auditor scoped to some clients
(``control_plane.audit.scopes``) lists only their receipts and gets 403 for another
client's receipts or bundle; tree heads, proofs and the log key are global. Bundles
and consistency files are served as the exact bytes ``shared.ledger`` makes, never
through a renderer: the verifier checks them byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control_plane.audit.api.serializers import (
    BundleQuerySerializer,
    CheckpointQuerySerializer,
    ConsistencyQuerySerializer,
    LogKeySerializer,
    ReceiptSerializer,
    StatementSerializer,
    TreeHeadSerializer,
)
from control_plane.audit.filtersets import ReceiptFilterSet
from control_plane.audit.ledger import current_tree_head
from control_plane.audit.models import Receipt, Statement, TreeHead
from control_plane.audit.scopes import ClientOutOfScope, audit_scope
from control_plane.audit.services import (
    UnknownClient,
    UnknownStatement,
    UnknownTreeHead,
    allowed_releases_file,
    client_bundle,
    client_known,
    consistency_file,
    log_key_info,
    statement_proof,
)

log = logging.getLogger(__name__)


class FirstRenderer(BaseContentNegotiation):
    """Answer with the view's first renderer whatever ``Accept`` says.

    The file views answer raw bytes (any ``Accept`` is fine); only their errors are
    rendered, as JSON.
    """

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))  # FileView always has JSONRenderer
        return first, first.media_type


class FileView(APIView):
    """A read-only view whose success answer is a file's exact bytes."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = FirstRenderer

    @staticmethod
    def file(data: bytes, content_type: str, filename: str) -> HttpResponse:
        response = HttpResponse(data, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Content-Length"] = str(len(data))
        return response


def _query(serializer_class: type, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class ReceiptViewSet(viewsets.ReadOnlyModelViewSet):
    """Receipts by client and period: ``?client=ID&since=T&until=T`` (``since <= ended_at <
    until``; RFC 3339 or a date). An unknown client is 404."""

    queryset = Receipt.objects.all()
    serializer_class = ReceiptSerializer
    filterset_class = ReceiptFilterSet
    ordering_fields = ("log_index", "ended_at", "logged_at")
    ordering = ("log_index",)
    lookup_field = "record_id"

    def get_queryset(self) -> QuerySet[Receipt]:
        # A scoped auditor's receipt of another client is not found (404), like any other.
        return audit_scope(self.request.user).receipts(super().get_queryset())

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        client = request.query_params.get("client")
        if client:
            try:
                audit_scope(request.user).check(client)
            except ClientOutOfScope as exc:
                raise PermissionDenied(str(exc)) from None
            if not client_known(client):
                raise NotFound(f"no client {client[:128]!r}")
        return super().list(request, *args, **kwargs)


class TreeHeadViewSet(viewsets.ReadOnlyModelViewSet):
    """Signed tree heads, newest first; ``latest/`` is the one bundles are made against."""

    queryset = TreeHead.objects.all()
    serializer_class = TreeHeadSerializer
    lookup_field = "size"
    lookup_value_regex = r"[0-9]+"
    ordering_fields = ("size",)

    @action(detail=False, methods=["get"])
    def latest(self, request: Request) -> Response:
        return Response(TreeHeadSerializer(current_tree_head()).data)


class StatementViewSet(viewsets.ReadOnlyModelViewSet):
    """Logged node statements, by log index: what each node said it ran, and since when
    (``?node=NAME``). ``<index>/proof/`` is the proof file ``sanctum verify --statement``
    checks a client's fresh statement against."""

    queryset = Statement.objects.all()
    serializer_class = StatementSerializer
    lookup_field = "log_index"
    lookup_value_regex = r"[0-9]+"
    ordering_fields = ("log_index",)
    ordering = ("log_index",)

    def get_queryset(self) -> QuerySet[Statement]:
        node = self.request.query_params.get("node")
        queryset = super().get_queryset()
        return queryset.filter(node=node) if node else queryset

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def proof(self, request: Request, log_index: str) -> HttpResponse:
        try:
            data = statement_proof(int(log_index))
        except UnknownStatement as exc:
            raise NotFound(str(exc)) from None
        return FileView.file(data, "application/json", f"sanctum-statement-{log_index}.json")


class AllowedReleasesView(FileView):
    """``GET /api/audit/releases/``: the release digests the control plane allows, signed
    by the log key (``sanctum verify --statement ... --releases FILE``)."""

    queryset = Statement.objects.all()  # audit.view_statement

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request: Request) -> HttpResponse:
        return self.file(allowed_releases_file(), "application/json", "sanctum-releases.json")


class BundleView(FileView):
    """``GET /api/audit/bundle/?client=ID[&since=T][&until=T]``: the audit bundle file."""

    queryset = Receipt.objects.all()  # for the permission check: audit.view_receipt

    @extend_schema(
        parameters=[BundleQuerySerializer],
        responses={(200, "application/json"): OpenApiTypes.OBJECT},
        description="One client's receipts for a period, with inclusion proofs against "
        "the latest signed tree head, the node keys and a manifest signed by the log key: "
        "the exact bytes `sanctum verify` checks.",
    )
    def get(self, request: Request) -> HttpResponse:
        query = _query(BundleQuerySerializer, request)
        client, period = query["client"], query["period"]
        try:
            data = client_bundle(client, period, scope=audit_scope(request.user))
        except ClientOutOfScope as exc:
            raise PermissionDenied(str(exc)) from None
        except UnknownClient:
            raise NotFound(f"no client {client!r}") from None
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        log.info("audit bundle client=%s bytes=%d user=%s", client, len(data), request.user)
        return self.file(data, "application/json", f"sanctum-audit-{client}-{stamp}.json")


class ConsistencyView(FileView):
    """``GET /api/audit/consistency/?old=M[&new=N]``: the consistency file."""

    queryset = TreeHead.objects.all()  # audit.view_treehead

    @extend_schema(
        parameters=[ConsistencyQuerySerializer],
        responses={(200, "application/json"): OpenApiTypes.OBJECT},
        description="The signed tree head of size N (default: the latest) and the proof "
        "that the tree of size M is a prefix of it (`sanctum verify --consistency`).",
    )
    def get(self, request: Request) -> HttpResponse:
        query = _query(ConsistencyQuerySerializer, request)
        try:
            data = consistency_file(query["old"], query.get("new"))
        except UnknownTreeHead as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise ValidationError({"old": [str(exc)]}) from None
        return self.file(data, "application/json", f"sanctum-consistency-{query['old']}.json")


class CheckpointView(FileView):
    """``GET /api/audit/checkpoint/[?size=N]``: a signed tree head as its note text, to save
    and later check a consistency file against."""

    queryset = TreeHead.objects.all()

    @extend_schema(
        parameters=[CheckpointQuerySerializer],
        responses={(200, "text/plain"): OpenApiTypes.STR},
    )
    def get(self, request: Request) -> HttpResponse:
        query = _query(CheckpointQuerySerializer, request)
        if "size" in query:
            head = TreeHead.objects.filter(size=query["size"]).first()
            if head is None:
                raise NotFound(f"no signed tree head of size {query['size']}")
        else:
            head = current_tree_head()
        return self.file(
            head.checkpoint.encode("utf-8"),
            "text/plain; charset=utf-8",
            f"sanctum-checkpoint-{head.size}.txt",
        )


class LogKeyView(APIView):
    """``GET /api/audit/log-key/``: the key tree heads and manifests are signed with.

    Pin it with ``sanctum verify --log-key``; better still, take it from the operator
    out of band, and compare."""

    queryset = TreeHead.objects.all()

    @extend_schema(responses={200: LogKeySerializer})
    def get(self, request: Request) -> Response:
        return Response(LogKeySerializer(log_key_info()).data)
