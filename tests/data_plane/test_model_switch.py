"""Switching a model to a new version on a real node: staged ahead, then switched at
once where there is room for both, drained first where there is not.

The new version is a copy of the bundled GGUF with bytes appended after its end:
llama.cpp loads it the same, and its sha256 differs, so every usage record says which
version served.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import ModelSpec, file_sha256, sign_bundle
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node, wait_until

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
# llama.cpp's threads wait on each other: on a busy shared machine one is faster.
ONE_THREAD = {"SANCTUM_DP_ENGINE__THREADS": "1", "SANCTUM_DP_RETRIEVAL__ENABLED": "false"}


def second_version(spec: ModelSpec, tmp: Path) -> ModelSpec:
    """``spec``'s model as another version: the same weights, another file hash."""
    copy = tmp / "model-v2.gguf"
    shutil.copyfile(spec.path, copy)
    with open(copy, "ab") as fh:
        fh.write(b"\0" * 64 + b"sanctum test: version 2")
    return spec.model_copy(
        update={"version": "v2", "path": str(copy), "sha256": file_sha256(str(copy))}
    )


def push(
    node: Node, tenant: Tenant, models: list[ModelSpec], staged: tuple[ModelSpec, ...] = ()
) -> None:
    bundle = node.bundle(models, [tenant], staged=staged)
    response = node.put_config(sign_bundle(bundle, node.cp_key))
    assert response.status_code == 200, response.text


def chat(node: Node, tenant: Tenant, session: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tenant.key}"}
    if session is not None:
        headers["X-Sanctum-Session"] = session
    return httpx.post(
        f"{node.api}/v1/chat/completions",
        json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
        headers=headers,
        timeout=120,
    )


def served_by(node: Node, response: httpx.Response) -> str:
    """The sha256 of the model file that answered a one-shot call (from its receipt)."""
    assert response.status_code == 200, response.text
    return node.open_record(response.json()["sanctum"]["usage_record"]).model_sha256


def settled_staged(node: Node) -> list[dict[str, Any]]:
    """The staged models in health once their preparation (in the background) is done."""

    def settled() -> tuple[list[dict[str, Any]]] | None:
        report: list[dict[str, Any]] = node.health()["staged"]
        busy = any(s["state"] in ("fetching", "checking") for s in report)
        return None if busy else (report,)

    result = wait_until(settled, timeout=120)
    assert result is not None, "the staged models were not prepared in time"
    return result[0]


def staged_report(node: Node) -> list[tuple[str, str]]:
    return [(s["version"], s["state"]) for s in settled_staged(node)]


def serving(node: Node) -> list[str]:
    return [m["version"] for m in node.health()["models"]]


def test_a_staged_version_is_prepared_ahead_and_switched_to_at_once(
    tmp_path: Path, model_spec: ModelSpec
) -> None:
    node = new_node(tmp_path, **ONE_THREAD)  # no limit on models: room for both
    tenant = make_tenant("acme", (MODEL,))
    v2 = second_version(model_spec, tmp_path)
    node.start()
    try:
        push(node, tenant, [model_spec])
        broken = v2.model_copy(update={"sha256": "0" * 64})

        # A staged file that does not match is reported, and the bundle stands.
        push(node, tenant, [model_spec], staged=(broken,))
        (failed,) = settled_staged(node)
        assert failed["state"] == "failed" and "sha256" in failed["reason"]
        assert served_by(node, chat(node, tenant)) == model_spec.sha256

        # Staged with room: loaded beside the old one, serving no one.
        push(node, tenant, [model_spec], staged=(v2,))
        assert staged_report(node) == [("v2", "loaded")]
        assert serving(node) == [model_spec.version]
        assert served_by(node, chat(node, tenant)) == model_spec.sha256
        session = httpx.post(
            f"{node.api}/v1/sessions",
            json={"model": MODEL},
            headers={"Authorization": f"Bearer {tenant.key}"},
        ).json()["id"]
        assert chat(node, tenant, session).status_code == 200

        push(node, tenant, [v2])

        assert staged_report(node) == [] and serving(node) == ["v2"]
        assert served_by(node, chat(node, tenant)) == v2.sha256
        # The session on the old version ended with its receipt when that retired.
        receipt = httpx.get(
            f"{node.api}/v1/receipts/{session}", headers={"Authorization": f"Bearer {tenant.key}"}
        )
        assert receipt.status_code == 200, receipt.text
        record = node.open_record(receipt.json()["usage_record"])
        assert (record.model_sha256, record.ended_by, record.request_count) == (
            model_spec.sha256,
            "shutdown",
            1,
        )
    finally:
        node.stop()


def _stream_events(lines: Any) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


# The end-of-generation tokens of the bundled model, banned so the stream runs its length.
NO_EOS = {"0": -100, "1": -100, "2": -100}
STREAM_TOKENS = 128


