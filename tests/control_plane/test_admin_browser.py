"""The admin console in a real browser: log in with the printed credentials, issue a key
through the admin action, and see it exactly once."""

from __future__ import annotations

import re

import pytest

from tests.control_plane.browser import chromium

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

KEY_RE = re.compile(r"sk-snc-[A-Za-z0-9]{8}-[A-Za-z0-9_-]{32,}")


def test_an_admin_issues_a_key_in_the_browser_and_sees_it_once(control_plane_factory):
    cp = control_plane_factory()
    cp.manage("migrate", "-v0")
    printed = cp.manage("bootstrap_demo", "--no-rollout")
    cp.serve()

    with chromium() as browser:
        page = browser.new_page()
        page.goto(cp.admin_url)
        page.fill("#id_username", printed["SANCTUM_ADMIN_USER"])
        page.fill("#id_password", printed["SANCTUM_ADMIN_PASSWORD"])
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")

        page.goto(cp.admin_url + "clients/client/")
        page.check("input[name=_selected_action]")  # the demo client
        page.select_option("select[name=action]", "issue_key")
        page.click("button[name=index]")
        page.wait_for_selector("code.issued-api-key")

        shown = KEY_RE.findall(page.content())
        assert len(shown) == 1
        key = shown[0]
        assert page.inner_text("code.issued-api-key") == key

        seen_again = []
        for path in ("clients/apikey/", "clients/client/", "changes/objectchange/", ""):
            page.goto(cp.admin_url + path)
            if key in page.content():
                seen_again.append(path)
        assert seen_again == []
        prefix = key.split("-")[2]
        page.goto(cp.admin_url + "clients/apikey/")
        assert prefix in page.content()
