"""The hashed lock (requirements/*.txt, `make lock`) covers what the project needs and
what this environment runs: each installed distribution at its installed version, each
of pyproject.toml's requirements, each entry with its files' hashes."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

LOCKS = ("requirements/lock.txt", "requirements/smollm2.txt")
BUILD = "requirements/build.txt"
EXTRAS = ("data-plane", "control-plane", "models", "dev")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _entries(path: str) -> dict[str, tuple[str, list[str]]]:
    """Each pinned name of a pip-compile file: its version and the hashes under it."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (REPO / path).read_text().splitlines():
        pin = PIN.match(line)
        if pin:
            current = canonicalize_name(pin[1])
            entries[current] = (pin[2], [])
        elif current and line.strip().startswith("--hash=sha256:"):
            entries[current][1].append(line.strip().removesuffix("\\").strip())
        elif not line.startswith(" "):
            current = None
    return entries


def _locked() -> dict[str, str]:
    locked: dict[str, str] = {}
    for path in LOCKS:
        locked.update({name: version for name, (version, _) in _entries(path).items()})
    return locked


def test_every_locked_entry_carries_hashes() -> None:
    for path in (*LOCKS, BUILD):
        entries = _entries(path)
        assert entries, path
        unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
        assert not unhashed, f"{path}: no --hash for {unhashed}"


def test_the_build_tools_are_the_locked_ones() -> None:
    locked = _entries("requirements/lock.txt")
    for name, entry in _entries(BUILD).items():
        assert locked.get(name) == entry, f"{name}: build.txt and lock.txt disagree"


def test_torch_is_locked_to_the_cpu_build() -> None:
    assert _locked()["torch"].endswith("+cpu")


def test_every_installed_distribution_is_locked_at_its_version() -> None:
    locked = _locked()
    drift = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name == "sanctum":  # the project itself: pip install --no-deps -e .
            continue
        if locked.get(name) != dist.version:
            drift.append(f"{name} {dist.version} (lock: {locked.get(name, 'absent')})")
    assert not drift, "installed but not so locked (make lock, or scripts/setup.sh): " + (
        ", ".join(sorted(set(drift)))
    )


def test_every_requirement_of_pyproject_is_locked_at_a_version_it_accepts() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    locked = _locked()
    missing = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = locked.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (lock: {version or 'absent'})")
    assert not missing, "pyproject.toml asks for what the lock lacks (make lock): " + (
        ", ".join(missing)
    )
