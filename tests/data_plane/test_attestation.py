"""A real node's statement of what it runs (issue 17): what it claims, that the records it
signs name it, and that a model file changed by one byte is neither loaded nor claimed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import httpx
import pytest

from data_plane.runtime import EnginePool, ModelFileChanged
from data_plane.settings import Settings
from shared.attestation import (
    ATTESTATION_PATH,
    ATTESTATION_PLACED_PATH,
    open_statement,
    verify_statement,
)
from shared.config import ModelSpec, sign_bundle
from shared.keys import b64url, public_key_bytes
from shared.software import release_digest
from tests.conftest import Node, Tenants

pytestmark = pytest.mark.model


def nonce() -> str:
    return b64url(os.urandom(32))


def copied_model(model_spec: ModelSpec, where: Path) -> ModelSpec:
    """The bundled model, pinned from a copy of its file this test may change."""
    where.mkdir(parents=True, exist_ok=True)
    copy = where / "model.gguf"
    shutil.copyfile(str(model_spec.path), copy)
    return model_spec.model_copy(update={"path": str(copy)})


def flip_one_byte(path: Path) -> None:
    """Change one byte in the middle of the file, keeping its size and its times."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def statement(node: Node, tenant, the_nonce: str) -> httpx.Response:
    with node.client(tenant) as c:
        return c.get("/attestation", params={"nonce": the_nonce})


def test_the_statement_says_what_the_node_runs(
    fresh_node: Node, model_spec: ModelSpec, tenants: Tenants, tmp_path: Path
) -> None:
    spec = copied_model(model_spec, tmp_path / "models")
    fresh_node.start()
    token = sign_bundle(fresh_node.bundle([spec], [tenants.alice]), fresh_node.cp_key)
    assert fresh_node.put_config(token).status_code == 200

    n = nonce()
    answer = statement(fresh_node, tenants.alice, n)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/jose")
    report = verify_statement(answer.text, nonce=n, expect_models=[spec.sha256])
    # Everything holds but the anchor: no control plane here has logged it (the tests of
    # the control plane and the demo check that part).
    assert [f.check for f in report.failures] == ["anchor"], [str(f) for f in report.failures]
    said = report.statement
    assert said is not None and said.node_id == "node-1"
    assert [(m.name, m.sha256) for m in said.models] == [(spec.name, spec.sha256)]
    assert said.config is not None
    assert said.config.version == fresh_node.version
    assert said.config.sha256 == hashlib.sha256(token.encode("ascii")).hexdigest()
    assert said.release_digest == release_digest()  # the same installation as this test
    assert public_key_bytes(said.signing_key()) == public_key_bytes(fresh_node.node_public_key)
    assert said.keys.management_tls_sha256 is None  # not enrolled: plain management link

    # Another nonce, another statement; the same claims.
    again = open_statement(statement(fresh_node, tenants.alice, nonce()).text)
    assert again.nonce != n and again.claims_sha256() == said.claims_sha256()

    # Only clients of the node ask it, with a nonce of the contract's form.
    for bad in ("", "not a nonce", b64url(b"short"), b64url(os.urandom(65))):
        refused = statement(fresh_node, tenants.alice, bad)
        assert refused.status_code in (400, 422), refused.text
        if refused.status_code == 400:
            assert refused.json()["error"]["code"] == "invalid_nonce"
    anonymous = httpx.get(f"{fresh_node.api}/v1/attestation", params={"nonce": n})
    assert anonymous.status_code == 401


