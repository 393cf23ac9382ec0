"""Admin console pages for address pools, gateways, peers and gateway releases.

Adding a peer is provisioning: the form calls ``provision_peer`` and answers with a page
that shows the config (and its QR code) once, ``no-store``; with a generated key pair
that page is the only place its private key ever appears. Later downloads (config file,
QR code) come without the private key and need ``change_peer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from control_plane.clients.models import Client
from control_plane.core.admin import (
    RELEASE_LIST_DISPLAY,
    ReleaseAdmin,
    RolloutTargetAdmin,
    TargetStateInline,
)
from control_plane.core.errors import Conflict
from control_plane.core.models import RELEASE_FIELDS
from control_plane.network.backbone import check_member, join_backbone
from control_plane.network.choices import PeerStatus
from control_plane.network.models import (
    AddressPool,
    BackboneMember,
    Gateway,
    GatewayRelease,
    GatewayState,
    GatewayUpstream,
    Peer,
)
from control_plane.network.querysets import PeerQuerySet
from control_plane.network.rollout import GATEWAYS
from control_plane.network.services import (
    ProvisionedPeer,
    client_config,
    config_qr_svg,
    disable_peer,
    enable_peer,
    provision_peer,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class PeerTotal(TypedDict):
    """What the admin's queryset adds to each pool."""

    n: int


def _inline_svg(svg: bytes) -> str:
    """The SVG without its XML declaration, to sit inside the page."""
    text = svg.decode("utf-8")
    return text[text.index("<svg") :]


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store, max-age=0"
    response["Pragma"] = "no-cache"
    return response


