"""``sanctum keys``: a target's own pair, and the control plane's keyring."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from shared.keys import key_id, load_private_key, load_public_key
from shared.trust import CONFIG, KeySet
from tests.conftest import REPO, child_env


def keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "keys", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )


def test_generate_writes_a_nodes_pair_private_key_0600(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = keys("generate", "--role", "node", "--out", str(out))
    assert result.returncode == 0, result.stderr
    private = out / "node.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    pub = load_public_key(out / "node.pub")
    assert key_id(load_private_key(private).public_key()) == key_id(pub)
    assert key_id(pub) in result.stdout
    again = keys("generate", "--role", "node", "--out", str(out))
    assert again.returncode == 1 and "--force" in again.stdout
    # The control plane's keys are never made here: they live in its keyring.
    assert keys("generate", "--role", "control-plane", "--out", str(out)).returncode == 2


def test_generate_without_a_role_makes_no_key_at_all(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = keys("generate", "--out", str(out))
    assert result.returncode == 2
    assert "the following arguments are required: --role" in result.stderr
    assert not out.exists()
    shown = " ".join(keys("generate", "--help").stdout.split())
    assert "{node,gateway}" in shown and "sanctum keys init" in shown


def test_the_keyring_commands_rotate_and_publish(tmp_path: Path) -> None:
    ring = str(tmp_path / "ring")
    assert keys("init", "--keyring", ring).returncode == 0
    rotated = keys("rotate", "--keyring", ring, "--purpose", "config")
    assert rotated.returncode == 0, rotated.stdout
    assert "next" in rotated.stdout
    out = tmp_path / "published.json"
    assert keys("publish", "--keyring", ring, "--out", str(out)).returncode == 0
    published = KeySet.parse(out.read_bytes())
    assert len(published.kids(CONFIG)) == 2
    assert '"d"' not in out.read_text() and "PRIVATE" not in out.read_text()
    assert keys("activate", "--keyring", ring, "--purpose", "config").returncode == 0
    assert "retiring" in keys("list", "--keyring", ring).stdout
    refused = keys("activate", "--keyring", ring, "--purpose", "config")
    assert refused.returncode == 1 and "rotate first" in refused.stdout
    assert json.loads(out.read_text())["keys"]
