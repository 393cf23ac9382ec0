"""Filters for receipts: client, node, session, model, and the period their sessions ended in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import django_filters
from django import forms

from control_plane.audit.choices import EndedBy
from control_plane.audit.models import Receipt
from control_plane.audit.services import Period, parse_moment


class MomentField(forms.Field):
    """A period bound: RFC 3339 (``Z`` or an offset) or a date (UTC midnight)."""

    def to_python(self, value: Any) -> datetime | None:
        if value in (None, ""):
            return None
        try:
            return parse_moment(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc), code="invalid") from None


class PeriodForm(forms.Form):
    """Refuses a period that ends before it starts."""

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            Period(data.get("since"), data.get("until"))
        except ValueError as exc:
            raise forms.ValidationError(str(exc), code="period") from None
        return data


class MomentFilter(django_filters.Filter):
    field_class = MomentField


class ReceiptFilterSet(django_filters.FilterSet):
    client = django_filters.CharFilter(help_text="client ID")
    node = django_filters.CharFilter(help_text="node ID")
    since = MomentFilter(
        field_name="ended_at", lookup_expr="gte", help_text="sessions that ended at or after"
    )
    until = MomentFilter(field_name="ended_at", lookup_expr="lt", help_text="...and before")
    ended_by = django_filters.ChoiceFilter(choices=EndedBy.choices)

    class Meta:
        model = Receipt
        form = PeriodForm
        fields = ("client", "node", "session_id", "model", "ended_by", "since", "until")
