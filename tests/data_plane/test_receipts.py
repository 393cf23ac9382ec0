"""Signed usage records through a real node: teardown, one-shot calls, expiry, shutdown,
the client's receipts lookup, and the management listener's records and acks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from shared.keyring import dev_keyring
from shared.keys import (
    generate_private_key,
    key_id,
    load_private_key,
    public_jwk,
)
from shared.management import HEALTH_PATH
from shared.models import DEFAULT_MODEL_NAME
from shared.signed_request import SignedRequestAuth, authorization, open_answer
from shared.trust import MANAGEMENT, TRUST_FILE
from shared.usage import (
    USAGE_ACK_PATH,
    USAGE_PATH,
    UsageRecordError,
    open_usage_record,
    peek_usage_record,
)
from tests.conftest import (
    REPO,
    Node,
    Tenant,
    Tenants,
    child_env,
    make_tenant,
    new_node,
    wait_until,
)

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
QUESTION = "What is the capital city of France? Answer in one sentence."
ASK = {"model": MODEL, "max_tokens": 16, "temperature": 0}


def open_session(node: Node, tenant: Tenant, **body: Any) -> str:
    with node.client(tenant) as c:
        response = c.post("/sessions", json={"model": MODEL, **body})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def teardown(node: Node, tenant: Tenant, sid: str) -> dict[str, Any]:
    with node.client(tenant) as c:
        response = c.delete(f"/sessions/{sid}")
        assert response.status_code == 200, response.text
        return dict(response.json())


# --- the client's copy ---------------------------------------------------------------------


def test_teardown_returns_the_node_signed_record(node: Node, tenants: Tenants) -> None:
    sid = open_session(node, tenants.alice)
    with node.client(tenants.alice) as c:
        turn = c.post(
            "/chat/completions",
            json={**ASK, "messages": [{"role": "user", "content": QUESTION}]},
            headers={"X-Sanctum-Session": sid},
        ).json()
    answer = teardown(node, tenants.alice, sid)
    record = node.open_record(answer["usage_record"])
    assert record.session_id == sid and record.client_id == "alice"
    assert record.node_id == "node-1" and record.ended_by == "teardown"
    assert record.model == MODEL
    assert record.model_sha256 == answer["model"]["sha256"]
    assert record.model_version == answer["model"]["version"]
    assert record.request_count == 1
    assert record.prompt_tokens == turn["usage"]["prompt_tokens"] == answer["prompt_tokens"]
    assert record.completion_tokens == turn["usage"]["completion_tokens"]
    assert record.started_at <= record.ended_at
    # ids, model, times and counts: nothing else, and no content
    assert "Paris" not in json.dumps(peek_usage_record(answer["usage_record"]))
    assert "France" not in json.dumps(peek_usage_record(answer["usage_record"]))


def test_the_record_holds_each_turns_time_to_first_token(node: Node, tenants: Tenants) -> None:
    sid = open_session(node, tenants.alice)
    with node.client(tenants.alice) as c:
        for question in (QUESTION, "And of Italy?"):
            response = c.post(
                "/chat/completions",
                json={**ASK, "messages": [{"role": "user", "content": question}]},
                headers={"X-Sanctum-Session": sid},
            )
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] > 0
    answer = teardown(node, tenants.alice, sid)
    record = node.open_record(answer["usage_record"])
    assert record.request_count == 2
    ttft = record.first_token_ms
    assert ttft is not None and len(ttft) == 2  # one per turn, in turn order
    # whole milliseconds, each a plausible time for the bundled model on a CPU
    assert all(isinstance(ms, int) and 0 < ms < 60_000 for ms in ttft), ttft
    assert peek_usage_record(answer["usage_record"])["first_token_ms"] == list(ttft)


def test_the_record_does_not_verify_with_another_key(node: Node, tenants: Tenants) -> None:
    answer = teardown(node, tenants.alice, open_session(node, tenants.alice))
    with pytest.raises(UsageRecordError):
        open_usage_record(answer["usage_record"], {"node-1": generate_private_key().public_key()})


def test_one_shot_plain_call_carries_its_record(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        response = c.post(
            "/chat/completions", json={**ASK, "messages": [{"role": "user", "content": QUESTION}]}
        )
    assert response.status_code == 200
    body = response.json()
    sanctum = body["sanctum"]
    record = node.open_record(sanctum["usage_record"])
    assert record.session_id == sanctum["session_id"] == response.headers["X-Sanctum-Session"]
    assert record.ended_by == "one_shot" and record.request_count == 1
    assert record.prompt_tokens == body["usage"]["prompt_tokens"]
    assert record.completion_tokens == body["usage"]["completion_tokens"]


@pytest.mark.parametrize("route", ["/chat/completions", "/completions"])
def test_one_shot_streamed_call_carries_its_record(
    node: Node, tenants: Tenants, route: str
) -> None:
    body: dict[str, Any] = {**ASK, "stream": True, "stream_options": {"include_usage": True}}
    if route == "/chat/completions":
        body["messages"] = [{"role": "user", "content": QUESTION}]
    else:
        body["prompt"] = "The capital of France is"
    chunks = []
    with (
        node.client(tenants.alice) as c,
        c.stream("POST", route, json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    carrying = [c for c in chunks if "sanctum" in c]
    assert len(carrying) == 1
    sanctum = carrying[0]["sanctum"]
    record = node.open_record(sanctum["usage_record"])
    assert record.session_id == sanctum["session_id"]
    assert record.ended_by == "one_shot"
    usage = chunks[-1]["usage"]
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def test_a_refused_call_leaves_no_record(node: Node, tenants: Tenants) -> None:
    """A one-shot call refused before it ran served nothing: no receipt to hold."""
    with node.client(tenants.alice) as c:
        response = c.post(
            "/chat/completions",
            json={**ASK, "messages": [{"role": "user", "content": "word " * 5000}]},
        )
    assert response.status_code == 400
    assert "sanctum" not in response.json()


# --- GET /v1/receipts/{session_id} --------------------------------------------------------


def test_receipt_is_returned_to_its_owner_only(node: Node, tenants: Tenants) -> None:
    sid = open_session(node, tenants.alice)
    with node.client(tenants.alice) as c:
        assert c.get(f"/receipts/{sid}").status_code == 404  # still open: no record yet
    held = teardown(node, tenants.alice, sid)["usage_record"]
    with node.client(tenants.alice) as c:
        response = c.get(f"/receipts/{sid}")
    assert response.status_code == 200
    receipt = response.json()
    assert receipt["object"] == "session.receipt" and receipt["session_id"] == sid
    assert receipt["usage_record"] == held
    assert receipt["record_id"] == node.open_record(held).record_id
    with node.client(tenants.bob) as c:
        other = c.get(f"/receipts/{sid}")
        unknown = c.get("/receipts/sess_00000000000000000000000000000000")
    for response in (other, unknown):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{node.api}/v1/receipts/{sid}", timeout=60).status_code == 401


def test_one_shot_receipt_can_be_fetched_by_its_session_id(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.bob) as c:
        body = c.post(
            "/chat/completions", json={**ASK, "messages": [{"role": "user", "content": QUESTION}]}
        ).json()
        sid = body["sanctum"]["session_id"]
        assert c.get(f"/receipts/{sid}").json()["usage_record"] == body["sanctum"]["usage_record"]


# --- the management listener ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mnode(tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec) -> Iterator[Node]:
    """A node of this module's own, so record counts and cursors are ours alone."""
    n = new_node(tmp_path_factory.mktemp("mgmt"))
    n.env["SANCTUM_DP_OUTBOX__RECEIPT_RETENTION_SECONDS"] = "0"
    n.env["SANCTUM_DP_OUTBOX__SEGMENT_MAX_BYTES"] = "4096"
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def erin(mnode: Node, model_spec: ModelSpec) -> Tenant:
    tenant = make_tenant("erin", (MODEL,), limits=ClientLimits(max_sessions=4))
    mnode.push([model_spec], [tenant])
    return tenant


