"""A node fetches a model pinned by source from an nginx artifact store on the storage
link, and loads it only if it is the pinned file (issue 19: "Models on the storage link").
A push never waits for a fetch: it is refused (503 ``model_fetch_pending``) while the
file is on its way, so a slow store can't hold up the pushes after it (a revoked key).

Real parts: nginx serving a directory on loopback, a real node process, the bundled
model. Each refusal leaves the node serving its previous config, checked with that
config's key.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import ModelSpec, sign_bundle
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, wait_until
from tests.data_plane.artifact_store import NEEDS_NGINX, ArtifactStore, artifact_store  # noqa: F401
from tests.data_plane.test_config_apply import serving
from tests.data_plane.test_model_switch import second_version, settled_staged

pytestmark = [pytest.mark.model, NEEDS_NGINX]


@pytest.fixture(scope="module")
def store(artifact_store: ArtifactStore, model_spec: ModelSpec) -> ArtifactStore:  # noqa: F811
    """The store serving the bundled model as ``smollm2.gguf`` and a copy of it with one
    byte changed as ``corrupted.gguf``."""
    assert model_spec.path is not None
    os.symlink(model_spec.path, artifact_store.root / "smollm2.gguf")
    corrupted = artifact_store.root / "corrupted.gguf"
    shutil.copyfile(model_spec.path, corrupted)
    with open(corrupted, "r+b") as fh:
        fh.seek(os.path.getsize(corrupted) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return artifact_store


def by_source(model_spec: ModelSpec, source: str, **over: Any) -> ModelSpec:
    """The bundled model's pin, naming its file by sha256, size and source."""
    assert model_spec.path is not None
    fields = model_spec.model_dump(exclude={"path"})
    fields.update(source=source, size=os.path.getsize(model_spec.path))
    fields.update(over)
    return ModelSpec.model_validate(fields)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    from tests.conftest import new_node

    n = new_node(
        tmp_path,
        SANCTUM_DP_MODELS_DIR=str(tmp_path / "models"),
        SANCTUM_DP_RETRIEVAL__ENABLED="false",
    )
    yield n
    n.stop()


def models_dir(node: Node) -> list[str]:
    """Every file in the node's models directory, temp files included."""
    folder = Path(node.env["SANCTUM_DP_MODELS_DIR"])
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def push(node: Node, models: list[ModelSpec], tenants: list[Tenant]) -> httpx.Response:
    return node.put_config(sign_bundle(node.bundle(models, tenants), node.cp_key))


def started_serving(node: Node, model_spec: ModelSpec) -> Tenant:
    """Start ``node`` with version 1 pinning the bundled model by path; its tenant."""
    node.start()
    tenant = make_tenant("first", (DEFAULT_MODEL_NAME,))
    assert push(node, [model_spec], [tenant]).status_code == 200
    return tenant


def pending(response: httpx.Response) -> bool:
    """The node refused a push while the file it needs is fetched (the rollout retries)."""
    return response.status_code == 503 and response.json()["error"]["code"] == "model_fetch_pending"


def push_until_fetched(
    node: Node, models: list[ModelSpec], tenants: list[Tenant]
) -> httpx.Response:
    """Push as the rollout does: the first push starts the fetch and is answered
    ``model_fetch_pending``; pushed again until the node answers something else."""
    first = push(node, models, tenants)
    assert pending(first), first.text
    assert first.headers["Retry-After"] == "30"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        response = push(node, models, tenants)
        if not pending(response):
            return response
    raise AssertionError("the fetch did not end")


