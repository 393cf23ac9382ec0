"""Heavy work of one request never runs on the event loop that serves everyone else.

The app runs in this process on a real runtime (the real model); the one thing the test
changes is that building the first client's prompt waits on a gate the test holds. If
prompt building ran on the event loop, nothing else could be answered until the gate
opened: here another client's whole chat is answered while it is still shut.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from data_plane.app import create_app
from data_plane.runtime import Runtime
from data_plane.settings import Settings
from shared.config import ConfigBundle, ModelSpec, sign_bundle
from shared.keyring import dev_keyring
from shared.trust import CONFIG, TARGET_PURPOSES
from tests.conftest import Tenant, make_tenant, release_fields

pytestmark = pytest.mark.model

GATED = "Please wait for the gate."


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 2,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def _node(tmp_path: Path, model_spec: ModelSpec) -> tuple[Settings, Any, Tenant, Tenant]:
    """A node's settings, the key that signs its config, and two tenants of model "m"."""
    settings = Settings(
        data_dir=tmp_path,
        retrieval={"enabled": False},
        engine={"context_size": 512, "max_sequences": 2, "threads": 2},
    )
    cp_key = dev_keyring(settings.keys_dir).signer(CONFIG)
    return settings, cp_key, make_tenant("slow", ("m",)), make_tenant("fast", ("m",))


def _bundle(settings: Settings, model_spec: ModelSpec, version: int, *tenants: Tenant) -> str:
    ring = dev_keyring(settings.keys_dir)
    bundle = ConfigBundle(
        version=version,
        **release_fields(ring.key_set(TARGET_PURPOSES)),
        node=settings.node_id,
        models=(model_spec.model_copy(update={"name": "m"}),),
        clients=tuple(t.spec for t in tenants),
    )
    return sign_bundle(bundle, ring.signer(CONFIG))


@contextlib.asynccontextmanager
async def _running(settings: Settings, token: str, gate: threading.Event) -> AsyncIterator[Runtime]:
    """A started runtime serving the config ``token``; the gate is opened at the end, so
    nothing the test holds back outlives it."""
    runtime = Runtime(settings)
    await runtime.start()
    try:
        await runtime.apply_config(token)
        yield runtime
    finally:
        gate.set()
        await runtime.stop()


def _post(c: httpx.AsyncClient, tenant: Tenant, content: str, route: str = "chat") -> Any:
    headers = {"Authorization": f"Bearer {tenant.key}"}
    if route == "chat":
        return c.post("/v1/chat/completions", json=_chat(content), headers=headers)
    body = {"model": "m", "prompt": content, "max_tokens": 2, "temperature": 0}
    return c.post("/v1/completions", json=body, headers=headers)


@pytest.mark.parametrize("route", ["chat", "completion"])
def test_another_client_is_answered_while_a_prompt_is_being_built(
    tmp_path: Path, model_spec: ModelSpec, route: str
) -> None:
    settings, _, slow, fast = _node(tmp_path, model_spec)
    gate, entered = threading.Event(), threading.Event()

    async def main() -> tuple[int, bool, int]:
        async with _running(
            settings, _bundle(settings, model_spec, 1, slow, fast), gate
        ) as runtime:
            (engine,) = runtime.engines.loaded()
            real_chat, real_text = engine.chat_tokens, engine.text_tokens

            def held(tokens: list[int], gated: bool) -> list[int]:
                if gated:
                    entered.set()
                    assert gate.wait(120)
                return tokens

            engine.chat_tokens = lambda messages: held(  # type: ignore[method-assign]
                real_chat(messages), any(m["content"] == GATED for m in messages)
            )
            engine.text_tokens = lambda text: held(real_text(text), text == GATED)  # type: ignore[method-assign]
            app = create_app(runtime=runtime)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                gated = asyncio.create_task(_post(c, slow, GATED, route))
                assert await asyncio.to_thread(entered.wait, 60)
                other = await _post(c, fast, "Say hi.", route)
                still_waiting = not gated.done()
                gate.set()
                first = await gated
            return other.status_code, still_waiting, first.status_code

    other, still_waiting, first = asyncio.run(main())
    assert other == 200
    assert still_waiting  # answered while the first client's prompt was still being built
    assert first == 200


def test_clients_are_answered_while_a_new_config_hashes_its_model_files(
    tmp_path: Path, model_spec: ModelSpec
) -> None:
    """Checking a config hashes every pinned file it has not seen (gigabytes, for a real
    model): that happens on a worker thread, so streams and calls go on meanwhile."""
    settings, _, slow, fast = _node(tmp_path, model_spec)
    gate, entered = threading.Event(), threading.Event()

    async def main() -> tuple[int, bool, int]:
        async with _running(
            settings, _bundle(settings, model_spec, 1, slow, fast), gate
        ) as runtime:
            files = runtime.config.files
            real_sha256 = files.sha256

            def hashing(path: str) -> str:
                entered.set()
                assert gate.wait(120)
                return real_sha256(path)

            files.sha256 = hashing  # type: ignore[method-assign]
            applying = asyncio.create_task(
                runtime.apply_config(_bundle(settings, model_spec, 2, slow, fast))
            )
            assert await asyncio.to_thread(entered.wait, 60)
            transport = httpx.ASGITransport(app=create_app(runtime=runtime))
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                other = await _post(c, fast, "Say hi.")
            still_hashing = not applying.done()
            gate.set()
            applied = await applying
            return other.status_code, still_hashing, applied.version

    answered, still_hashing, version = asyncio.run(main())
    assert answered == 200
    assert still_hashing  # answered while the new config's model file was being hashed
    assert version == 2