def test_management_usage_refuses_requests_not_signed_by_the_control_plane(
    mnode: Node, erin: Tenant
) -> None:
    url = f"{mnode.management}{USAGE_PATH}"
    mgmt = mnode.keyring.signer(MANAGEMENT)

    def signed(key: Any, method: str, path: str, body: bytes = b"", aud: str = "node-1") -> dict:
        return {"Authorization": authorization(key, method, path, body, audience=aud)[0]}

    unsigned = httpx.get(url, timeout=60)
    by_another_key = httpx.get(
        url, headers=signed(generate_private_key(), "GET", USAGE_PATH), timeout=60
    )
    # The config key signs bundles, not requests: one key per purpose.
    by_the_config_key = httpx.get(url, headers=signed(mnode.cp_key, "GET", USAGE_PATH), timeout=60)
    for_another_node = httpx.get(
        url, headers=signed(mgmt, "GET", USAGE_PATH, aud="node-2"), timeout=60
    )
    other_path = httpx.get(
        url + "?after=0", headers=signed(mgmt, "GET", USAGE_PATH + "?after=5"), timeout=60
    )
    body = json.dumps({"cursor": 1}).encode()
    other_body = httpx.post(
        f"{mnode.management}{USAGE_ACK_PATH}",
        content=body,
        headers=signed(mgmt, "POST", USAGE_ACK_PATH, b"{}"),
        timeout=60,
    )
    bearer = httpx.get(url, headers={"Authorization": f"Bearer {erin.key}"}, timeout=60)
    once = signed(mgmt, "GET", USAGE_PATH)
    first, replayed = (
        httpx.get(url, headers=once, timeout=60),
        httpx.get(url, headers=once, timeout=60),
    )
    assert first.status_code == 200
    refused = (unsigned, by_another_key, by_the_config_key, for_another_node, other_path)
    for response in (*refused, other_body, bearer, replayed):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
    assert "replayed" in replayed.json()["error"]["message"]
    # the client API has no such route at all
    assert httpx.get(f"{mnode.api}{USAGE_PATH}", timeout=60).status_code == 404


