"""A node's model files fetched from the storage link (``data_plane.model_files``), from
a real nginx artifact store: placed only whole and matching, never twice at once.

The node-level behaviour (a config refused, the old one serving, health) is in
``test_model_fetch.py``; these take the component alone, with small files.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from data_plane.config_store import ConfigRejected, ModelFileCheck
from data_plane.model_files import ModelFetchFailed, ModelFileMismatch, ModelFiles
from shared.config import ModelSpec
from tests.data_plane.artifact_store import NEEDS_NGINX, ArtifactStore, artifact_store  # noqa: F401

pytestmark = NEEDS_NGINX

CONTENT = os.urandom(3 * 1_048_576 + 17)
SHA = hashlib.sha256(CONTENT).hexdigest()


def spec(source: str, sha256: str = SHA, size: int = len(CONTENT)) -> ModelSpec:
    return ModelSpec(
        name="m", version="v1", sha256=sha256, source=source, size=size, context_size=512
    )


@pytest.fixture
def store(artifact_store: ArtifactStore, request: pytest.FixtureRequest) -> ArtifactStore:  # noqa: F811
    """The store with ``m.gguf`` and, for counting fetches, ``<test name>.gguf``."""
    (artifact_store.root / "m.gguf").write_bytes(CONTENT)
    (artifact_store.root / f"{request.node.originalname}.gguf").write_bytes(CONTENT)
    return artifact_store


def placed(models: Path) -> list[str]:
    """Every file in the models directory, temp files included."""
    return sorted(p.name for p in models.iterdir())


def test_a_fetched_file_is_placed_under_its_sha256(store: ArtifactStore, tmp_path: Path) -> None:
    files = ModelFiles(tmp_path / "models", timeout_seconds=10)
    name = "test_a_fetched_file_is_placed_under_its_sha256.gguf"

    assert files.ensure(spec(store.url(name)))

    assert placed(tmp_path / "models") == [f"{SHA}.gguf"]
    assert (tmp_path / "models" / f"{SHA}.gguf").read_bytes() == CONTENT
    assert not files.ensure(spec(store.url(name)))  # there already: not fetched again
    assert len(store.fetches(name)) == 1


@pytest.mark.parametrize(
    ("sha256", "size"),
    [
        ("0" * 64, len(CONTENT)),  # another file
        (SHA, len(CONTENT) + 1),  # the store's copy is shorter than the pin's
        (SHA, len(CONTENT) - 1),  # and longer
    ],
)
def test_a_file_that_is_not_the_pin_s_is_not_placed(
    store: ArtifactStore, tmp_path: Path, sha256: str, size: int
) -> None:
    files = ModelFiles(tmp_path / "models", timeout_seconds=10)

    with pytest.raises(ModelFileMismatch):
        files.ensure(spec(store.url("m.gguf"), sha256, size))

    assert placed(tmp_path / "models") == []


def test_a_body_longer_than_the_pin_is_cut_off_without_a_length(tmp_path: Path) -> None:
    """A server that sends no Content-Length (HTTP/1.0, ends by closing) and more bytes
    than the pin says: the fetch stops at the pin's size, nothing is placed."""
    sent = threading.Event()

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):  # 64 MiB, far more than the pin's 3 MiB
                    self.wfile.write(b"\0" * 1_048_576)
            except OSError:
                sent.set()  # the node hung up

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        files = ModelFiles(tmp_path / "models", timeout_seconds=10)
        with pytest.raises(ModelFileMismatch, match="more than"):
            files.ensure(spec(f"http://127.0.0.1:{server.server_address[1]}/m.gguf"))
        assert sent.wait(10)
    finally:
        server.shutdown()
    assert placed(tmp_path / "models") == []


def test_an_unreachable_store_or_a_missing_file_is_worth_a_retry(
    store: ArtifactStore, tmp_path: Path
) -> None:
    check = ModelFileCheck(ModelFiles(tmp_path / "models", timeout_seconds=10))

    with pytest.raises(ConfigRejected) as missing:
        check.check(spec(store.url("nothing-here.gguf")))
    with pytest.raises(ModelFetchFailed):
        check.files.ensure(spec(store.url("m.gguf").replace(str(store.port), "1")))

    assert (missing.value.status, missing.value.code) == (503, "model_fetch_failed")
    assert placed(tmp_path / "models") == []


def test_a_source_on_a_mounted_path_is_copied_the_same_way(tmp_path: Path) -> None:
    mount = tmp_path / "mnt" / "m.gguf"
    mount.parent.mkdir()
    mount.write_bytes(CONTENT)
    check = ModelFileCheck(ModelFiles(tmp_path / "models", timeout_seconds=10))

    check.check(spec(str(mount)))
    mount.write_bytes(CONTENT[:-1] + b"!")
    with pytest.raises(ConfigRejected) as changed:
        check.check(spec(str(mount), sha256="1" * 64))

    assert placed(tmp_path / "models") == [f"{SHA}.gguf"]
    assert changed.value.code == "model_hash_mismatch"


def test_concurrent_fetches_of_one_file_fetch_it_once(store: ArtifactStore, tmp_path: Path) -> None:
    """Two applies wanting the same file at once: one fetch (slowed down so they
    overlap), one placed file, both callers satisfied."""
    files = ModelFiles(tmp_path / "models", timeout_seconds=10)
    name = "test_concurrent_fetches_of_one_file_fetch_it_once.gguf"
    results: list[bool] = []
    seen: list[list[dict[str, object]]] = []

    def fetch() -> None:
        results.append(files.ensure(spec(store.url(name, slow=True))))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen.append(files.fetches())
        threads[0].join(0.05)
    for t in threads:
        t.join()

    assert sorted(results) == [False, True]
    assert len(store.fetches(name)) == 1
    assert placed(tmp_path / "models") == [f"{SHA}.gguf"]
    assert max(len(s) for s in seen) == 1  # one fetch in progress, never two
    assert files.fetches() == []
