"""Validators shared by the clients, registry and fleet apps.

Names that travel in the config bundle must match ``shared.config.Name``; checking them
here gives the operator a field error instead of a failed rollout.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

BUNDLE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

bundle_name_validator = RegexValidator(
    BUNDLE_NAME_PATTERN,
    "Use 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit.",
)

# shared.config.ModelVersion: printable ASCII without spaces, as usage records carry it.
model_version_validator = RegexValidator(
    r"^[\x21-\x7e]{1,64}$",
    "Use 1-64 printable characters without spaces.",
)


def validate_name_list(value: Any) -> None:
    """A JSON list of distinct bundle names (the knowledge-base list clients once had;
    kept because migration ``clients.0001`` refers to it)."""
    if not isinstance(value, list):
        raise ValidationError("Enter a list of names.")
    for item in value:
        if not isinstance(item, str):
            raise ValidationError("Every entry must be a name.")
        bundle_name_validator(item)
    if len(set(value)) != len(value):
        raise ValidationError("Names must not repeat.")
