"""``sanctum kb`` as a real process against a real node (real embedder and Qdrant)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shared.keys import write_key_pair
from tests.conftest import REPO, Node, child_env
from tests.pdf import make_pdf

pytestmark = [pytest.mark.model, pytest.mark.embedder]


def sanctum(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def kb(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    key = str(node.keys / "control-plane.key")
    return sanctum("kb", args[0], "--node", node.management, "--key", key, *args[1:])


def outcome(stdout: str, name: str) -> str:
    """The line the CLI printed for document ``name``."""
    lines = [line for line in stdout.splitlines() if line.split()[1:2] in ([name], [name + ":"])]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text("# Guide\n\nThe north gate closes at ten at night.\n")
    (root / "notes.txt").write_text("Deliveries arrive on Tuesdays.\n")
    (root / "page.html").write_text("<html><body><p>The canteen serves soup.</p></body></html>")
    (root / "scan.pdf").write_bytes(make_pdf("Forklift licences last three years."))
    (root / "sub" / "deep.md").write_text("Nested documents keep their relative path.\n")
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    (root / "empty.md").write_text("   \n")
    (root / ".hidden.md").write_text("Never sent.")
    return root


def kb_list(node: Node, client: str) -> dict[str, dict[str, int]]:
    done = kb(node, "list", "--client", client, "--json")
    assert done.returncode == 0, done.stderr
    return {k["name"]: k for k in json.loads(done.stdout)}


def test_ingest_a_folder_reports_every_file(rag_node: Node, folder: Path) -> None:
    done = kb(rag_node, "ingest", "--client", "cli", "--kb", "docs", str(folder), "nowhere.md")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for name in ("guide.md", "notes.txt", "page.html", "scan.pdf", "sub/deep.md"):
        assert outcome(out, name).startswith("ingested"), out
        assert "(1 chunk)" in outcome(out, name)
    assert outcome(out, "photo.png") == "skipped    photo.png: unsupported file type (.png)"
    assert outcome(out, "broken.pdf").endswith("broken.pdf: not a readable PDF")
    assert outcome(out, "empty.md").endswith("empty.md: no text in this file")
    assert outcome(out, "nowhere.md").endswith("nowhere.md: no such file or folder")
    assert ".hidden.md" not in out
    assert "cli/docs: 5 ingested (5 chunks), 0 unchanged, 4 skipped" in out
    assert "100%" in done.stderr  # the progress bar ran to the end
    assert kb_list(rag_node, "cli")["docs"]["documents"] == 5
    health = httpx.get(f"{rag_node.management}/internal/health").json()
    assert {"client": "cli", "name": "docs", "documents": 5, "chunks": 5} in health[
        "knowledge_bases"
    ]
    table = kb(rag_node, "list", "--client", "cli", "--documents")
    assert "sub/deep.md" in table.stdout and "docs" in table.stdout


def test_reingesting_keeps_unchanged_files_and_replaces_changed_ones(
    rag_node: Node, folder: Path
) -> None:
    args = ("ingest", "--client", "cli", "--kb", "again", "--no-progress", str(folder))
    assert kb(rag_node, *args).returncode == 0
    again = kb(rag_node, *args)
    assert again.returncode == 0
    assert outcome(again.stdout, "guide.md").startswith("unchanged")
    assert "0 ingested (0 chunks), 5 unchanged" in again.stdout
    long_text = "\n\n".join(
        f"Gate {i} closes at {i} o'clock for the night shift." for i in range(120)
    )
    (folder / "guide.md").write_text(long_text)
    grown = kb(rag_node, *args)
    line = outcome(grown.stdout, "guide.md")
    assert line.startswith("ingested")
    chunks = int(line.split("(")[1].split()[0])
    assert chunks > 5
    assert kb_list(rag_node, "cli")["again"]["chunks"] == 4 + chunks
    (folder / "guide.md").write_text("The gate is gone.")
    kb(rag_node, *args)
    assert kb_list(rag_node, "cli")["again"]["chunks"] == 5  # the old chunks were replaced


def test_nothing_usable_exits_non_zero(rag_node: Node, tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    done = kb(rag_node, "ingest", "--client", "cli", "--kb", "junk", str(tmp_path / "photo.png"))
    assert done.returncode == 1
    assert "photo.png: unsupported file type" in done.stdout
    assert "nothing usable" in done.stderr
    assert "junk" not in kb_list(rag_node, "cli")


def test_delete_a_document_then_the_knowledge_base(rag_node: Node, folder: Path) -> None:
    assert kb(rag_node, "ingest", "--client", "cli", "--kb", "gone", str(folder)).returncode == 0
    done = kb(rag_node, "delete", "--client", "cli", "--kb", "gone", "--document", "sub/deep.md")
    assert done.returncode == 0, done.stderr
    assert "deleted sub/deep.md (1 chunk)" in done.stdout
    assert kb_list(rag_node, "cli")["gone"]["documents"] == 4
    done = kb(rag_node, "delete", "--client", "cli", "--kb", "gone")
    assert done.returncode == 0 and "4 documents" in done.stdout
    assert "gone" not in kb_list(rag_node, "cli")
    again = kb(rag_node, "delete", "--client", "cli", "--kb", "gone")
    assert again.returncode == 1 and "404" in again.stderr


def test_a_key_that_is_not_the_control_planes_is_refused(
    rag_node: Node, folder: Path, tmp_path: Path
) -> None:
    other = write_key_pair(tmp_path / "other", "control-plane")
    done = sanctum(
        "kb", "ingest", "--client", "cli", "--kb", "x", "--node", rag_node.management,
        "--key", str(other), str(folder),
    )  # fmt: skip
    assert done.returncode == 1
    assert "401" in done.stderr and "untrusted key" in done.stderr
    assert "the control plane's key" in done.stderr
    missing = sanctum("kb", "list", "--node", rag_node.management, "--key", str(tmp_path / "no"))
    assert missing.returncode == 1 and "key" in missing.stderr


def test_node_and_key_from_the_environment_and_an_up_data_dir(
    rag_node: Node, tmp_path: Path
) -> None:
    data_dir = tmp_path / "up-data"
    shutil.copytree(rag_node.keys, data_dir / "keys")
    env = child_env(SANCTUM_MANAGEMENT_URL=rag_node.management, SANCTUM_DATA_DIR=str(data_dir))
    env.pop("SANCTUM_CONTROL_PLANE_KEY", None)
    done = sanctum("kb", "list", "--client", "acme", env=env)
    assert done.returncode == 0, done.stderr
    assert "handbook" in done.stdout
    env["SANCTUM_CONTROL_PLANE_KEY"] = str(tmp_path / "nope.key")
    assert sanctum("kb", "list", env=env).returncode == 1
    unreachable = sanctum("kb", "list", "--node", "http://127.0.0.1:9", "--data-dir", str(data_dir))
    assert unreachable.returncode == 1 and "can't reach" in unreachable.stderr
    assert os.path.exists(data_dir / "keys" / "control-plane.key")
