"""A client's rate limit across two real nodes: the control plane gives each node its
share in the signed config it rolls out, and each node enforces its share alone
(docs/security.md). Together they let the client make exactly its limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.clients.services import issue_api_key
from control_plane.core.choices import ReleaseStatus
from control_plane.core.rollout import roll_out
from control_plane.core.signing import publish
from control_plane.fleet.rollout import NODES
from shared.keys import write_key_pair
from shared.models import DEFAULT_MODEL_NAME, bundled_gguf_path
from tests.control_plane.factories import ClientFactory, ModelPinFactory, NodeFactory
from tests.control_plane.processes import DataPlaneNode

pytestmark = [pytest.mark.django_db, pytest.mark.model, pytest.mark.e2e]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[list[DataPlaneNode]]:
    cp_public = publish()  # the key set the nodes trust
    nodes = []
    try:
        for name in ("n1", "n2"):
            key = write_key_pair(tmp_path / f"{name}-keys", "node")
            node = DataPlaneNode(tmp_path / name, name, cp_public, key)
            node.env["SANCTUM_DP_RETRIEVAL__ENABLED"] = "false"
            nodes.append(node.start())
            NodeFactory(
                name=name,
                management_url=node.management_url,
                public_key=key.with_suffix(".pub").read_text(),
            )
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_each_node_enforces_its_share_and_together_they_allow_the_limit(two_nodes, on_commit):
    client = ClientFactory(slug="acme", requests_per_minute=5, max_sessions=10)
    key = issue_api_key(client).secret
    ModelPinFactory(name=DEFAULT_MODEL_NAME, path=str(bundled_gguf_path()), clients=[client])
    with on_commit():
        releases = roll_out(NODES)
    for release in releases:
        release.refresh_from_db()
        assert release.status == ReleaseStatus.APPLIED, release.last_error

    allowed: dict[str, int] = {}
    for node in two_nodes:
        with httpx.Client(
            base_url=f"{node.api_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as c:
            statuses = []
            for _ in range(5):
                r = c.post("/sessions", json={"model": DEFAULT_MODEL_NAME})
                statuses.append(r.status_code)
                if r.status_code == 201:
                    limit = r.headers["x-ratelimit-limit-requests"]
                    assert c.delete(f"/sessions/{r.json()['id']}").status_code == 200
                else:
                    assert r.status_code == 429 and r.headers["x-should-retry"] == "true"
            allowed[node.name] = statuses.count(201)
            assert int(limit) == allowed[node.name]  # the node's own share, as it says
            assert statuses == [201] * allowed[node.name] + [429] * (5 - allowed[node.name])
    assert allowed == {"n1": 3, "n2": 2}
    assert sum(allowed.values()) == client.requests_per_minute
