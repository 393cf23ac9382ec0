"""scripts/gpu-check.sh on a machine without a GPU: it says so plainly and fails.

The steps after "a GPU is visible" need one (docs/engine.md, "GPU offload"); here the
script is run with no NVIDIA device node to find, as on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu-check.sh"
IN_CI = bool(os.environ.get("CI"))


def _gpu_check(dev: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)],
        env={**os.environ, "SANCTUM_GPU_CHECK_DEV": str(dev), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_a_gpu_it_says_no_gpu_found_and_fails(tmp_path: Path) -> None:
    # A /dev with the other nodes a machine has, and no nvidia0..N (nvidiactl alone,
    # as a driver without a GPU leaves it, is not a GPU).
    for name in ("null", "zero", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    done = _gpu_check(tmp_path)
    assert done.returncode == 1
    assert f"gpu-check: no GPU found (no {tmp_path}/nvidia0..N)" in done.stderr
    assert done.stdout == ""  # nothing else ran: no model, no tests, no benchmark


@pytest.mark.skipif(bool(list(Path("/dev").glob("nvidia[0-9]*"))), reason="this machine has a GPU")
def test_on_this_machine_it_finds_no_gpu() -> None:
    done = _gpu_check(Path("/dev"))
    assert done.returncode == 1
    assert "gpu-check: no GPU found (no /dev/nvidia0..N)" in done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None and not IN_CI, reason="no shellcheck")
def test_it_passes_shellcheck() -> None:
    done = subprocess.run(
        ["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
    assert os.access(SCRIPT, os.X_OK)
