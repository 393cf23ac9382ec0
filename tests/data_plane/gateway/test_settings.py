"""The gateway agent refuses, at start, a SANCTUM_GW_* variable it does not know, and
accepts the ones its scripts read from the same env file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_plane.gateway.settings import GatewaySettings
from tests.conftest import REPO, child_env


def _agent(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "data_plane.gateway", "render-nginx"],
        cwd=REPO,
        env=child_env(SANCTUM_GW_STATE_DIR=str(tmp_path), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_misspelt_variable_stops_the_agent(tmp_path: Path) -> None:
    result = _agent(tmp_path, SANCTUM_GW_FIREWALL__PUBLIC_INTERFAC="ens3")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: invalid settings: SANCTUM_GW_FIREWALL__PUBLIC_INTERFAC is not a setting; "
        "did you mean SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE?"
    )
    assert not any(tmp_path.iterdir())


def test_the_scripts_variables_in_the_same_env_file_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SANCTUM_GW_WG_INTERFACE": "wg0",
        "SANCTUM_GW_WG_PORT": "51820",
        "SANCTUM_GW_WG_ADDRESSES": "10.77.0.1/24",
        "SANCTUM_GW_TUNNEL_PORTS": "443",
        "SANCTUM_GW_BACKBONE_IF": "sanctum-bb",
        "SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE": "ens3",
    }.items():
        monkeypatch.setenv(name, value)
    assert GatewaySettings().firewall.public_interface == "ens3"


def test_tracing_is_a_setting_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANCTUM_GW_TRACING__OTLP_ENDPOINT", raising=False)
    assert GatewaySettings().tracing.otlp_endpoint is None
    monkeypatch.setenv("SANCTUM_GW_TRACING__OTLP_ENDPOINT", "http://10.10.0.1:4318")
    assert GatewaySettings().tracing.otlp_endpoint == "http://10.10.0.1:4318"