@admin.register(AddressPool)
class AddressPoolAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "purpose",
        "ipv4_cidr",
        "ipv6_cidr",
        "gateway_name",
        "peer_count",
        "created_at",
    )
    list_filter = ("purpose",)
    search_fields = ("name", "ipv4_cidr", "ipv6_cidr", "description")
    readonly_fields = ("gateway_addresses", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[AddressPool]:
        return super().get_queryset(request).select_related("gateway").annotate(n=Count("peers"))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None and obj.peers.exists():
            # Peers hold addresses of these networks.
            return (*self.readonly_fields, "ipv4_cidr", "ipv6_cidr")
        return self.readonly_fields

    @admin.display(description="gateway")
    def gateway_name(self, obj: AddressPool) -> str:
        try:
            return obj.gateway.name
        except Gateway.DoesNotExist:
            return "-"

    @admin.display(description="peers", ordering="n")
    def peer_count(self, obj: WithAnnotations[AddressPool, PeerTotal]) -> int:
        return obj.n

    @admin.display(description="gateway's own addresses")
    def gateway_addresses(self, obj: AddressPool) -> str:
        return ", ".join(obj.gateway_interfaces()) if obj.pk else "-"


class GatewayUpstreamInline(admin.TabularInline):
    model = GatewayUpstream
    extra = 0
    fields = ("node", "host", "port")


class GatewayStateInline(TargetStateInline):
    model = GatewayState


@admin.register(Gateway)
class GatewayAdmin(RolloutTargetAdmin):
    rollout_kind = GATEWAYS
    list_display = (
        "name",
        "public_endpoint",
        "pool",
        "enabled",
        "rollout",
        "applied_version",
        "latest_version",
        "health_status",
        "last_error",
    )
    list_filter = ("enabled", "state__health_status")
    search_fields = ("name", "public_endpoint", "management_url", "public_key")
    readonly_fields = ("api_base", "created_at", "updated_at")
    fields = (
        "name",
        "public_endpoint",
        "public_key",
        "management_url",
        "signing_key",
        "pool",
        "interface_name",
        "listen_port",
        "http_port",
        "https_port",
        "plain_http",
        "api_base",
        "enabled",
        "description",
        "created_at",
        "updated_at",
    )
    inlines = (GatewayUpstreamInline, GatewayStateInline)

    @admin.display(description="API base for peers")
    def api_base(self, obj: Gateway) -> str:
        return obj.api_base if obj.pk else "-"


class BackboneMemberForm(forms.ModelForm):
    class Meta:
        model = BackboneMember
        fields = (
            "pool",
            "node",
            "gateway",
            "public_key",
            "endpoint",
            "listen_port",
            "interface_name",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None:
            check_member(
                data.get("pool"),
                node=data.get("node"),
                gateway=data.get("gateway"),
                endpoint=data.get("endpoint", ""),
            )
        return data


@admin.register(BackboneMember)
class BackboneMemberAdmin(admin.ModelAdmin):
    """A member's address comes from its pool when it is added (``join_backbone``)."""

    form = BackboneMemberForm
    list_display = ("__str__", "pool", "node", "gateway", "endpoint", "listen_port")
    list_filter = ("pool",)
    search_fields = ("node__name", "gateway__name", "public_key", "address")
    readonly_fields = ("address", "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is not None:
            return (*self.readonly_fields, "pool", "node", "gateway")
        return self.readonly_fields

    def save_model(
        self, request: HttpRequest, obj: BackboneMember, form: Any, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            member = join_backbone(
                obj.pool,
                public_key=obj.public_key,
                node=obj.node,
                gateway=obj.gateway,
                endpoint=obj.endpoint,
                listen_port=obj.listen_port,
                interface_name=obj.interface_name,
            )
        except Conflict as exc:  # the pool filled up since the form was checked
            raise PermissionDenied(str(exc)) from None
        obj.pk, obj.address = member.pk, member.address


class ProvisionPeerForm(forms.Form):
    client = forms.ModelChoiceField(queryset=Client.objects.order_by("slug"))
    gateway = forms.ModelChoiceField(queryset=Gateway.objects.order_by("name"))
    name = forms.CharField(max_length=100, required=False, help_text="Which device, for whom.")
    public_key = forms.CharField(
        label="client's WireGuard public key",
        max_length=100,
        required=False,
        help_text="Preferred: the client keeps its private key. Leave empty to generate a "
        "key pair here; its private key is then shown once, in the config.",
    )
    expires_at = forms.DateTimeField(
        required=False, help_text="Optional, like 2030-01-31 18:00 (UTC)."
    )


class PeerStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(PeerStatus.ACTIVE, "Active"), (PeerStatus.DISABLED, "Disabled")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Peer]) -> QuerySet[Peer]:
        if self.value() == PeerStatus.ACTIVE:
            # The admin's, from Peer's manager: a PeerQuerySet (typed as a plain one).
            return cast(PeerQuerySet, queryset).active()
        if self.value() == PeerStatus.DISABLED:
            return queryset.filter(enabled=False)
        return queryset


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "client",
        "gateway",
        "address_v4",
        "address_v6",
        "status_label",
        "expires_at",
        "last_handshake_at",
        "disabled_reason",
    )
    list_filter = (PeerStatusFilter, "gateway", "client", "key_generated")
    search_fields = ("name", "public_key", "address_v4", "address_v6", "client__slug")
    list_select_related = ("client", "gateway")
    # Never "preshared_key": it leaves only inside the config download.
    fields = (
        "client",
        "gateway",
        "name",
        "public_key",
        "key_generated",
        "address_v4",
        "address_v6",
        "status_label",
        "expires_at",
        "disabled_reason",
        "disabled_at",
        "last_handshake_at",
        "downloads",
        "created_at",
        "updated_at",
    )
    readonly_fields = (
        "client",
        "gateway",
        "public_key",
        "key_generated",
        "address_v4",
        "address_v6",
        "status_label",
        "disabled_reason",
        "disabled_at",
        "last_handshake_at",
        "downloads",
        "created_at",
        "updated_at",
    )
    actions = ("disable_selected", "enable_selected")

    @admin.display(description="status")
    def status_label(self, obj: Peer) -> str:
        return PeerStatus(obj.status()).label

    @admin.display(description="config")
    def downloads(self, obj: Peer) -> str:
        if not obj.pk:
            return "-"
        return format_html(
            '<a href="{}">wg-quick file</a> · <a href="{}">QR code</a> '
            "(without the private key: it is never stored)",
            reverse("admin:network_peer_config", args=[obj.pk]),
            reverse("admin:network_peer_qr", args=[obj.pk]),
        )

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/config/", wrap(self.config_view), name="network_peer_config"),
            path("<int:pk>/qr/", wrap(self.qr_view), name="network_peer_qr"),
            *super().get_urls(),
        ]

    def _downloadable(self, request: HttpRequest, pk: int) -> Peer:
        if not request.user.has_perm("network.change_peer"):
            raise PermissionDenied  # the config holds the preshared key
        return get_object_or_404(Peer.objects.select_related("client", "gateway__pool"), pk=pk)

    def config_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        peer = self._downloadable(request, pk)
        response = HttpResponse(client_config(peer), content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="sanctum{peer.pk}.conf"'
        return _no_store(response)

    def qr_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        peer = self._downloadable(request, pk)
        response = HttpResponse(config_qr_svg(client_config(peer)), content_type="image/svg+xml")
        return _no_store(response)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """Provisioning: allocate an address, make the PSK (and keys), show the config once."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ProvisionPeerForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                provisioned = provision_peer(
                    data["client"],
                    data["gateway"],
                    public_key=data["public_key"] or None,
                    name=data["name"],
                    expires_at=data["expires_at"],
                )
            except Conflict as exc:
                form.add_error(None, str(exc))
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                return self._provisioned_page(request, provisioned)
        context = {
            **self.admin_site.each_context(request),
            "title": "Provision a peer",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/network/peer/provision.html", context)

    def _provisioned_page(self, request: HttpRequest, provisioned: ProvisionedPeer) -> HttpResponse:
        response = TemplateResponse(
            request,
            "admin/network/peer/provisioned.html",
            {
                **self.admin_site.each_context(request),
                "title": "Peer provisioned",
                "opts": self.model._meta,
                "peer": provisioned.peer,
                "config": provisioned.config,
                "qr_svg": _inline_svg(config_qr_svg(provisioned.config)),
                "private_key_included": provisioned.private_key_included,
            },
        )
        return _no_store(response)

    @admin.action(
        description="Disable selected peers (released to their gateways at once)",
        permissions=["change"],
    )
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[Peer]) -> None:
        count = 0
        for peer in queryset.filter(enabled=True):
            disable_peer(peer, reason=f"disabled in the admin console by {request.user}")
            count += 1
        self.message_user(
            request,
            f"Disabled {count} peer(s). Their gateways are sent a config without them now.",
            messages.SUCCESS,
        )

    @admin.action(description="Enable selected peers", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[Peer]) -> None:
        count = 0
        for peer in queryset.filter(enabled=False):
            try:
                enable_peer(peer)
                count += 1
            except ValidationError:
                self.message_user(
                    request, f"{peer}: expired; set a new expiry first", messages.WARNING
                )
        self.message_user(
            request,
            f"Enabled {count} peer(s). Their gateways are sent a config with them now.",
            messages.SUCCESS,
        )


@admin.register(GatewayRelease)
class GatewayReleaseAdmin(ReleaseAdmin):
    list_display = ("gateway", *RELEASE_LIST_DISPLAY)
    list_filter = ("status", "gateway", "created_at")
    search_fields = ("gateway__name", "document_sha256", "last_error")
    list_select_related = ("gateway", "released_by")
    fields = ("gateway", *RELEASE_FIELDS, "peer_count")
    readonly_fields = fields
