"""Settings: production refuses missing secrets and passes Django's deploy check."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from shared.keyring import Keyring

ROOT = Path(__file__).resolve().parents[2]


def _manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SANCTUM_CP_", "DJANGO_"))}
    clean.update(PYTHONPATH=str(ROOT), SANCTUM_CP_DATA_DIR=str(tmp_path / "cp"), **env)
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "control_plane", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_its_secrets(tmp_path):
    result = _manage(tmp_path, "check", SANCTUM_CP_ENVIRONMENT="production")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SANCTUM_CP_SECRET_KEY is required" in result.stderr
    assert "SANCTUM_CP_KEYRING is required" in result.stderr


def test_a_bad_secret_is_named_but_never_echoed(tmp_path):
    weak = "too-short-" + secrets.token_hex(4)
    result = _manage(
        tmp_path, "check", SANCTUM_CP_ENVIRONMENT="production", SANCTUM_CP_SECRET_KEY=weak
    )

    assert "SANCTUM_CP_SECRET_KEY needs 50+ characters" in result.stderr
    assert weak not in result.stderr + result.stdout


def test_production_settings_pass_the_deploy_check(tmp_path):
    ring = tmp_path / "keyring"
    Keyring(ring).init()
    ca_dir = tmp_path / "ca"
    made = _manage(tmp_path, "tls", "init", "--ca-dir", str(ca_dir))
    assert made.returncode == 0, made.stderr
    assert "SANCTUM_CP_MANAGEMENT_CA_FINGERPRINT=" in made.stdout

    result = _manage(
        tmp_path,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SANCTUM_CP_ENVIRONMENT="production",
        SANCTUM_CP_SECRET_KEY=secrets.token_urlsafe(64),
        SANCTUM_CP_KEYRING=str(ring),
        SANCTUM_CP_TLS__CA_DIR=str(ca_dir),
        SANCTUM_CP_ALLOWED_HOSTS="cp.mgmt.internal",
    )

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_its_ca(tmp_path):
    ring = tmp_path / "keyring"
    Keyring(ring).init()
    result = _manage(
        tmp_path,
        "check",
        SANCTUM_CP_ENVIRONMENT="production",
        SANCTUM_CP_SECRET_KEY=secrets.token_urlsafe(64),
        SANCTUM_CP_KEYRING=str(ring),
    )

    assert "SANCTUM_CP_TLS__CA_DIR is required" in result.stderr


def test_a_misspelt_variable_is_refused_naming_the_setting_meant(tmp_path):
    result = _manage(tmp_path, "check", SANCTUM_CP_LEDGER__ORIGN="cp.example.com/receipts")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert (
        "SANCTUM_CP_LEDGER__ORIGN is not a setting; did you mean SANCTUM_CP_LEDGER__ORIGIN?"
        in result.stderr
    )
