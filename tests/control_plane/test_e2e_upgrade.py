"""End to end: a model upgrade and its rollback with no gap, through the REST API, a real
Celery worker and beat over a real redis-server, and a real data-plane node serving the
bundled model to a client that calls it in a loop the whole time.

The new version is a copy of the bundled GGUF with bytes appended after its end (llama.cpp
loads it the same; its sha256 differs), so each call's usage record says which version
answered it. Pinned with ``supersede``, it is staged on the node ahead (the node reports
it ready), goes live when it is, and the rollback returns to the old file:

- on a node with room for both, no call fails at any point;
- on a node with room for one, calls made while the old version drains and the new one
  loads get the documented 503 ``model_switching`` with ``Retry-After`` (the client
  waits and calls again), and nothing else fails.

In both, every config release made for the node names the model.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import file_sha256
from shared.keys import load_public_key, write_key_pair
from shared.models import DEFAULT_MODEL_NAME, bundled_gguf_path
from shared.usage import open_usage_record
from tests.conftest import wait_until
from tests.control_plane.processes import ControlPlane, DataPlaneNode

pytestmark = [pytest.mark.e2e, pytest.mark.model, pytest.mark.redis]

MODEL = DEFAULT_MODEL_NAME


@dataclass
class Caller:
    """A client calling the model in a loop (a streamed one-shot chat each time) until
    stopped; records what each call got: the sha256 of the model that answered (from
    its usage record), "switching" (503 model_switching: it waited Retry-After and
    called again), or what went wrong."""

    api_url: str
    key: str
    node_key: Any
    outcomes: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def call(self, client: httpx.Client) -> str:
        events: list[dict[str, Any]] = []
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "max_tokens": 4,
                "stream": True,
                "messages": [{"role": "user", "content": "Say hello."}],
            },
        ) as response:
            if response.status_code != 200:
                response.read()
                error = response.json().get("error", {})
                if response.status_code == 503 and error.get("code") == "model_switching":
                    time.sleep(int(response.headers["Retry-After"]))  # as a client would
                    return "switching"
                return f"HTTP {response.status_code} {error.get('code')}"
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
        last = events[-1] if events else {}
        if "error" in last or "sanctum" not in last:
            return f"stream ended with {last.get('error', {}).get('code')}"
        record = open_usage_record(last["sanctum"]["usage_record"], {"node-1": self.node_key})
        return record.model_sha256

    def run(self) -> None:
        with httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120
        ) as client:
            for _ in range(100_000):  # bounded; stopped long before
                if self.stop.is_set():
                    return
                try:
                    self.outcomes.append(self.call(client))
                except httpx.HTTPError as exc:
                    self.outcomes.append(f"{type(exc).__name__}")

    def served(self, sha256: str, after: int = 0) -> bool:
        return sha256 in self.outcomes[after:]


class Upgrade:
    """A control plane (gunicorn, worker, beat polling health every second), one node
    (room for ``max_models``, or no limit) and a client with the model pinned."""

    def __init__(self, cp: ControlPlane, tmp: Path, max_models: int | None) -> None:
        self.cp = cp
        self.tmp = tmp
        cp.manage("migrate", "-v0")
        token = cp.manage("create_operator", "ops", "--role", "admin", "--token")[
            "SANCTUM_API_TOKEN"
        ]
        trust = Path(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])
        node_key = write_key_pair(tmp / "node-keys", "node")
        self.node_public = load_public_key(node_key.with_suffix(".pub"))
        self.node = DataPlaneNode(tmp / "node", "node-1", trust, node_key)
        self.node.env["SANCTUM_DP_RETRIEVAL__ENABLED"] = "false"
        if max_models is not None:
            self.node.env["SANCTUM_DP_ENGINE__MAX_LOADED_MODELS"] = str(max_models)
        self.node.start()
        cp.serve()
        cp.worker()
        cp.beat()
        self.api = cp.api(token)
        created = self.api.post(
            "/nodes/",
            json={
                "name": self.node.name,
                "management_url": self.node.management_url,
                "public_key": node_key.with_suffix(".pub").read_text(),
            },
        )
        assert created.status_code == 201, created.text
        assert self.api.post("/clients/", json={"id": "acme", "name": "Acme"}).status_code == 201
        issued = self.api.post("/api-keys/", json={"client": "acme", "name": "e2e"})
        assert issued.status_code == 201, issued.text
        self.key = issued.json()["key"]
        self.v1 = self.pin("v1", bundled_gguf_path(), clients=["acme"])
        # The pin's commit released the bundle to the node; wait until it serves.
        assert wait_until(lambda: self.chat_status() == 200, timeout=180), self.node_status()

    def pin(self, version: str, path: Path, **extra: Any) -> dict[str, Any]:
        made = self.api.post(
            "/model-pins/", json={"name": MODEL, "version": version, "path": str(path), **extra}
        )
        assert made.status_code == 201, made.text
        pin_id = made.json()["id"]
        verified = wait_until(
            lambda: (
                (p := self.api.get(f"/model-pins/{pin_id}/").json())["hash_status"] == "verified"
                and p
            ),
            timeout=180,
        )
        assert verified, self.api.get(f"/model-pins/{pin_id}/").json()
        return dict(verified)

    def new_version(self) -> Path:
        copy = self.tmp / "model-v2.gguf"
        shutil.copyfile(bundled_gguf_path(), copy)
        with open(copy, "ab") as fh:
            fh.write(b"\0" * 64 + b"sanctum e2e: version 2")
        return copy

    def chat_status(self) -> int:
        response = httpx.post(
            f"{self.node.api_url}/v1/chat/completions",
            json={"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=120,
        )
        return response.status_code

    def node_status(self) -> dict[str, Any]:
        return dict(self.api.get("/nodes/").json()["results"][0])

    def releases(self) -> list[tuple[int, list[tuple[str, str]], list[tuple[str, str]]]]:
        """Every config release made for the node: (version, models, staged), each model
        as (name, sha256), read from the control plane's database."""
        db = sqlite3.connect(self.cp.data_dir / "control-plane.sqlite3")
        try:
            rows = db.execute(
                "SELECT version, document FROM fleet_configrelease ORDER BY version"
            ).fetchall()
        finally:
            db.close()
        out = []
        for version, document in rows:
            doc = json.loads(document)
            models = [(m["name"], m["sha256"]) for m in doc["models"]]
            staged = [(m["name"], m["sha256"]) for m in doc.get("staged", [])]
            out.append((version, models, staged))
        return out

    def close(self) -> None:
        self.api.close()
        self.node.stop()
        self.cp.stop()


