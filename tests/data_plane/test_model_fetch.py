"""A node fetches a model pinned by source from an nginx artifact store on the storage
link, and loads it only if it is the pinned file (issue 19: "Models on the storage link").

Real parts: nginx serving a directory on loopback, a real node process, the bundled
model. Each refusal leaves the node serving its previous config, checked with that
config's key.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import management
from shared.config import ModelSpec, sign_bundle
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, wait_until
from tests.data_plane.artifact_store import NEEDS_NGINX, ArtifactStore, artifact_store  # noqa: F401
from tests.data_plane.test_config_apply import serving

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


def test_a_node_fetches_a_pinned_model_from_the_artifact_store_and_serves_it(
    node: Node, store: ArtifactStore, model_spec: ModelSpec
) -> None:
    node.start()
    assert models_dir(node) == []
    tenant = make_tenant("first", (DEFAULT_MODEL_NAME,))

    response = push(node, [by_source(model_spec, store.url("smollm2.gguf"))], [tenant])

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

    response = push(node, [by_source(model_spec, store.url("corrupted.gguf"))], [second])

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

    response = push(node, [by_source(model_spec, store.url("smollm2.gguf"), size=size)], [first])

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "model_hash_mismatch"
    assert models_dir(node) == []
    assert node.health()["config_version"] == 1
    assert serving(node, first.key)


def test_health_shows_a_fetch_in_progress_while_the_node_keeps_serving(
    node: Node, store: ArtifactStore, model_spec: ModelSpec
) -> None:
    """The fetch runs off the event loop: while it streams (slowed down by nginx's
    limit_rate) health answers with its progress and the old config serves chats."""
    first = started_serving(node, model_spec)
    pin = by_source(model_spec, store.url("smollm2.gguf", slow=True))
    # Signed here: the test's keyring is not for two threads at once.
    token, auth = sign_bundle(node.bundle([pin], [first]), node.cp_key), node.management_auth()
    answer: list[httpx.Response] = []
    pushing = threading.Thread(target=lambda: answer.append(node.put_config(token, auth)))
    pushing.start()
    try:
        fetching = wait_until(lambda: node.health()["model_fetches"], timeout=30, interval=0.05)
        assert fetching, "no fetch showed in health"
        (progress,) = fetching
        assert progress["name"] == DEFAULT_MODEL_NAME
        assert progress["sha256"] == model_spec.sha256
        assert progress["size"] == pin.size
        assert 0 <= progress["bytes_done"] < pin.size
        assert serving(node, first.key)
        later = node.health()["model_fetches"]
        assert later, "the fetch ended before the chat did: slow the store down more"
        assert later[0]["bytes_done"] > progress["bytes_done"]
    finally:
        pushing.join(120)
    assert answer and answer[0].status_code == 200, answer and answer[0].text
    assert node.health()["model_fetches"] == []
    assert models_dir(node) == [f"{model_spec.sha256}.gguf"]


def test_a_push_that_times_out_during_a_long_fetch_still_lands_and_its_retry_settles(
    node: Node, store: ArtifactStore, model_spec: ModelSpec
) -> None:
    """A multi-GB fetch outlasts the control plane's push timeout. The node finishes
    applying anyway, and the rollout's retry of the same release is told the node holds
    it (409 stale_version with current_version), which the rollout records as applied."""
    first = started_serving(node, model_spec)
    pin = by_source(model_spec, store.url("smollm2.gguf", slow=True))
    token = sign_bundle(node.bundle([pin], [first]), node.cp_key)

    with pytest.raises(httpx.TimeoutException):
        httpx.put(
            f"{node.management}{management.CONFIG_PATH}",
            content=token,
            headers={"Content-Type": management.JOSE},
            auth=node.management_auth(),
            timeout=1,
        )
    assert wait_until(lambda: node.health()["config_version"] == 2, timeout=60)
    retry = node.put_config(token)

    assert retry.status_code == 409
    assert (retry.json()["error"]["code"], retry.json()["current_version"]) == (
        management.STALE_VERSION,
        2,
    )
    assert models_dir(node) == [f"{model_spec.sha256}.gguf"]
