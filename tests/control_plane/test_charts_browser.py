"""The usage charts in a real browser: an admin sees every client's on the receipt list,
an auditor scoped to one client sees only that client's on the auditors' page.

With ``SANCTUM_DOC_IMAGES=1`` the charts are also saved as the PNGs docs/operations.md
shows (``docs/images/usage-*.png``): ``SANCTUM_DOC_IMAGES=1 pytest
tests/control_plane/test_charts_browser.py``.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO
from tests.control_plane.browser import chromium

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SEED = "from tests.control_plane.audit.usage_seed import seed; print(f'SEEDED={seed()}')"


def _log_in(page, url: str, username: str, password: str) -> None:
    page.goto(url)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def _series(page, chart: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#chart-{chart} g.legend-item", "items => items.map(g => g.dataset.series)"
    )


def test_usage_charts_in_the_browser_admin_and_scoped_auditor(control_plane_factory):
    cp = control_plane_factory()
    cp.manage("migrate", "-v0")
    printed = cp.manage("bootstrap_demo", "--no-rollout", "--no-auditor")
    assert int(cp.manage("shell", "-c", SEED)["SEEDED"]) > 100
    auditor = cp.manage("create_operator", "kpmg", "--role", "auditor", "--clients", "bank")
    cp.serve()
    images = REPO / "docs" / "images" if os.environ.get("SANCTUM_DOC_IMAGES") == "1" else None

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        _log_in(
            page,
            cp.admin_url,
            printed["SANCTUM_ADMIN_USER"],
            printed["SANCTUM_ADMIN_PASSWORD"],
        )
        page.goto(cp.admin_url + "audit/receipt/")
        tokens = page.locator("#chart-tokens")
        tokens.wait_for(state="visible")
        assert tokens.bounding_box()["height"] > 200
        assert _series(page, "tokens") == ["acme", "bank", "clinic"]  # demo: no receipts
        assert _series(page, "ttft") == ["p50", "p90", "p99"]
        assert page.locator("#chart-tokens rect.bar").count() == 3 * 14
        assert page.locator("#chart-ttft rect.bar").count() == 3 * 3  # 3 nodes
        if images:
            tokens.screenshot(path=images / "usage-tokens.png")
            page.locator("#chart-ttft").screenshot(path=images / "usage-ttft.png")

        page.context.clear_cookies()
        _log_in(page, cp.admin_url, "kpmg", auditor["SANCTUM_OPERATOR_PASSWORD"])
        page.goto(cp.admin_url.replace("/admin/", "/audit/"))
        requests = page.locator("#chart-requests")
        requests.wait_for(state="visible")
        assert _series(page, "requests") == ["bank"]
        assert "acme" not in page.inner_text("#usage-charts")
        if images:
            requests.screenshot(path=images / "usage-requests-scoped.png")