@pytest.fixture(params=[None, 1], ids=["room-for-both", "room-for-one"])
def upgrade(request, redis_server, control_plane_factory, tmp_path):
    cp = control_plane_factory(
        redis_server.url,
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="1",
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="1",
    )
    world = Upgrade(cp, tmp_path, request.param)
    yield world
    world.close()


def _runs(outcomes: list[str]) -> list[str]:
    """Consecutive equal outcomes as one."""
    return [o for i, o in enumerate(outcomes) if i == 0 or outcomes[i - 1] != o]


def test_an_upgrade_and_its_rollback_leave_no_gap(upgrade: Upgrade, request) -> None:
    room_for_both = "room-for-both" in request.node.callspec.id
    v1_sha = upgrade.v1["sha256"]
    v2_path = upgrade.new_version()
    v2_sha = file_sha256(str(v2_path))
    caller = Caller(upgrade.node.api_url, upgrade.key, upgrade.node_public)
    thread = threading.Thread(target=caller.run)
    thread.start()
    try:
        assert wait_until(lambda: caller.served(v1_sha), timeout=120), caller.outcomes

        v2 = upgrade.pin("v2", v2_path, supersede=True)
        live = wait_until(
            lambda: upgrade.api.get(f"/model-pins/{v2['id']}/").json()["enabled"], timeout=300
        )
        assert live, upgrade.api.get(f"/model-pins/{v2['id']}/").json()
        assert wait_until(lambda: caller.served(v2_sha), timeout=300), caller.outcomes[-20:]

        switched = len(caller.outcomes)
        back = upgrade.api.post(f"/model-pins/{v2['id']}/rollback/")
        assert back.status_code == 200, back.text
        assert back.json()["sha256"] == v1_sha
        assert wait_until(lambda: caller.served(v1_sha, after=switched), timeout=300), (
            caller.outcomes[-20:]
        )
    finally:
        caller.stop.set()
        thread.join(timeout=180)
    assert not thread.is_alive()

    # What the client saw: the old version, the new one, the old one again, and
    # nothing else, but for the documented answer while a node with no room switches.
    allowed = {v1_sha, v2_sha} if room_for_both else {v1_sha, v2_sha, "switching"}
    assert set(caller.outcomes) <= allowed, [o for o in caller.outcomes if o not in allowed]
    assert [o for o in _runs(caller.outcomes) if o != "switching"] == [v1_sha, v2_sha, v1_sha]

    # Every release made for the node since the model was first pinned names it (those
    # before held the client and its key only); the new version was staged on it
    # before a release served it.
    releases = upgrade.releases()
    first = next(i for i, (_, models, _) in enumerate(releases) if models)
    pinned = releases[first:]
    assert len(pinned) >= 4  # v1; v2 staged; v2 live; v1 again
    assert all(MODEL in [name for name, _ in models] for _, models, _ in pinned)
    staged_at = min(v for v, _, staged in releases if (MODEL, v2_sha) in staged)
    served_at = min(v for v, models, _ in releases if (MODEL, v2_sha) in models)
    assert staged_at < served_at
