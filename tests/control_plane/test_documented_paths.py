"""Every ``/api/...`` path the docs, the README and infra/ tell an operator to call is one
the control plane serves (gateway-provision.sh once printed ``/api/network/gateways/``)."""

from __future__ import annotations

import re

from django.urls import Resolver404, resolve

from tests.conftest import REPO

# At least one segment after /api/: "the API at /api/" names the prefix, not a call.
API_PATH = re.compile(r"/api/[A-Za-z0-9_<>{}-][A-Za-z0-9_<>.{}/-]*")
# What the texts write for an object's id: <id>, {id}, ID, RECORD_ID.
PLACEHOLDER = re.compile(r"<[a-z_]+>|\{[a-z_]+\}|\b[A-Z][A-Z_]*ID\b|\bID\b")


def _documented_paths() -> dict[str, str]:
    texts = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    texts += [p for p in (REPO / "infra").rglob("*") if p.is_file()]
    paths = {}
    for path in texts:
        for found in API_PATH.findall(path.read_text()):
            paths.setdefault(found.rstrip("."), str(path.relative_to(REPO)))
    return paths


def test_every_documented_api_path_resolves() -> None:
    paths = _documented_paths()
    assert "/api/gateways/" in paths and "/api/peers/<id>/ca/" in paths
    unknown = []
    for path, where in sorted(paths.items()):
        concrete = PLACEHOLDER.sub("1", path)
        try:
            resolve(concrete)
        except Resolver404:
            unknown.append(f"{where}: {path}")
    assert unknown == []
