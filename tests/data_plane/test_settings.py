"""A node's settings: a SANCTUM_DP_* variable that is not one of them stops it at start;
the engine's come from SANCTUM_DP_ENGINE__*."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from data_plane.runtime import engine_config
from data_plane.settings import Settings
from tests.conftest import REPO, bundled_model_spec, child_env


def test_a_misspelt_variable_stops_the_node_before_it_listens(tmp_path: Path) -> None:
    env = child_env(SANCTUM_DP_DATA_DIR=str(tmp_path), SANCTUM_DP_LISTEN__API_PROT="9000")
    result = subprocess.run(
        [sys.executable, "-m", "data_plane", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: invalid settings: SANCTUM_DP_LISTEN__API_PROT is not a setting; "
        "did you mean SANCTUM_DP_LISTEN__API_PORT?"
    )
    assert "SANCTUM_DP_READY" not in result.stdout
    assert not any(tmp_path.iterdir())  # nothing made: no keys, no outbox


def test_speculation_comes_from_the_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """SANCTUM_DP_ENGINE__SPECULATION and its draft length reach the engine's config;
    by default it is off (docs/benchmarks.md: on two busy cores it did not always win)."""
    spec = bundled_model_spec()
    default = engine_config(spec, Settings())
    assert (default.speculation, default.max_draft) == ("off", 8)
    monkeypatch.setenv("SANCTUM_DP_ENGINE__SPECULATION", "prompt_lookup")
    monkeypatch.setenv("SANCTUM_DP_ENGINE__SPECULATION_MAX_DRAFT", "4")
    config = engine_config(spec, Settings())
    assert (config.speculation, config.max_draft) == ("prompt_lookup", 4)


def test_an_unknown_speculation_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANCTUM_DP_ENGINE__SPECULATION", "medusa")
    with pytest.raises(ValidationError, match="speculation"):
        Settings()
