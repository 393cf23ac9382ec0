"""The release manifest: which software this Python environment runs, and its digest.

A node states the digest of its release (attestation, issue 17) and the control plane
keeps the digests it allows (``control_plane.registry``'s ``SoftwareRelease``). The
manifest is a JSON document, ``sanctum-release-manifest/1``::

    {"format": "sanctum-release-manifest/1",
     "python": "3.11.7",
     "distributions": [{"name": "torch", "version": "2.13.0+cpu",
                        "record_sha256": "<hex>"}, ...],          # sorted by name
     "source": {"sha256": "<hex>", "files": 812,
                "requirements": {"requirements/lock.txt": "<hex>", ...}}}

- ``distributions``: every installed distribution (``importlib.metadata``) but the
  project's own, by its normalised name (PEP 503), with the SHA-256 of its ``RECORD``
  file. RECORD lists every file the installer wrote with that file's hash, so one hash
  of it stands for the exact set of installed files; ``verify_installed`` checks that
  the files still match it.
- ``source``: the project's own code. Its editable install's RECORD names only a path
  hook, so the source is hashed here: ``sha256`` is the SHA-256 of the ``sha256sum``
  listing (``<hex>  <path>`` lines, sorted by path in byte order) of every file under
  ``shared/``, ``data_plane/`` and ``control_plane/`` but ``__pycache__`` and ``*.pyc``;
  ``requirements`` holds the hashes of the lock files (``null`` where one is absent, as
  in an install from a wheel), since they say what was installed and how.

The digest is the hex SHA-256 of the manifest's canonical JSON (``shared.canonical``).

What makes two environments' digests equal: the same lock, the same source, installed
the same way (scripts/setup.sh) at the same path. Console scripts carry their
interpreter's path in their first line, so a venv at another path has other RECORDs;
and a package compiled on the machine (llama-cpp-python) has the digest of that build,
so a fleet shares one build (docs/security.md, "Supply chain").
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import platform
import re
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.canonical import canonical_json

FORMAT = "sanctum-release-manifest/1"
PROJECT = "sanctum"
SOURCE_PACKAGES = ("shared", "data_plane", "control_plane")
REQUIREMENTS = (
    "requirements/build.txt",
    "requirements/lock.txt",
    "requirements/smollm2.txt",
)
# The checkout this module runs from (or site-packages, for an install from a wheel).
ROOT = Path(__file__).resolve().parent.parent

_CHUNK = 1 << 20


def normalise_name(name: str) -> str:
    """A distribution's name as PEP 503 compares it (``Django`` and ``django`` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256_file(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest


def _installed() -> Iterator[tuple[str, metadata.Distribution]]:
    """Each installed distribution once, the one that import would find first."""
    seen: set[str] = set()
    for dist in metadata.distributions():
        raw = dist.metadata["Name"]
        if not raw:
            continue
        name = normalise_name(raw)
        if name in seen or name == PROJECT:
            continue
        seen.add(name)
        yield name, dist


def _record_path(dist: metadata.Distribution) -> Path | None:
    """The distribution's RECORD file, or ``None`` for one installed without it."""
    for entry in dist.files or ():
        if entry.name == "RECORD" and entry.parent.name.endswith(".dist-info"):
            return Path(str(entry.locate()))
    return None


def _distributions() -> list[dict[str, Any]]:
    entries = []
    for name, dist in _installed():
        record = _record_path(dist)
        entries.append(
            {
                "name": name,
                "version": dist.version,
                "record_sha256": _sha256_file(record).hexdigest()
                if record is not None and record.is_file()
                else None,
            }
        )
    return sorted(entries, key=lambda e: e["name"])


def _source_files(root: Path) -> Iterator[Path]:
    for package in SOURCE_PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if "__pycache__" in path.relative_to(root).parts or path.suffix == ".pyc":
                continue
            if path.is_file():
                yield path


