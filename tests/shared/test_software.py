"""The release manifest and digest (shared.software), and the `sanctum release-manifest`
command, over this test run's own environment and over a copy of the source tree."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from shared.canonical import canonical_json
from shared.cli.main import main
from shared.software import (
    FORMAT,
    SOURCE_PACKAGES,
    release_digest,
    release_manifest,
    source_entry,
    verify_installed,
)
from tests.conftest import REPO


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the project's source packages and lock files."""
    root = tmp_path / "checkout"
    for package in SOURCE_PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copytree(REPO / "requirements", root / "requirements")
    return root


def test_the_digest_is_stable_across_calls() -> None:
    assert release_digest() == release_digest()
    assert release_digest(release_manifest()) == release_digest()
    assert len(release_digest()) == 64


def test_the_digest_is_the_sha256_of_the_canonical_manifest() -> None:
    import hashlib

    manifest = release_manifest()
    assert manifest["format"] == FORMAT
    assert release_digest(manifest) == hashlib.sha256(canonical_json(manifest)).hexdigest()


def test_the_manifest_names_the_installed_inference_stack() -> None:
    names = {d["name"]: d for d in release_manifest()["distributions"]}
    for name in ("llama-cpp-python", "torch"):
        assert names[name]["version"] == metadata.version(name)
        assert len(names[name]["record_sha256"]) == 64
    assert "sanctum" not in names  # the project's source is hashed on its own
    assert list(names) == sorted(names)


def test_a_changed_source_file_changes_the_digest(checkout: Path) -> None:
    before = release_manifest(checkout)
    assert release_digest(release_manifest(checkout)) == release_digest(before)
    with (checkout / "shared" / "canonical.py").open("a") as f:
        f.write("# one more line\n")
    after = release_manifest(checkout)
    assert after["source"]["sha256"] != before["source"]["sha256"]
    assert release_digest(after) != release_digest(before)
    assert after["distributions"] == before["distributions"]


def test_a_changed_lock_changes_the_digest_and_bytecode_does_not(checkout: Path) -> None:
    before = source_entry(checkout)
    cache = checkout / "shared" / "__pycache__"
    cache.mkdir()
    (cache / "canonical.cpython-311.pyc").write_bytes(b"\0")
    assert source_entry(checkout) == before
    with (checkout / "requirements" / "lock.txt").open("a") as f:
        f.write("\n")
    after = source_entry(checkout)
    assert after["sha256"] == before["sha256"]
    assert (
        after["requirements"]["requirements/lock.txt"]
        != (before["requirements"]["requirements/lock.txt"])
    )


def test_the_source_digest_is_the_sha256sum_listing(checkout: Path) -> None:
    import hashlib
    import subprocess

    # The way the module's docstring says to check it by hand.
    script = "find shared data_plane control_plane -type f | LC_ALL=C sort | xargs sha256sum"
    listing = subprocess.run(
        ["bash", "-c", script],
        cwd=checkout,
        capture_output=True,
        check=True,
    ).stdout
    assert source_entry(checkout)["sha256"] == hashlib.sha256(listing).hexdigest()


def test_the_command_writes_the_manifest_and_prints_the_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "release" / "manifest.json"
    assert main(["release-manifest", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    data = out.read_bytes()
    assert data.endswith(b"\n")
    assert canonical_json(json.loads(data)) + b"\n" == data
    assert printed == release_digest(json.loads(data)) == release_digest()


def test_verify_against_a_manifest_reports_what_differs() -> None:
    manifest = release_manifest()
    manifest["distributions"] = [
        {**d, "version": "0.0.1"} if d["name"] == "torch" else d
        for d in manifest["distributions"]
        if d["name"] != "django"
    ] + [{"name": "not-installed", "version": "1", "record_sha256": "0" * 64}]
    problems = verify_installed(manifest)
    assert "not-installed: in the manifest, not installed" in problems
    assert "django: installed, not in the manifest" in problems
    assert any(p.startswith("torch: version ") for p in problems)
