"""A node refuses, at start, a SANCTUM_DP_* variable that is not one of its settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, child_env


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
