"""The rollout pages every kind of target shares (nodes stand in): progress columns,
read-only releases, and "Roll out now"."""

from __future__ import annotations

import pytest
from django.test import Client as BrowserClient

from control_plane.core.rollout import roll_out
from control_plane.fleet.rollout import NODES

pytestmark = pytest.mark.django_db


def test_the_node_rollout_pages_show_progress_and_roll_out(
    admin_user, fake_node_factory, on_commit
):
    fake, node = fake_node_factory("n1")
    with on_commit():
        (release,) = roll_out(NODES, [node])
    fake.held_version = None  # lost its config: behind its latest release
    fake.refuse_with = (
        422,
        {"error": {"message": "no such model", "type": "x", "param": None, "code": "nope"}},
    )
    browser = BrowserClient()
    browser.force_login(admin_user)

    in_sync = browser.get("/admin/fleet/node/").content.decode()
    with on_commit():
        done = browser.post(
            "/admin/fleet/node/",
            {"action": "roll_out_now", "_selected_action": [node.pk]},
            follow=True,
        ).content.decode()
    rejected = browser.get("/admin/fleet/node/").content.decode()
    detail = browser.get(f"/admin/fleet/configrelease/{release.pk}/change/")

    assert "In sync" in in_sync
    assert "Released n1 v2. The rollout column shows each node&#x27;s progress." in done
    assert "Rejected (not retried)" in rejected and "HTTP 422 nope: no such model" in rejected
    assert detail.status_code == 200 and release.document_sha256 in detail.content.decode()
    assert b"Save" not in detail.content  # releases are read-only