def test_records_page_by_cursor_and_acks_compact_the_outbox(mnode: Node, erin: Tenant) -> None:
    start = mnode.usage()
    after = start[-1]["cursor"] if start else 0
    held: dict[str, str] = {}
    for _ in range(12):
        sid = open_session(mnode, erin)
        held[sid] = teardown(mnode, erin, sid)["usage_record"]
    sids = list(held)
    with mnode.management_client() as m:
        pages, cursor = [], after
        while True:
            page = m.get(USAGE_PATH, params={"after": cursor, "limit": 5}).json()
            pages.append(page)
            cursor = page["next"]
            if not page["more"]:
                break
        assert [len(p["records"]) for p in pages] == [5, 5, 2]
        assert all(p["node_id"] == "node-1" for p in pages)
        listed = [r for p in pages for r in p["records"]]
        cursors = [r["cursor"] for r in listed]
        assert cursors == sorted(cursors) and len(set(cursors)) == 12 and cursors[0] > after
        by_session = {mnode.open_record(r["jws"]).session_id: r for r in listed}
        assert {sid: r["jws"] for sid, r in by_session.items()} == held
        assert all(mnode.open_record(r["jws"]).record_id == r["record_id"] for r in listed)
        # an empty page keeps the position
        end = m.get(USAGE_PATH, params={"after": cursor}).json()
        assert end["records"] == [] and end["next"] == cursor and not end["more"]

        outbox = mnode.data_dir / "outbox"
        assert len(list(outbox.glob("*.seg"))) >= 2  # 4 KiB segments: ~6 records each
        ack = m.post(USAGE_ACK_PATH, json={"cursor": cursors[6]})
        assert ack.status_code == 200, ack.text
        assert ack.json() == {"acked_through": cursors[6], "pending": 5, "unknown_ids": 0}
        left = [r["cursor"] for r in mnode.usage(after)]
        assert left == cursors[7:]
        # the same ack again, and a cursor from nowhere, change nothing
        assert m.post(USAGE_ACK_PATH, json={"cursor": cursors[6]}).json()["pending"] == 5
        assert m.post(USAGE_ACK_PATH, json={"cursor": 3}).json()["pending"] == 5
        unknown = m.post(USAGE_ACK_PATH, json={"record_ids": ["nope"]}).json()
        assert unknown == {"acked_through": cursors[6], "pending": 5, "unknown_ids": 1}
        # segments whose records are all acknowledged are gone (retention 0 here); every
        # record still pending is on disk
        held_files = b"".join(p.read_bytes() for p in outbox.glob("*.seg"))
        assert listed[0]["jws"].encode() not in held_files
        assert all(r["jws"].encode() in held_files for r in listed[7:])
        # ack the rest by id
        rest = [r["record_id"] for r in listed[7:]]
        done = m.post(USAGE_ACK_PATH, json={"record_ids": rest}).json()
        assert done == {"acked_through": cursors[-1], "pending": 0, "unknown_ids": 0}
        assert mnode.usage(after) == []
        assert list(outbox.glob("*.seg")) == []
        # with no retention, a dropped record's receipt is gone too
        with mnode.client(erin) as c:
            assert c.get(f"/receipts/{sids[0]}").status_code == 404


def test_bad_ack_bodies_are_refused(mnode: Node, erin: Tenant) -> None:
    with mnode.management_client() as m:
        assert m.post(USAGE_ACK_PATH, content=b"{not json").status_code == 400
        for body in ({}, {"cursor": -1}, {"cursor": "7"}, {"record_ids": "x"}, {"other": 1}):
            response = m.post(USAGE_ACK_PATH, json=body)
            assert response.status_code == 422, body
            assert response.json()["error"]["type"] == "invalid_request_error"
        assert m.get(USAGE_PATH, params={"limit": 0}).status_code == 422
        assert m.get(USAGE_PATH, params={"after": -1}).status_code == 422


