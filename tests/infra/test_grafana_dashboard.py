"""The Grafana dashboard in infra/grafana: every query is valid PromQL (promtool, from
Debian's prometheus package) and asks only for series the planes export, as the
catalogue in docs/operations.md lists them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

DASHBOARD = REPO / "infra" / "grafana" / "sanctum-dashboard.json"
CATALOGUE = REPO / "docs" / "operations.md"
SERIES = re.compile(r"\bsanctum_[a-z_]+")
# What a histogram or a counter adds to the name the catalogue gives.
SUFFIXES = ("_bucket", "_count", "_sum")


def expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (make setup installs the prometheus package)")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(expressions())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_series_it_asks_for_is_in_the_catalogue() -> None:
    documented = set(SERIES.findall(CATALOGUE.read_text()))
    asked = {name for expr in expressions() for name in SERIES.findall(expr)}
    assert asked, "no sanctum series in the dashboard"
    missing = set()
    for name in asked:
        base = name
        for suffix in SUFFIXES:
            base = base.removesuffix(suffix)
        if name not in documented and base not in documented:
            missing.add(name)
    assert not missing, f"not in docs/operations.md's catalogue: {sorted(missing)}"
