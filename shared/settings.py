"""Typed settings from prefixed environment variables that refuse a variable they don't know.

pydantic-settings reads ``PREFIX_NAME`` and ``PREFIX_SECTION__NAME`` for the fields it
declares and passes over every other variable in silence, so a misspelt one
(``SANCTUM_DP_LISTEN__API_PROT=9000``) leaves its setting at the default and the process
starts as if it had not been written: a node on a port nobody chose, a limit that is not
the one in the env file. Each plane's settings class derives from
:class:`StrictEnvSettings`, which refuses at start every variable with its prefix that is
neither one of its settings nor named in its ``read_elsewhere``, and names the closest
valid one::

    SANCTUM_DP_LISTEN__API_PROT is not a setting; did you mean SANCTUM_DP_LISTEN__API_PORT?

``read_elsewhere`` is the one place per settings class for the names that share its
prefix on purpose but are read by something else from the same env file (the gateway's
``SANCTUM_GW_WG_PORT``, which its shell scripts read): accepted, not settings.

Only names are ever reported, never a value (a variable may hold a secret).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from pydantic import AliasChoices, AliasPath, BaseModel, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings


class StrictEnvSettings(BaseSettings):
    """Settings that refuse an environment variable with their prefix they don't read."""

    read_elsewhere: ClassVar[frozenset[str]] = frozenset()
    """Variables with this class's prefix that another program reads from the same
    environment (a script sourcing the same env file). Override it in one place, with a
    comment naming the reader."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_variables(cls, data: Any) -> Any:
        problems = unknown_variables(cls, os.environ)
        if problems:
            raise PydanticCustomError(
                "unknown_setting", "{problems}", {"problems": "; ".join(problems)}
            )
        return data


def unknown_variables(settings: type[StrictEnvSettings], environ: Mapping[str, str]) -> list[str]:
    """One sentence per variable in ``environ`` with the prefix of ``settings`` that it
    does not know, each naming the closest valid name when there is one."""
    config = settings.model_config
    prefix = config.get("env_prefix", "")
    if not prefix:
        return []  # without a prefix every variable of the process would be suspect
    case_sensitive = bool(config.get("case_sensitive", False))

    def fold(name: str) -> str:  # pydantic-settings reads names in any case by default
        return name if case_sensitive else name.upper()

    known, open_prefixes = variable_names(settings)
    known = {fold(name) for name in known | settings.read_elsewhere}
    opens = tuple(fold(name) for name in open_prefixes)
    prefix = fold(prefix)
    # Suggest among the names that carry the prefix, compared without it: the prefix
    # they all share would make every name look close to every other.
    candidates = {name[len(prefix) :]: name for name in known if name.startswith(prefix)}
    problems = []
    for variable in sorted(environ):
        name = fold(variable)
        if not name.startswith(prefix) or name in known or (opens and name.startswith(opens)):
            continue
        close = difflib.get_close_matches(name[len(prefix) :], list(candidates), n=1)
        if close:
            problems.append(f"{variable} is not a setting; did you mean {candidates[close[0]]}?")
        else:
            problems.append(
                f"{variable} is not a setting (none is close: the settings are in "
                f"{settings.__module__})"
            )
    return problems


def variable_names(settings: type[BaseSettings]) -> tuple[set[str], set[str]]:
    """The variable names ``settings`` reads, and the prefixes under which it reads any
    name (a ``dict`` setting's keys)."""
    config = settings.model_config
    prefix = config.get("env_prefix", "")
    delimiter = config.get("env_nested_delimiter") or None
    known: set[str] = set()
    open_prefixes: set[str] = set()
    for name, field in settings.model_fields.items():
        # A field with an alias is read by its alias alone, without the prefix.
        for variable in _aliases(field) or [prefix + name]:
            known.add(variable)
            if delimiter:
                _nested(field.annotation, variable + delimiter, delimiter, known, open_prefixes)
    return known, open_prefixes


def _aliases(field: FieldInfo) -> list[str]:
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    if isinstance(alias, AliasChoices):
        return [
            choice if isinstance(choice, str) else str(choice.path[0]) for choice in alias.choices
        ]
    return []


def _nested(
    annotation: Any, prefix: str, delimiter: str, known: set[str], open_prefixes: set[str]
) -> None:
    for kind in _kinds(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            for name, field in kind.model_fields.items():
                variable = prefix + (field.alias if isinstance(field.alias, str) else name)
                known.add(variable)
                _nested(field.annotation, variable + delimiter, delimiter, known, open_prefixes)
        elif kind is dict or typing.get_origin(kind) in (dict, Mapping):
            open_prefixes.add(prefix)


def _kinds(annotation: Any) -> Iterator[Any]:
    """The types an annotation allows: each member of a union, else the annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            yield from _kinds(member)
    else:
        yield annotation


def settings_problems(exc: ValidationError) -> str:
    """Every problem of a settings error, each as ``where: rule`` (``rule`` alone for the
    environment as a whole). Never the value: it may be a secret."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
        for err in exc.errors(include_input=False, include_url=False)
    )