def _switch_with_a_stream_in_flight(
    node: Node, tenant: Tenant, models: list[ModelSpec], session: str
) -> tuple[list[str], list[dict[str, Any]], list[httpx.Response], list[httpx.Response]]:
    """Push ``models`` while a stream runs on the old version; meanwhile ask for the
    model (one-shot) and continue ``session`` until each is answered by the switch.

    Returns the order things were seen in ("switching": the first answer that said so;
    "stream ended": the stream's last event), the stream's events, and the one-shot and
    session answers.
    """
    token = sign_bundle(node.bundle(models, [tenant]), node.cp_key)
    order: list[str] = []
    events: list[dict[str, Any]] = []
    pushed: list[httpx.Response] = []
    one_shot: list[httpx.Response] = []
    on_session: list[httpx.Response] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{node.api}/v1/completions",
            json={
                "model": MODEL,
                "prompt": "1, 2, 3, 4, 5,",
                "max_tokens": STREAM_TOKENS,
                "logit_bias": NO_EOS,
                "stream": True,
            },
            headers={"Authorization": f"Bearer {tenant.key}"},
            timeout=120,
        ) as streaming:
            for line in streaming.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    started.set()
        order.append("stream ended")
        started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(120) and events, "the stream did not start"
    pusher = threading.Thread(target=lambda: pushed.append(node.put_config(token)))
    pusher.start()
    for _ in range(2000):  # bounded; the switch lasts at least as long as the stream
        if not pusher.is_alive():
            break
        if not one_shot or one_shot[-1].status_code == 200:
            one_shot.append(chat(node, tenant))
        if not on_session or on_session[-1].status_code == 200:
            on_session.append(chat(node, tenant, session))
        switching = 503 in (one_shot[-1].status_code, on_session[-1].status_code)
        if switching and "switching" not in order:
            order.append("switching")
        if one_shot[-1].status_code != 200 and on_session[-1].status_code != 200:
            break
    reader.join(timeout=120)
    pusher.join(timeout=120)
    assert pushed and pushed[0].status_code == 200, pushed and pushed[0].text
    return order, events, one_shot, on_session


def _answered_by_the_switch(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_switching"
    assert int(response.headers["Retry-After"]) > 0


def test_a_node_without_room_for_two_drains_the_old_version_then_loads_the_new(
    tmp_path: Path, model_spec: ModelSpec
) -> None:
    # Room for one model; turns in flight get all the time they need to finish.
    node = new_node(
        tmp_path,
        SANCTUM_DP_ENGINE__MAX_LOADED_MODELS="1",
        SANCTUM_DP_SESSIONS__DRAIN_GRACE_SECONDS="600",
        **ONE_THREAD,
    )
    tenant = make_tenant("acme", (MODEL,))
    v2 = second_version(model_spec, tmp_path)
    node.start()
    try:
        push(node, tenant, [model_spec], staged=(v2,))
        # Verified, not loaded: there is room for one model only.
        assert staged_report(node) == [("v2", "ready")]
        assert node.health()["max_loaded_models"] == 1
        for old, new in ((model_spec, v2), (v2, model_spec)):  # the upgrade, the rollback
            opened = httpx.post(
                f"{node.api}/v1/sessions",
                json={"model": MODEL},
                headers={"Authorization": f"Bearer {tenant.key}"},
            )
            session = opened.json()["id"]
            assert chat(node, tenant, session).status_code == 200

            order, events, one_shot, on_session = _switch_with_a_stream_in_flight(
                node, tenant, [new], session
            )

            # The switch began while the stream ran on the old version; the stream ran
            # to its length and was accounted to that version.
            assert order == ["switching", "stream ended"]
            final = events[-1]
            assert "choices" in final, "".join(node.output[-40:])
            assert final["choices"][0]["finish_reason"] == "length"
            record = node.open_record(final["sanctum"]["usage_record"])
            assert (record.model_sha256, record.completion_tokens) == (old.sha256, STREAM_TOKENS)
            # Asked meanwhile: 503 model_switching with Retry-After, for a new call and
            # for a turn on the old version's session alike.
            _answered_by_the_switch(one_shot[-1])
            _answered_by_the_switch(on_session[-1])
            # That session ended with its receipt; a retry on it finds it gone.
            receipt = httpx.get(
                f"{node.api}/v1/receipts/{session}",
                headers={"Authorization": f"Bearer {tenant.key}"},
            )
            ended = node.open_record(receipt.json()["usage_record"])
            turns = 1 + sum(r.status_code == 200 for r in on_session)
            assert (ended.model_sha256, ended.ended_by, ended.request_count) == (
                old.sha256,
                "shutdown",
                turns,
            )
            assert chat(node, tenant, session).status_code == 404
            # Then the new version serves.
            assert serving(node) == [new.version]
            assert served_by(node, chat(node, tenant)) == new.sha256
    finally:
        node.stop()
