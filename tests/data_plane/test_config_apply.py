"""Config is applied only when pushed by a signed management request for this node,
signed by a trusted config key, unexpired, above the version floor, and pinning real
files.

Every refusal leaves the previous bundle serving, which each test checks by using the
key that bundle holds.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared import envelope
from shared.config import ModelSpec, PoolSpec, sign_bundle
from shared.keys import generate_private_key
from shared.management import CONFIG_PATH, HEALTH_PATH, JOSE
from shared.models import DEFAULT_MODEL_NAME
from shared.signed_request import SignedRequestAuth, SignedRequestError, authorization, open_answer
from shared.trust import MANAGEMENT
from shared.usage import USAGE_PATH
from tests.conftest import Node, ingest, make_tenant, wait_until

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
    return node.health()


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
    refused(node, token, 409, "wrong_target")
    assert serving(node, key)


def test_a_node_serves_only_the_clients_placed_on_its_pool(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    """A client placed elsewhere is not in the bundle: the node does not know its key,
    even when a request reaches it directly. A dedicated pool's bundle holds one client,
    and the node refuses one that holds more, signed or not."""
    node, elsewhere = running
    opened = httpx.post(
        f"{node.api}/v1/sessions",
        json={"model": DEFAULT_MODEL_NAME},
        headers={"Authorization": f"Bearer {elsewhere}"},
    )
    assert opened.status_code == 201 and health(node)["sessions_open"] == 1
    solo = make_tenant("solo", (DEFAULT_MODEL_NAME,))
    pool = PoolSpec(name="solo-pool", dedicated=True)
    placed = node.put_config(sign_bundle(node.bundle([model_spec], [solo], pool=pool), node.cp_key))
    assert placed.status_code == 200, placed.text
    assert health(node)["pool"] == {"name": "solo-pool", "dedicated": True}
    # The client that is no longer placed here: its session ended with the new config,
    # leaving its receipt.
    assert health(node)["sessions_open"] == 0
    ended = [node.open_record(r["jws"]) for r in node.usage()]
    assert (opened.json()["id"], "shutdown") in [(r.session_id, r.ended_by) for r in ended]
    assert serving(node, solo.key)
    r = httpx.get(f"{node.api}/v1/models", headers={"Authorization": f"Bearer {elsewhere}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"

    document = node.bundle([model_spec], [solo], pool=pool).document()
    document["clients"].append(make_tenant("intruder", ()).spec.model_dump(mode="json"))
    refused(node, envelope.sign(document, node.cp_key, envelope.TYP_CONFIG), 400, "invalid_config")
    assert health(node)["config_version"] == placed.json()["version"]
    assert serving(node, solo.key)


def test_garbage_is_refused(running: tuple[Node, str]) -> None:
    node, key = running
    refused(node, "not a jws", 401, "bad_signature")
    assert node.put_config(b"\xff\xfe").status_code == 400  # type: ignore[arg-type]
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


# --- the version floor, expiry and signed pushes ------------------------------------------


def test_an_older_bundle_is_refused_after_a_restart_whose_saved_bundle_no_longer_verifies(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, first_key = running
    tenant = make_tenant("second", (DEFAULT_MODEL_NAME,))
    older = sign_bundle(node.bundle([model_spec], [make_tenant("old", ())]), node.cp_key)
    node.push([model_spec], [tenant])  # version 3 applied; version 2 was never sent
    node.stop()
    saved = node.data_dir / "state" / "config.jws"
    header, payload, signature = saved.read_text().split(".")
    saved.write_text(f"{header}.{payload[:-2]}AA.{signature}")
    node.start()
    assert health(node)["config_version"] is None  # the saved bundle is not trusted...
    assert health(node)["version_floor"] == 3  # ...but the floor it set stays
    refused(node, older, 409, "stale_version")
    assert not serving(node, first_key)


def test_an_expired_bundle_is_refused(running: tuple[Node, str], model_spec: ModelSpec) -> None:
    node, key = running
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = node.bundle([model_spec], [], issued_at=past, expires_at=past + timedelta(hours=1))
    refused(node, sign_bundle(expired, node.cp_key), 422, "config_expired")
    assert serving(node, key)


def test_a_node_whose_bundle_expires_refuses_clients_until_a_new_one(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, _ = running
    tenant = make_tenant("brief", (DEFAULT_MODEL_NAME,))
    soon = datetime.now(UTC) + timedelta(seconds=4)
    response = node.put_config(
        sign_bundle(node.bundle([model_spec], [tenant], expires_at=soon), node.cp_key)
    )
    assert response.status_code == 200, response.text
    assert serving(node, tenant.key)
    assert wait_until(lambda: datetime.now(UTC) > soon, timeout=10)
    answer = httpx.get(
        f"{node.api}/v1/models", headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60
    )
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "config_expired"
    report = health(node)
    assert report["status"] == "degraded"
    assert any("expired" in p for p in report["problems"])
    node.push([model_spec], [tenant])
    assert serving(node, tenant.key)


def test_a_config_push_must_be_a_signed_request_for_this_node(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, key = running
    tenant = make_tenant("pushed", (DEFAULT_MODEL_NAME,))
    token = sign_bundle(node.bundle([model_spec], [tenant]), node.cp_key)
    unsigned = httpx.put(f"{node.management}{CONFIG_PATH}", content=token, timeout=60)
    for_node_2 = node.put_config(token, auth=node.management_auth("node-2"))
    by_config_key = node.put_config(token, auth=SignedRequestAuth(node.cp_key, "node-1"))
    for response in (unsigned, for_node_2, by_config_key):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
    assert serving(node, key) and not serving(node, tenant.key)
    assert node.put_config(token).status_code == 200
    assert serving(node, tenant.key)


def test_health_takes_only_signed_requests_and_answers_signed(fresh_node: Node) -> None:
    fresh_node.start()
    url = f"{fresh_node.management}{HEALTH_PATH}"
    unsigned = httpx.get(url, timeout=60)
    by_config_key = httpx.get(url, auth=SignedRequestAuth(fresh_node.cp_key, "node-1"))
    for response in (unsigned, by_config_key):
        assert response.status_code == 401
        assert "node-1" not in response.text  # tells nothing about the node
    auth = fresh_node.management_auth()
    answer = httpx.get(url, auth=auth, timeout=60)
    assert answer.headers["content-type"] == JOSE
    document = open_answer(
        answer.content, fresh_node.node_public_key, nonce=str(auth.jti), audience="control-plane"
    )
    assert document["node"] == "node-1"
    with pytest.raises(SignedRequestError):  # an old answer is no answer to a new request
        open_answer(
            answer.content, fresh_node.node_public_key, nonce="0" * 32, audience="control-plane"
        )


def test_a_management_request_is_refused_replayed_to_another_node_or_after_a_restart(
    fresh_node: Node, tmp_path: Path
) -> None:
    other = Node(data_dir=tmp_path / "node-2", keys=fresh_node.keys)
    other.env["SANCTUM_DP_NODE_ID"] = "node-2"
    fresh_node.start()
    other.start()
    try:
        header, _ = authorization(
            fresh_node.keyring.signer(MANAGEMENT), "GET", USAGE_PATH, audience="node-1"
        )
        signed = {"Authorization": header}
        assert httpx.get(f"{fresh_node.management}{USAGE_PATH}", headers=signed).status_code == 200
        to_other = httpx.get(f"{other.management}{USAGE_PATH}", headers=signed)
        assert to_other.status_code == 401
        assert "another node" in to_other.json()["error"]["message"]
        fresh_node.stop()
        fresh_node.start()
        again = httpx.get(f"{fresh_node.management}{USAGE_PATH}", headers=signed)
        assert again.status_code == 401
        assert "replayed" in again.json()["error"]["message"]
    finally:
        other.stop()


def test_a_node_that_lost_its_trust_set_trusts_nothing_until_reset(
    running: tuple[Node, str], model_spec: ModelSpec
) -> None:
    node, first_key = running
    node.stop()
    (node.data_dir / "state" / "trust.json").unlink()  # the anchor must not come back
    node.start()
    assert not serving(node, first_key)  # what it holds is not trusted: not served...
    unsigned_health = httpx.get(f"{node.management}{HEALTH_PATH}", auth=node.management_auth())
    assert unsigned_health.status_code == 401  # ...and it trusts no key at all now
    tenant = make_tenant("after", (DEFAULT_MODEL_NAME,))
    token = sign_bundle(node.bundle([model_spec], [tenant]), node.cp_key)
    assert node.put_config(token).status_code == 401
    node.stop()
    (node.data_dir / "state" / "config.floor").unlink()  # the operator resets it on purpose
    node.start()
    assert node.put_config(token).status_code == 200
    assert serving(node, tenant.key)


def test_a_node_keeps_no_knowledge_base_of_a_client_it_no_longer_serves(
    fresh_node: Node, model_spec: ModelSpec
) -> None:
    node = fresh_node
    node.start()
    acme = make_tenant("acme", (DEFAULT_MODEL_NAME,), knowledge_bases=("handbook",))
    other = make_tenant("other", (DEFAULT_MODEL_NAME,))
    node.push([model_spec], [acme, other])
    ingest(node, "acme", "handbook", {"leave.md": b"# Leave\n\nThirty days a year."})
    assert [kb["client"] for kb in health(node)["knowledge_bases"]] == ["acme"]

    # Documents of a client not placed on this node have no place here.
    document = {"name": "x.md", "content": base64.b64encode(b"# X\n\nY.").decode()}
    with node.management_client() as m:
        r = m.post(
            "/internal/knowledge-bases/stranger/kb/documents", json={"documents": [document]}
        )
    assert r.status_code == 409 and r.json()["error"]["code"] == "client_not_placed"

    # acme moves to another pool: this node's next config no longer lists it.
    node.push([model_spec], [other])
    assert health(node)["knowledge_bases"] == []