def source_entry(root: Path) -> dict[str, Any]:
    """The ``source`` entry for the checkout at ``root`` (see the module docstring)."""
    listing = sorted(
        (path.relative_to(root).as_posix().encode("utf-8"), _sha256_file(path).hexdigest())
        for path in _source_files(root)
    )
    digest = hashlib.sha256()
    for relative, sha in listing:
        digest.update(sha.encode("ascii") + b"  " + relative + b"\n")
    requirements = {}
    for name in REQUIREMENTS:
        path = root / name
        requirements[name] = _sha256_file(path).hexdigest() if path.is_file() else None
    return {"sha256": digest.hexdigest(), "files": len(listing), "requirements": requirements}


def _build(root: Path) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "python": platform.python_version(),
        "distributions": _distributions(),
        "source": source_entry(root),
    }


@functools.cache
def _this_release() -> dict[str, Any]:
    # Files don't change under a running process that matters (a deploy restarts it), and
    # hashing every RECORD and source file for each node statement would cost seconds.
    return _build(ROOT)


def release_manifest(root: Path | None = None) -> dict[str, Any]:
    """The manifest of this environment, with the project's source read from ``root``
    (default: the checkout this module runs from, computed once per process)."""
    if root is None:
        return copy.deepcopy(_this_release())
    return _build(Path(root))


@functools.cache
def _this_digest() -> str:
    return hashlib.sha256(canonical_json(_this_release())).hexdigest()


def release_digest(manifest: dict[str, Any] | None = None) -> str:
    """The hex SHA-256 of ``manifest``'s canonical JSON; of this release's by default."""
    if manifest is None:
        return _this_digest()
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The file form of a manifest: its canonical JSON and a newline."""
    return canonical_json(manifest) + b"\n"


def _record_problems(name: str, dist: metadata.Distribution) -> Iterable[str]:
    for entry in dist.files or ():
        if entry.hash is None:  # RECORD itself, and .pyc files the installer compiled
            continue
        path = Path(str(entry.locate()))
        if not path.is_file():
            yield f"{name}: {entry} is missing"
            continue
        if entry.hash.mode != "sha256":
            yield f"{name}: {entry} has a {entry.hash.mode} hash, not sha256"
            continue
        actual = base64.urlsafe_b64encode(_sha256_file(path).digest()).rstrip(b"=")
        if actual.decode("ascii") != entry.hash.value:
            yield f"{name}: {entry} differs from its RECORD hash"


def verify_installed(manifest: dict[str, Any] | None = None, root: Path | None = None) -> list[str]:
    """What no longer matches: each installed file against its RECORD hash, and this
    environment against ``manifest`` (missing, extra or changed distributions, source).

    Reads every installed file (seconds, gigabytes with torch): for ``sanctum
    release-manifest --verify``, not for a node's start."""
    problems: list[str] = []
    for name, dist in _installed():
        problems.extend(_record_problems(name, dist))
    if manifest is None:
        return problems
    current = _build(Path(root) if root is not None else ROOT)
    if manifest.get("format") != FORMAT:
        problems.append(f"the manifest's format is not {FORMAT}")
        return problems
    want = {d["name"]: d for d in manifest.get("distributions", [])}
    have = {d["name"]: d for d in current["distributions"]}
    for name in sorted(want.keys() - have.keys()):
        problems.append(f"{name}: in the manifest, not installed")
    for name in sorted(have.keys() - want.keys()):
        problems.append(f"{name}: installed, not in the manifest")
    for name in sorted(want.keys() & have.keys()):
        if want[name]["version"] != have[name]["version"]:
            problems.append(
                f"{name}: version {have[name]['version']}, the manifest has {want[name]['version']}"
            )
        elif want[name]["record_sha256"] != have[name]["record_sha256"]:
            problems.append(f"{name}: its RECORD differs from the manifest's")
    if manifest.get("source") != current["source"]:
        problems.append("the project's source or lock files differ from the manifest's")
    if manifest.get("python") != current["python"]:
        problems.append(f"Python {current['python']}, the manifest has {manifest.get('python')}")
    return problems