def test_health_names_the_node_key_and_the_backlog(mnode: Node, erin: Tenant) -> None:
    teardown(mnode, erin, open_session(mnode, erin))
    health = mnode.health()
    assert health["node_key"] == {
        "kid": key_id(mnode.node_public_key),
        "jwk": public_jwk(mnode.node_public_key),
    }
    assert health["usage"]["pending"] >= 1
    assert health["usage"]["last_cursor"] > health["usage"]["acked_through"]


# --- records of sessions the node ends on its own ----------------------------------------------


def test_expiry_and_shutdown_produce_records_that_survive_a_restart(
    tmp_path: Path, model_spec: ModelSpec
) -> None:
    node = new_node(tmp_path)
    node.env["SANCTUM_DP_SESSIONS__SWEEP_INTERVAL_SECONDS"] = "0.2"
    tenant = make_tenant("frank", (MODEL,))
    try:
        node.start()
        node.push([model_spec], [tenant])
        expiring = open_session(node, tenant, ttl=1)
        with node.client(tenant) as c:
            assert wait_until(lambda: c.get(f"/sessions/{expiring}").status_code == 404, 10)
            # the client can fetch the record of a session that expired (written just
            # after the session leaves the store)
            receipt = wait_until(
                lambda: (r := c.get(f"/receipts/{expiring}")).status_code == 200 and r, 10
            )
            assert receipt
        left_open = open_session(node, tenant)
        before = node.usage()
        assert node.stop(signal.SIGTERM) == 0
        node.start()
        after = node.usage()
        records = {node.open_record(r["jws"]).session_id: node.open_record(r["jws"]) for r in after}
        assert records[expiring].ended_by == "expiry"
        assert records[left_open].ended_by == "shutdown"
        assert (
            records[expiring].record_id
            == node.open_record(receipt.json()["usage_record"]).record_id
        )
        # cursors are stable across the restart
        assert after[: len(before)] == before
        assert after[-1]["cursor"] > before[-1]["cursor"]
        # unpinning a model ends its sessions too, with a record that counts the turn
        # that was streaming when the model went
        unpinned = open_session(node, tenant)
        with httpx.stream(
            "POST",
            f"{node.api}/v1/completions",
            json={"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "stream": True},
            headers={"Authorization": f"Bearer {tenant.key}", "X-Sanctum-Session": unpinned},
            timeout=60,
        ) as streaming:
            lines = streaming.iter_lines()
            assert any(  # it is decoding
                line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text")
                for line in lines
            )
            node.push([], [tenant])  # answered once the model's sessions have ended
            rest = [line for line in lines if line.startswith("data: ")]
        assert json.loads(rest[-1][6:])["error"]["code"] == "generation_ended"
        last = node.open_record(node.usage()[-1]["jws"])
        assert last.session_id == unpinned and last.ended_by == "shutdown"
        assert last.request_count == 1 and last.completion_tokens > 0
    finally:
        node.stop()


def serve_without_node_key(tmp_path: Path, environment: str) -> subprocess.Popen[str]:
    keys = tmp_path / "keys"
    dev_keyring(keys)
    env = child_env(
        SANCTUM_DP_ENVIRONMENT=environment,
        SANCTUM_DP_DATA_DIR=str(tmp_path / "node"),
        SANCTUM_DP_TRUST_KEYS=str(keys / TRUST_FILE),
        SANCTUM_DP_LISTEN__API_PORT="0",
        SANCTUM_DP_LISTEN__MANAGEMENT_PORT="0",
    )
    env.pop("SANCTUM_DP_NODE_PRIVATE_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "data_plane", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_production_node_refuses_to_start_without_an_explicit_key(tmp_path: Path) -> None:
    proc = serve_without_node_key(tmp_path, "production")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "SANCTUM_DP_NODE_PRIVATE_KEY" in output
    assert not (tmp_path / "node" / "keys" / "node.key").exists()


def test_development_node_makes_its_key_in_the_data_dir(tmp_path: Path) -> None:
    proc = serve_without_node_key(tmp_path, "development")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SANCTUM_DP_READY"):
                management = dict(p.split("=", 1) for p in line.split()[1:])["management"]
                break
        else:
            raise AssertionError("node did not start")
        key = load_private_key(tmp_path / "node" / "keys" / "node.key")
        auth = SignedRequestAuth(dev_keyring(tmp_path / "keys").signer(MANAGEMENT), "node-1")
        answer = httpx.get(f"{management}{HEALTH_PATH}", auth=auth, timeout=60)
        assert answer.status_code == 200, answer.text
        # The answer is signed by the key the node made, for this request.
        health = open_answer(
            answer.content, key.public_key(), nonce=str(auth.jti), audience="control-plane"
        )
        assert health["node_key"]["kid"] == key_id(key.public_key())
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