def unauthorized(node: Node, key: str) -> bool:
    r = httpx.post(
        f"{node.api}/v1/chat/completions",
        json={"model": DEFAULT_MODEL_NAME, "max_tokens": 2, "messages": []},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    return r.status_code == 401


def test_a_node_fetches_a_pinned_model_from_the_artifact_store_and_serves_it(
    node: Node, store: ArtifactStore, model_spec: ModelSpec
) -> None:
    node.start()
    assert models_dir(node) == []
    tenant = make_tenant("first", (DEFAULT_MODEL_NAME,))

    response = push_until_fetched(
        node, [by_source(model_spec, store.url("smollm2.gguf"))], [tenant]
    )

    assert response.status_code == 200, response.text
    assert models_dir(node) == [f"{model_spec.sha256}.gguf"]
    assert serving(node, tenant.key)
    health = node.health()
    assert [m["sha256"] for m in health["models"]] == [model_spec.sha256]
    assert health["model_fetches"] == []
    # Pushed again (a new version, the same pin), the file is there: no second fetch.
    assert push(node, [by_source(model_spec, store.url("smollm2.gguf"))], [tenant]).is_success
    assert len(store.fetches("/smollm2.gguf")) == 1


def test_a_corrupted_file_is_refused_and_the_old_config_keeps_serving(
    node: Node, store: ArtifactStore, model_spec: ModelSpec
) -> None:
    first = started_serving(node, model_spec)
    second = make_tenant("second", (DEFAULT_MODEL_NAME,))

    response = push_until_fetched(
        node, [by_source(model_spec, store.url("corrupted.gguf"))], [second]
    )

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "model_hash_mismatch"
    assert DEFAULT_MODEL_NAME in error["message"]
    assert models_dir(node) == []  # not placed, and no temp file left behind
    assert node.health()["config_version"] == 1
    assert serving(node, first.key)
    assert not serving(node, second.key)


@pytest.mark.parametrize("off_by", [1, -1], ids=["truncated", "oversized"])
def test_a_body_shorter_or_longer_than_the_pin_is_refused(
    node: Node, store: ArtifactStore, model_spec: ModelSpec, off_by: int
) -> None:
    """The store serves the right bytes but the pin says one byte more (the body is
    truncated) or one less (the body runs over): either way nothing is placed."""
    first = started_serving(node, model_spec)
    assert model_spec.path is not None
    size = os.path.getsize(model_spec.path) + off_by

    response = push_until_fetched(
        node, [by_source(model_spec, store.url("smollm2.gguf"), size=size)], [first]
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "model_hash_mismatch"
    assert models_dir(node) == []
    assert node.health()["config_version"] == 1
    assert serving(node, first.key)


def test_a_key_revoked_while_a_model_file_is_fetched_slowly_stops_working_at_once(
    node: Node, store: ArtifactStore, model_spec: ModelSpec
) -> None:
    """The security review's case: a push that needs a file from a slow store (nginx's
    limit_rate) is refused at once, the fetch goes on in the background, and a push
    that only revokes a key meanwhile applies at once. Once the file is in place, the
    bundle that pins it applies."""
    first = started_serving(node, model_spec)
    pin = by_source(model_spec, store.url("smollm2.gguf", slow=True))

    refused = push(node, [pin], [first])

    assert pending(refused), refused.text
    assert refused.headers["Retry-After"] == "30"
    fetching = wait_until(lambda: node.health()["model_fetches"], timeout=30, interval=0.05)
    assert fetching, "no fetch showed in health"
    (progress,) = fetching
    assert (progress["name"], progress["sha256"]) == (DEFAULT_MODEL_NAME, model_spec.sha256)
    assert 0 <= progress["bytes_done"] < progress["size"] == pin.size
    assert node.health()["config_version"] == 1

    # The client's key is revoked (it gets a new one): a bundle without the old key.
    renewed = make_tenant("first", (DEFAULT_MODEL_NAME,))
    revoked = push(node, [model_spec], [renewed])

    assert revoked.status_code == 200, revoked.text
    assert node.health()["model_fetches"], "the fetch ended first: slow the store down more"
    assert unauthorized(node, first.key)
    assert serving(node, renewed.key)

    # The rollout's retry once the file is in place: applied, from the file fetched once.
    placed = [f"{model_spec.sha256}.gguf"]
    assert wait_until(lambda: models_dir(node) == placed and not node.health()["model_fetches"])
    applied = push(node, [pin], [renewed])
    assert applied.status_code == 200, applied.text
    assert models_dir(node) == [f"{model_spec.sha256}.gguf"]
    assert len(store.fetches("/slow/smollm2.gguf")) == 1
    assert serving(node, renewed.key)
    assert unauthorized(node, first.key)


def test_a_staged_model_by_source_is_fetched_in_the_background(
    node: Node, store: ArtifactStore, model_spec: ModelSpec, tmp_path: Path
) -> None:
    """Staging a new version by source answers the push at once: health shows it
    ``fetching`` (its progress in model_fetches) while another push applies, then
    ``loaded`` (the node has room for both)."""
    first = started_serving(node, model_spec)
    v2 = second_version(model_spec, tmp_path)
    assert v2.path is not None
    os.symlink(v2.path, store.root / "staged-v2.gguf")
    staged = by_source(v2, store.url("staged-v2.gguf", slow=True), size=os.path.getsize(v2.path))

    response = node.put_config(
        sign_bundle(node.bundle([model_spec], [first], staged=(staged,)), node.cp_key)
    )

    assert response.status_code == 200, response.text
    (entry,) = node.health()["staged"]
    assert (entry["version"], entry["state"]) == ("v2", "fetching")
    # Another push meanwhile (a key revoked) applies at once, the staging goes on.
    renewed = make_tenant("first", (DEFAULT_MODEL_NAME,))
    again = node.put_config(
        sign_bundle(node.bundle([model_spec], [renewed], staged=(staged,)), node.cp_key)
    )
    assert again.status_code == 200, again.text
    health = node.health()
    assert [f["sha256"] for f in health["model_fetches"]] == [v2.sha256], (
        "the fetch ended first: slow the store down more"
    )
    assert [s["state"] for s in health["staged"]] == ["fetching"]
    assert unauthorized(node, first.key)

    (prepared,) = settled_staged(node)
    assert (prepared["version"], prepared["state"]) == ("v2", "loaded"), prepared
    assert node.health()["model_fetches"] == []
    assert sorted(models_dir(node)) == [f"{v2.sha256}.gguf"]
    assert len(store.fetches("/slow/staged-v2.gguf")) == 1
    assert serving(node, renewed.key)
