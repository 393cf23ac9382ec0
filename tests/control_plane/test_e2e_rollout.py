"""End to end: the REST API, a real Celery worker over a real redis-server, and a real
data-plane process serving the bundled model to the ``openai`` SDK.

1. Create a client, issue a key and pin the model through the REST API; roll out; the
   key works. Revoke it and roll out; the same key now gets 401.
2. A node stopped during a rollout shows as failed with the reason, and beat catches it
   up when it is back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.keys import write_key_pair
from shared.models import DEFAULT_MODEL_NAME, bundled_gguf_path
from tests.conftest import wait_until
from tests.control_plane.processes import ControlPlane, DataPlaneNode

pytestmark = [pytest.mark.e2e, pytest.mark.model, pytest.mark.redis]


def _chat(node: DataPlaneNode, key: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{node.api_url}/v1", api_key=key, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def _refused(node: DataPlaneNode, key: str) -> bool:
    from openai import AuthenticationError

    try:
        _chat(node, key)
    except AuthenticationError as exc:
        return exc.status_code == 401
    return False


class Installation:
    """A control plane (gunicorn, worker, beat) and one node, wired through the API."""

    def __init__(self, cp: ControlPlane, tmp: Path) -> None:
        self.cp = cp
        cp.manage("migrate", "-v0")
        self.token = cp.manage("create_operator", "ops", "--role", "admin", "--token")[
            "SANCTUM_API_TOKEN"
        ]
        public_key = Path(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])
        node_key = write_key_pair(tmp / "node-keys", "node")
        self.node_dir = tmp / "node"
        self.node = DataPlaneNode(self.node_dir, "node-1", public_key, node_key)
        self.node.start()
        cp.serve()
        cp.worker()
        cp.beat()
        self.api = cp.api(self.token)
        created = self.api.post(
            "/nodes/",
            json={
                "name": self.node.name,
                "management_url": self.node.management_url,
                "public_key": node_key.with_suffix(".pub").read_text(),
            },
        )
        assert created.status_code == 201, created.text
        self.node_id = created.json()["id"]

    def node_status(self) -> dict:
        return self.api.get(f"/nodes/{self.node_id}/").json()

    def roll_out(self) -> int:
        response = self.api.post("/releases/", json={"nodes": [self.node.name]})
        assert response.status_code == 202, response.text
        return response.json()[0]["version"]

    def wait_in_sync(self, version: int, timeout: float = 120) -> dict:
        status = wait_until(
            lambda: (
                (s := self.node_status())["rollout"] == "in_sync"
                and s["state"]["applied_version"] >= version
                and s
            ),
            timeout=timeout,
        )
        assert status, self.node_status()
        return status

    def close(self) -> None:
        self.api.close()
        self.node.stop()
        self.cp.stop()


@pytest.fixture
def installation(redis_server, control_plane_factory, tmp_path):
    cp = control_plane_factory(
        redis_server.url,
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="1",
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="1",
    )
    inst = Installation(cp, tmp_path)
    yield inst
    inst.close()


def _set_up_client(api) -> tuple[str, int]:
    assert api.post("/clients/", json={"id": "acme", "name": "Acme Law"}).status_code == 201
    issued = api.post("/api-keys/", json={"client": "acme", "name": "e2e"})
    assert issued.status_code == 201, issued.text
    pinned = api.post(
        "/model-pins/",
        json={
            "name": DEFAULT_MODEL_NAME,
            "version": "q4_1",
            "path": str(bundled_gguf_path()),
            "clients": ["acme"],
        },
    )
    assert pinned.status_code == 201, pinned.text
    pin_id = pinned.json()["id"]
    verified = wait_until(
        lambda: api.get(f"/model-pins/{pin_id}/").json()["hash_status"] == "verified",
        timeout=120,
    )
    assert verified, api.get(f"/model-pins/{pin_id}/").json()
    return issued.json()["key"], issued.json()["id"]


def test_a_key_issued_through_the_api_works_until_revoked(installation):
    api, node = installation.api, installation.node
    key, key_id = _set_up_client(api)

    installation.wait_in_sync(installation.roll_out())
    assert _chat(node, key)

    assert api.post(f"/api-keys/{key_id}/revoke/", json={"reason": "e2e"}).status_code == 200
    installation.wait_in_sync(installation.roll_out())
    assert _refused(node, key)


def test_a_node_stopped_during_a_rollout_catches_up_when_it_returns(installation):
    api, node = installation.api, installation.node
    key, key_id = _set_up_client(api)
    installation.wait_in_sync(installation.roll_out())

    node.stop()
    assert api.post(f"/api-keys/{key_id}/revoke/").status_code == 200
    replacement = api.post("/api-keys/", json={"client": "acme"}).json()["key"]
    version = installation.roll_out()
    failed = wait_until(
        lambda: (s := installation.node_status())["latest_release"]["last_error"] and s,
        timeout=60,
    )
    assert failed["latest_release"]["version"] == version
    assert failed["rollout"] in ("failed", "out_of_date")
    assert "node unreachable" in failed["latest_release"]["last_error"]

    node.start()  # same ports; it comes back holding the previous version from its disk

    installation.wait_in_sync(version)
    # The retried push can land before beat's next health poll: wait for that poll.
    healthy = wait_until(lambda: installation.node_status()["state"]["health_status"] == "ok")
    assert healthy, installation.node_status()
    assert _chat(node, replacement)
    assert _refused(node, key)
