"""The auditors' page: receipts by client and period, the bundle to download, and the
usage charts (also served alone as SVG at ``/audit/charts/NAME.svg``).

Django's own login (the admin's form) and permissions: ``audit.view_receipt``, which
the ``auditor`` and ``admin`` roles hold. The page only reads; the download link is
the API's bundle endpoint, which the same session may call. A scoped auditor
(``control_plane.audit.scopes``) is offered only its clients and gets 403 for another.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.contrib.auth.mixins import LoginRequiredMixin, PermissionRequiredMixin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from control_plane.audit.charts import CHARTS, DayRange, usage_chart, usage_charts
from control_plane.audit.filtersets import MomentField, PeriodForm
from control_plane.audit.models import Receipt, TreeHead
from control_plane.audit.scopes import ClientOutOfScope, audit_scope
from control_plane.audit.services import Period, log_key_info, receipts_for

PAGE_SIZE = 100


class ReceiptSearchForm(PeriodForm):
    client = forms.ChoiceField(label="Client", choices=())
    since = MomentField(
        label="Sessions ended from",
        required=False,
        help_text="a date (UTC midnight) or an RFC 3339 time",
        widget=forms.DateInput(attrs={"placeholder": "2025-01-01"}),
    )
    until = MomentField(
        label="...and before",
        required=False,
        help_text="exclusive",
        widget=forms.DateInput(attrs={"placeholder": "2025-02-01"}),
    )

    def __init__(self, *args: Any, clients: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # self.fields holds copies of the declared fields: "client" is the ChoiceField above.
        cast(forms.ChoiceField, self.fields["client"]).choices = [(c, c) for c in clients]


class ReceiptsPage(LoginRequiredMixin, PermissionRequiredMixin, TemplateView):
    """Receipts of one client in one period, their totals, and the bundle link."""

    template_name = "audit/receipts.html"
    permission_required = "audit.view_receipt"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        request = self.request
        context.update(admin.site.each_context(request))
        scope = audit_scope(request.user)
        asked = request.GET.get("client")
        if asked and not scope.allows(asked):
            raise PermissionDenied(str(ClientOutOfScope(asked)))
        clients = scope.known_clients()
        form = ReceiptSearchForm(request.GET or None, clients=clients)
        context.update(
            title="Receipts and the ledger",
            form=form,
            clients=clients,
            tree_head=TreeHead.objects.latest_head(),
            log_key=log_key_info(),
            user_scoped=scope.scoped,
            charts=[
                chart.svg()
                for chart in usage_charts(
                    scope.receipts(Receipt.objects.all()), DayRange.ending()
                ).values()
            ],
        )
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            period = Period(data.get("since"), data.get("until"))
            receipts = receipts_for(data["client"], period, scope=scope).order_by("-log_index")
            totals = receipts.aggregate(
                count=Count("pk"),
                requests=Sum("request_count"),
                prompt_tokens=Sum("prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
            )
            page = Paginator(receipts, PAGE_SIZE).get_page(request.GET.get("page"))
            params = {"client": data["client"]}
            for name in ("since", "until"):
                if data.get(name) is not None:
                    params[name] = data[name].isoformat().replace("+00:00", "Z")
            query = request.GET.copy()
            query.pop("page", None)
            context.update(
                client=data["client"],
                period=period,
                page_obj=page,
                totals=totals,
                query=query.urlencode(),
                bundle_url=f"{reverse('api:audit-bundle')}?{urlencode(params)}",
            )
        return context


class ChartForm(forms.Form):
    """``?since=DATE&until=DATE`` (UTC days, until exclusive; default: the last 14 days
    to today) ``[&client=ID]``."""

    since = forms.DateField(required=False)
    until = forms.DateField(required=False)
    client = forms.CharField(required=False, max_length=128)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        try:
            if until is None:
                days = DayRange.ending()
                if since is not None:
                    days = DayRange(since, days.last)
            elif since is None:
                days = DayRange.ending(until - timedelta(days=1))
            else:
                days = DayRange(since, until - timedelta(days=1))
        except (ValueError, OverflowError) as exc:  # 0001-01-01 has no day before it
            raise forms.ValidationError(str(exc), code="period") from None
        data["days"] = days
        return data


class UsageChartView(LoginRequiredMixin, PermissionRequiredMixin, View):
    """``GET /audit/charts/NAME.svg``: one usage chart (``tokens``, ``requests``,
    ``ttft``) of the receipts the operator may see, as an SVG document."""

    permission_required = "audit.view_receipt"

    def get(self, request: HttpRequest, name: str) -> HttpResponse:
        if name not in CHARTS:
            raise Http404(f"no chart {name[:32]!r}")
        form = ChartForm(request.GET)
        if not form.is_valid():
            return HttpResponseBadRequest(form.errors.as_text(), content_type="text/plain")
        scope = audit_scope(request.user)
        receipts = scope.receipts(Receipt.objects.all())
        client = form.cleaned_data.get("client")
        if client:
            if not scope.allows(client):
                raise PermissionDenied(str(ClientOutOfScope(client)))
            receipts = receipts.for_client(client)
        chart = usage_chart(name, receipts, form.cleaned_data["days"])
        response = HttpResponse(chart.svg(), content_type="image/svg+xml; charset=utf-8")
        response["Cache-Control"] = "private, no-store"
        return response
