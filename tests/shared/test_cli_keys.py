"""``sanctum keys generate``."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from shared.keys import key_id, load_private_key, load_public_key
from tests.conftest import REPO, child_env


def test_generate_writes_both_pairs_private_keys_0600(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "keys", "generate", "--out", str(out)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    for role in ("control-plane", "node"):
        private = out / f"{role}.key"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        pub = load_public_key(out / f"{role}.pub")
        assert key_id(load_private_key(private).public_key()) == key_id(pub)
        assert key_id(pub) in result.stdout
    again = subprocess.run(
        [sys.executable, "-m", "shared.cli", "keys", "generate", "--out", str(out)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "--force" in again.stdout
