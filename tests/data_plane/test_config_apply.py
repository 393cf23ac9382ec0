"""Config is applied only when signed by the control plane, newer, and pinning real files.

Every refusal leaves the previous bundle serving, which each test checks by using the
key that bundle holds.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import pytest

from shared.config import ModelSpec, sign_bundle
from shared.keys import generate_private_key
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, make_tenant

pytestmark = pytest.mark.model


def serving(node: Node, key: str) -> bool:
    """The node answers a chat with this key."""
    r = httpx.post(
        f"{node.api}/v1/chat/completions",
        json={
            "model": DEFAULT_MODEL_NAME,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    return r.status_code == 200


@pytest.fixture
def running(fresh_node: Node, model_spec: ModelSpec) -> tuple[Node, str]:
    """A fresh node serving version 1 with one tenant; returns (node, that tenant's key)."""
    fresh_node.start()
    tenant = make_tenant("first", (DEFAULT_MODEL_NAME,))
    fresh_node.push([model_spec], [tenant])
    assert serving(fresh_node, tenant.key)
    return fresh_node, tenant.key


def health(node: Node) -> dict:
    return httpx.get(f"{node.management}/internal/health", timeout=60).json()


def refused(node: Node, token: str, status: int, code: str) -> None:
    r = node.put_config(token)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_a_node_without_config_knows_no_key(fresh_node: Node) -> None:
    fresh_node.start()
    assert health(fresh_node)["config_version"] is None
    assert not serving(fresh_node, make_tenant("x", ()).key)


def test_new_version_replaces_the_old(running: tuple[Node, str], model_spec: ModelSpec) -> None:
    node, old_key = running
    tenant = make_tenant("second", (DEFAULT_MODEL_NAME,))
    node.push([model_spec], [tenant])
    assert health(node)["config_version"] == 2
    assert serving(node, tenant.key)
    assert not serving(node, old_key)


def test_tampered_bundle_is_refused(running: tuple[Node, str], model_spec: ModelSpec) -> None:
    node, key = running
    token = sign_bundle(
        node.bundle([model_spec], [make_tenant("evil", (DEFAULT_MODEL_NAME,))]), node.cp_key
    )
    header, payload, signature = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    doc["clients"][0]["id"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    refused(node, f"{header}.{forged}.{signature}", 401, "bad_signature")
    assert health(node)["config_version"] == 1
    assert serving(node, key)


def test_bundle_signed_by_another_key_is_refused(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, key = running
    tenant = make_tenant("other", (DEFAULT_MODEL_NAME,))
    token = sign_bundle(node.bundle([model_spec], [tenant]), generate_private_key())
    refused(node, token, 401, "bad_signature")
    assert serving(node, key)
    assert not serving(node, tenant.key)


@pytest.mark.parametrize("version", [1, 0])
def test_replayed_or_older_version_is_refused(
    running: tuple[Node, str], model_spec: ModelSpec, version: int
) -> None:
    node, key = running
    tenant = make_tenant("replay", (DEFAULT_MODEL_NAME,))
    if version == 0:
        # pydantic refuses version 0 outright: take a real older bundle instead
        node.push([model_spec], [make_tenant("v2", (DEFAULT_MODEL_NAME,))])
        node.push([model_spec], [make_tenant("v3", (DEFAULT_MODEL_NAME,))])
        version = 2
        key = None
    token = sign_bundle(node.bundle([model_spec], [tenant], version=version), node.cp_key)
    r = node.put_config(token)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "stale_version"
    assert r.json()["current_version"] == health(node)["config_version"]
    assert not serving(node, tenant.key)
    if key:
        assert serving(node, key)


def test_same_bundle_twice_is_a_replay(running: tuple[Node, str], model_spec: ModelSpec) -> None:
    node, _ = running
    tenant = make_tenant("twice", (DEFAULT_MODEL_NAME,))
    token = sign_bundle(node.bundle([model_spec], [tenant]), node.cp_key)
    assert node.put_config(token).status_code == 200
    refused(node, token, 409, "stale_version")


def test_pin_with_wrong_hash_is_refused(
    running: tuple[Node, str], model_spec: ModelSpec, tmp_path: Path
) -> None:
    node, key = running
    wrong = model_spec.model_copy(update={"sha256": "0" * 64})
    refused(node, sign_bundle(node.bundle([wrong], []), node.cp_key), 422, "model_hash_mismatch")
    # a file that differs from the pinned one by a single byte
    copy = tmp_path / "model.gguf"
    shutil.copyfile(model_spec.path, copy)
    with open(copy, "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    changed = model_spec.model_copy(update={"path": str(copy)})
    refused(node, sign_bundle(node.bundle([changed], []), node.cp_key), 422, "model_hash_mismatch")
    missing = model_spec.model_copy(update={"path": str(tmp_path / "absent.gguf")})
    refused(node, sign_bundle(node.bundle([missing], []), node.cp_key), 422, "model_unavailable")
    assert health(node)["config_version"] == 1
    assert serving(node, key)


def test_bundle_for_another_node_is_refused(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, key = running
    token = sign_bundle(node.bundle([model_spec], [], node="node-2"), node.cp_key)
    refused(node, token, 409, "wrong_node")
    assert serving(node, key)


def test_garbage_is_refused(running: tuple[Node, str]) -> None:
    node, key = running
    refused(node, "not a jws", 401, "bad_signature")
    r = httpx.put(f"{node.management}/internal/config", content=b"\xff\xfe", timeout=60)
    assert r.status_code == 400
    assert serving(node, key)


def test_last_good_config_survives_a_restart(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, key = running
    bad = sign_bundle(node.bundle([model_spec], [], version=99), generate_private_key())
    assert node.put_config(bad).status_code == 401
    node.stop()
    node.start()
    assert health(node)["config_version"] == 1
    assert serving(node, key)


def test_saved_config_changed_on_disk_is_not_trusted(running: tuple[Node, str]) -> None:
    node, key = running
    node.stop()
    saved = node.data_dir / "state" / "config.jws"
    header, payload, signature = saved.read_text().split(".")
    saved.write_text(f"{header}.{payload[:-2]}AA.{signature}")
    node.start()
    assert health(node)["config_version"] is None
    assert not serving(node, key)
