"""``shared.settings``: settings refuse a variable with their prefix that they don't know."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest
from pydantic import AliasChoices, BaseModel, Field, ValidationError
from pydantic_settings import SettingsConfigDict

from control_plane.environment import ControlPlaneSettings
from data_plane.gateway.settings import GatewaySettings
from data_plane.settings import Settings
from shared.settings import StrictEnvSettings, settings_problems, unknown_variables
from tests.conftest import REPO


class Section(BaseModel):
    port: int = 1
    labels: dict[str, str] = Field(default_factory=dict)


class ToySettings(StrictEnvSettings):
    model_config = SettingsConfigDict(env_prefix="TOY_", env_nested_delimiter="__")

    read_elsewhere: ClassVar[frozenset[str]] = frozenset({"TOY_SCRIPT_PORT"})

    name: str = "toy"
    section: Section = Section()
    url: str | None = Field(default=None, validation_alias=AliasChoices("TOY_URL", "URL"))


def test_a_misspelt_variable_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOY_SECTION__PROT", "8080")
    with pytest.raises(ValidationError) as caught:
        ToySettings()
    assert settings_problems(caught.value) == (
        "TOY_SECTION__PROT is not a setting; did you mean TOY_SECTION__PORT?"
    )


def test_every_name_it_reads_passes() -> None:
    env = {
        "TOY_NAME": "a",
        "toy_section__port": "2",  # pydantic-settings reads names in any case
        "TOY_SECTION": '{"port": 3}',  # a whole section as JSON
        "TOY_SECTION__LABELS__ANY_KEY": "x",  # a dict setting takes any key
        "TOY_URL": "http://x",  # an alias
        "TOY_SCRIPT_PORT": "9",  # read by another program from the same env file
        "OTHER_VARIABLE": "left alone",
    }
    assert unknown_variables(ToySettings, env) == []


def test_every_unknown_variable_is_named_even_with_no_close_one() -> None:
    problems = unknown_variables(ToySettings, {"TOY_NAEM": "a", "TOY_XYZZY_QUUX_FROB": "b"})
    assert problems == [
        "TOY_NAEM is not a setting; did you mean TOY_NAME?",
        f"TOY_XYZZY_QUUX_FROB is not a setting (none is close: the settings are in {__name__})",
    ]


# The three planes: what infra/ writes into their env files or reads from them must pass.

PLANES: dict[str, type[StrictEnvSettings]] = {
    "SANCTUM_DP_": Settings,
    "SANCTUM_GW_": GatewaySettings,
    "SANCTUM_CP_": ControlPlaneSettings,
}
VARIABLE = re.compile(r"\bSANCTUM_(?:DP|GW|CP)_[A-Z0-9_]*[A-Z0-9]\b")


@pytest.mark.parametrize(
    ("prefix", "misspelt", "meant"),
    [
        ("SANCTUM_DP_", "SANCTUM_DP_LISTEN__API_PROT", "SANCTUM_DP_LISTEN__API_PORT"),
        ("SANCTUM_GW_", "SANCTUM_GW_NGINX__PIDFILE", "SANCTUM_GW_NGINX__PID_FILE"),
        ("SANCTUM_GW_", "SANCTUM_GW_WG_PROT", "SANCTUM_GW_WG_PORT"),
        ("SANCTUM_CP_", "SANCTUM_CP_LEDGER__ORIGN", "SANCTUM_CP_LEDGER__ORIGIN"),
    ],
)
def test_each_plane_refuses_a_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, prefix: str, misspelt: str, meant: str
) -> None:
    monkeypatch.setenv(misspelt, "1")
    with pytest.raises(ValidationError) as caught:
        PLANES[prefix]()
    assert f"{misspelt} is not a setting; did you mean {meant}?" in settings_problems(caught.value)


def _infra_variables() -> set[str]:
    """Every SANCTUM_DP_/GW_/CP_ name in infra/: the env file examples, the scripts that
    read the same env files, the units."""
    names: set[str] = set()
    for path in (REPO / "infra").rglob("*"):
        if path.is_file():
            names.update(VARIABLE.findall(path.read_text()))
    return names


def test_every_variable_infra_uses_is_accepted_by_its_plane() -> None:
    names = _infra_variables()
    assert "SANCTUM_GW_WG_PORT" in names and "SANCTUM_DP_LISTEN__API_PORT" in names
    for prefix, settings in PLANES.items():
        mine = {name: "1" for name in names if name.startswith(prefix)}
        assert unknown_variables(settings, mine) == [], prefix
