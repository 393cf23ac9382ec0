"""End to end: ``sanctum kb`` with an operator's token and no private key on its side
loads a knowledge base through the control plane (gunicorn, a Celery worker over a real
redis-server) onto a real data-plane node with retrieval on; the client then retrieves
from it through the node's API; and the control plane's disk, database (file and dump),
temporary directory and logs hold no trace of the documents' text (canary scan).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shared.keyring import KEYRING_DIR
from shared.keys import write_key_pair
from shared.models import DEFAULT_MODEL_NAME, bundled_gguf_path
from tests.canary import files_containing, new_marker, texts_containing
from tests.conftest import REPO, signed_health, wait_until
from tests.control_plane.processes import ControlPlane, DataPlaneNode

pytestmark = [pytest.mark.e2e, pytest.mark.model, pytest.mark.embedder, pytest.mark.redis]


def sanctum_kb(operator: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``sanctum kb ...`` as an operator runs it: in their own folder, with their own
    home, and an environment that names no key or data directory of the platform."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SANCTUM_", "DJANGO_"))}
    clean.update(PYTHONPATH=str(REPO), HOME=str(operator / "home"), **env)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "kb", *args],
        cwd=operator,
        env=clean,
        capture_output=True,
        text=True,
        timeout=600,
    )


def line_for(stdout: str, name: str) -> str:
    lines = [line for line in stdout.splitlines() if line.split()[1:2] in ([name], [name + ":"])]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.fixture
def platform(redis_server, control_plane_factory, tmp_path):
    cp_tmp = tmp_path / "cp-tmp"  # the control plane's temporary files, if it ever made any
    cp_tmp.mkdir()
    cp: ControlPlane = control_plane_factory(redis_server.url, TMPDIR=str(cp_tmp))
    cp.manage("migrate", "-v0")
    public_key = Path(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])
    node_key = write_key_pair(tmp_path / "node-keys", "node")
    node = DataPlaneNode(tmp_path / "node", "node-1", public_key, node_key).start()
    cp.serve()
    cp.worker()
    yield cp, node, node_key, cp_tmp
    node.stop()


def test_sanctum_kb_loads_through_the_control_plane_and_leaves_no_text_there(
    platform, redis_server, tmp_path
):
    cp, node, node_key, cp_tmp = platform
    token = cp.manage("create_operator", "ops", "--role", "admin", "--token")["SANCTUM_API_TOKEN"]
    auditor = cp.manage("create_operator", "audrey", "--role", "auditor", "--token")[
        "SANCTUM_API_TOKEN"
    ]
    api = cp.api(token)
    created = api.post(
        "/nodes/",
        json={
            "name": node.name,
            "management_url": node.management_url,
            "public_key": node_key.with_suffix(".pub").read_text(),
        },
    )
    assert created.status_code == 201, created.text
    node_id = created.json()["id"]
    assert api.post("/clients/", json={"id": "acme", "name": "Acme Law"}).status_code == 201
    key = api.post("/api-keys/", json={"client": "acme", "name": "e2e"}).json()["key"]
    pin = api.post(
        "/model-pins/",
        json={
            "name": DEFAULT_MODEL_NAME,
            "version": "q4_1",
            "path": str(bundled_gguf_path()),
            "clients": ["acme"],
        },
    ).json()
    assert wait_until(
        lambda: api.get(f"/model-pins/{pin['id']}/").json()["hash_status"] == "verified",
        timeout=120,
    )

    # The operator's side: documents, a home of its own, no key anywhere.
    marker = new_marker()
    operator = tmp_path / "operator"
    docs = operator / "handbook"
    (docs / "sub").mkdir(parents=True)
    (operator / "home").mkdir()
    (docs / "vault.md").write_text(f"# Vault\n\nThe vault code is {marker}.\n")
    (docs / "sub" / "travel.md").write_text("Hotel rooms are capped at 140 euros per night.\n")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    env = {"SANCTUM_CONTROL_PLANE_URL": cp.api_url, "SANCTUM_TOKEN": token}

    loaded = sanctum_kb(
        operator, "ingest", "--client", "acme", "--kb", "handbook", "handbook", **env
    )

    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert line_for(loaded.stdout, "vault.md").startswith("ingested")
    assert line_for(loaded.stdout, "sub/travel.md") == "ingested   sub/travel.md (1 chunk)"
    assert line_for(loaded.stdout, "photo.png").endswith("unsupported file type (.png)")
    assert "acme/handbook: 2 ingested (2 chunks), 0 unchanged, 1 skipped" in loaded.stdout
    assert "100%" in loaded.stderr  # the progress bar ran to the end
    keys = [p for p in operator.rglob("*") if p.suffix in (".key", ".pem", ".pub")]
    assert keys == []

    again = sanctum_kb(operator, "ingest", "--client", "acme", "--kb", "handbook",
                       "--no-progress", "handbook", **env)  # fmt: skip
    assert again.returncode == 0 and "0 ingested (0 chunks), 2 unchanged" in again.stdout

    # Creating the knowledge base queued a rollout: the config lists it, no second step.
    def in_sync():
        status = api.get(f"/nodes/{node_id}/").json()
        client = api.get("/clients/acme/").json()
        return status["rollout"] == "in_sync" and client["knowledge_bases"] == ["handbook"]

    def rollout() -> tuple[object, object]:
        node_now = api.get(f"/nodes/{node_id}/").json()
        return node_now["rollout"], node_now["state"]

    assert wait_until(in_sync, timeout=120), rollout()

    from openai import OpenAI

    reply = OpenAI(base_url=f"{node.api_url}/v1", api_key=key, max_retries=0, timeout=120)
    answer = reply.chat.completions.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "user", "content": "What is the vault code?"}],
        max_tokens=8,
        temperature=0,
        extra_body={"sanctum": {"knowledge_bases": ["handbook"], "top_k": 1}},
    )
    (source,) = answer.model_extra["sanctum"]["sources"]
    assert (source["knowledge_base"], source["document"]) == ("handbook", "vault.md")
    assert marker in source["text"]

    listed = sanctum_kb(operator, "list", "--client", "acme", "--documents", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    (kb,) = json.loads(listed.stdout)
    assert (kb["name"], kb["documents"], kb["chunks"]) == ("handbook", 2, 2)
    assert {d["name"]: d["nodes"] for d in kb["documents_list"]} == {
        "vault.md": {"node-1": "loaded"},
        "sub/travel.md": {"node-1": "loaded"},
    }

    # Who may: a wrong token is 401, an auditor's is 403; neither loads anything.
    wrong = sanctum_kb(operator, "ingest", "--client", "acme", "--kb", "handbook", "handbook",
                       SANCTUM_CONTROL_PLANE_URL=cp.api_url, SANCTUM_TOKEN="0" * 40)  # fmt: skip
    assert wrong.returncode == 1 and "401" in wrong.stderr and "--token" in wrong.stderr
    audited = sanctum_kb(operator, "delete", "--client", "acme", "--kb", "handbook",
                         SANCTUM_CONTROL_PLANE_URL=cp.api_url, SANCTUM_TOKEN=auditor)  # fmt: skip
    assert audited.returncode == 1 and "403" in audited.stderr
    no_token = sanctum_kb(operator, "list", SANCTUM_CONTROL_PLANE_URL=cp.api_url)
    assert no_token.returncode == 1 and "no token" in no_token.stderr

    removed = sanctum_kb(operator, "delete", "--client", "acme", "--kb", "handbook",
                         "--document", "sub/travel.md", **env)  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    assert "deleted sub/travel.md (1 chunk) from acme/handbook" in removed.stdout
    health = signed_health(
        node.management_url,
        cp.data_dir / "keys" / KEYRING_DIR,
        node.name,
        node_key.with_suffix(".pub"),
    )
    assert {"client": "acme", "name": "handbook", "documents": 1, "chunks": 1} in health[
        "knowledge_bases"
    ]

    # Every load and delete is in the change trail, attributed, with metadata only.
    trail = api.get("/changes/", params={"limit": 1000}).json()["results"]
    done = {(c["action"], c["object_repr"], c["user_name"]) for c in trail}
    assert ("load", "acme/handbook/vault.md", "ops") in done
    assert ("delete", "acme/handbook/sub/travel.md", "ops") in done
    api.close()

    # The canary scan: the control plane's data directory (SQLite file, its WAL, keys,
    # static files), a dump of its database, its temporary directory, redis's, and every
    # line its processes and the CLI printed. The node's disk holds the text by design:
    # that the scan finds it there shows the scan can find it at all.
    assert files_containing(marker, [tmp_path / "node"])
    assert files_containing(marker, [cp.data_dir, cp_tmp, redis_server.directory]) == []
    dump = subprocess.run(
        [sys.executable, "-m", "control_plane", "dumpdata", "--indent", "0"],
        cwd=REPO,
        env=cp.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr
    assert '"model": "knowledge.knowledgedocument"' in dump.stdout
    database = next(cp.data_dir.glob("*.sqlite3"))
    with sqlite3.connect(database) as db:
        sql = "\n".join(db.iterdump())
    assert "vault.md" in sql  # the catalog is there; the text is not
    processes = list(cp.processes)
    cp.stop()  # every line they wrote is in their output now
    logs = {p.name: "".join(p.output) for p in processes}
    logs.update(
        {
            "dumpdata": dump.stdout + dump.stderr,
            "sqlite dump": sql,
            "cli": "".join(r.stdout + r.stderr for r in (loaded, again, listed, removed)),
        }
    )
    assert texts_containing(marker, logs) == []