def test_records_name_the_logged_statement(
    fresh_node: Node, model_spec: ModelSpec, tenants: Tenants
) -> None:
    fresh_node.start()
    fresh_node.push([model_spec], [tenants.alice])
    with fresh_node.management_client() as mc:
        assert httpx.get(f"{fresh_node.management}{ATTESTATION_PATH}").status_code == 401
        n = nonce()
        answer = mc.get(ATTESTATION_PATH, params={"nonce": n})
        assert answer.status_code == 200, answer.text
        said = open_statement(answer.text)
        assert said.nonce == n

        def session_record() -> dict:
            with fresh_node.client(tenants.alice) as c:
                sid = c.post("/sessions", json={"model": model_spec.name}).json()["id"]
                return fresh_node.open_record(c.delete(f"/sessions/{sid}").json()["usage_record"])

        before = session_record()
        assert before.statement_index is None  # not logged yet
        assert before.config_version == fresh_node.version
        assert before.release_digest == said.release_digest

        # The control plane logged it at index 41 (say): later records name that index.
        placed = {
            "jws": answer.text,
            "log_index": 41,
            "logged_at": "2026-12-06T12:00:00.000Z",
            "leaf_hash": "A" * 43 + "=",
        }
        ok = mc.post(ATTESTATION_PLACED_PATH, json=placed)
        assert ok.status_code == 200, ok.text
        assert session_record().statement_index == 41
        listed = mc.get(ATTESTATION_PLACED_PATH).json()
        assert [p["placement"]["log_index"] for p in listed] == [41]

        # Another node's statement (or a changed one) is not this node's to keep.
        refused = mc.post(ATTESTATION_PLACED_PATH, json={**placed, "jws": answer.text[:-2] + "AA"})
        assert refused.status_code == 422

    # A new config: new claims, which are not logged yet.
    fresh_node.push([model_spec], [tenants.alice])
    with fresh_node.client(tenants.alice) as c:
        sid = c.post("/sessions", json={"model": model_spec.name}).json()["id"]
        record = fresh_node.open_record(c.delete(f"/sessions/{sid}").json()["usage_record"])
    assert record.statement_index is None
    assert record.config_version == fresh_node.version


def test_a_model_file_changed_by_one_byte_is_not_loaded_and_not_claimed(
    fresh_node: Node, model_spec: ModelSpec, tenants: Tenants, tmp_path: Path
) -> None:
    spec = copied_model(model_spec, tmp_path / "models")
    fresh_node.start()
    fresh_node.push([spec], [tenants.alice])
    fresh_node.stop()
    flip_one_byte(Path(str(spec.path)))

    fresh_node.start()  # the saved config names a file that no longer hashes to its pin
    said = open_statement(statement_or_none(fresh_node, tenants.alice))
    assert said.models == [] and said.config is None
    refused = fresh_node.put_config(
        sign_bundle(fresh_node.bundle([spec], [tenants.alice]), fresh_node.cp_key)
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "model_hash_mismatch"
    with fresh_node.management_client() as mc:
        again = open_statement(mc.get(ATTESTATION_PATH, params={"nonce": nonce()}).text)
    assert spec.sha256 not in {m.sha256 for m in again.models}


def statement_or_none(node: Node, tenant) -> str:
    """The statement through the management link (no client is admitted without a config)."""
    with node.management_client() as mc:
        answer = mc.get(ATTESTATION_PATH, params={"nonce": nonce()})
    assert answer.status_code == 200, answer.text
    return answer.text


def test_a_file_changed_between_its_check_and_its_load_is_refused(
    model_spec: ModelSpec, tmp_path: Path
) -> None:
    # The check hashed the file by its path; what llama.cpp maps is hashed again from
    # the same open file after the load: here the file changed in between.
    spec = copied_model(model_spec, tmp_path / "models")
    flip_one_byte(Path(str(spec.path)))
    pool = EnginePool(Settings(data_dir=tmp_path / "node", engine={"threads": 1}))

    async def load() -> None:
        try:
            with pytest.raises(ModelFileChanged, match="changed after it was checked"):
                await pool.load(spec)
            assert pool.loaded() == [] and pool.mapped == {}
            # The file as pinned loads, and what is mapped is what the pin says.
            good = copied_model(model_spec, tmp_path / "good")
            await pool.load(good)
            assert pool.mapped == {(good.name, good.sha256): good.sha256}
        finally:
            await pool.aclose()

    asyncio.run(load())
