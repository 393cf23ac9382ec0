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
import time
from pathlib import Path

import pytest

from data_plane.config_store import ConfigRejected, ModelFileCheck
from data_plane.model_files import (
    ModelFetchFailed,
    ModelFetchPending,
    ModelFileMismatch,
    ModelFiles,
    fetch_deadline_seconds,
)
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


def test_a_fetch_s_deadline_is_the_timeout_plus_its_size_at_the_minimum_rate() -> None:
    mib = 1 << 20
    assert fetch_deadline_seconds(60, 0, mib) == 60
    assert fetch_deadline_seconds(60, 4096 * mib, mib) == 60 + 4096  # 4 GiB: about 70 min
    assert fetch_deadline_seconds(10, 3 * mib, 512 * 1024) == 16


def test_a_fetch_slower_than_the_minimum_rate_is_abandoned_at_its_deadline(
    tmp_path: Path,
) -> None:
    """A store that never stalls long enough for the read timeout but trickles (16 KiB
    every 0.2 s: 1 MiB would take 13 s) can't keep a fetch going: with a 1 s timeout and
    a 512 KiB/s minimum, the fetch of 1 MiB is abandoned after about 3 s."""
    body = CONTENT[: 1 << 20]
    hung_up = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for at in range(0, len(body), 16384):
                    self.wfile.write(body[at : at + 16384])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                hung_up.set()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = ModelFiles(tmp_path / "models", timeout_seconds=1, min_bytes_per_second=512 * 1024)
    pin = spec(
        f"http://127.0.0.1:{server.server_address[1]}/m.gguf",
        hashlib.sha256(body).hexdigest(),
        len(body),
    )
    try:
        started = time.monotonic()
        with pytest.raises(ModelFetchFailed, match="deadline of 3 s"):
            files.ensure(pin)
        took = time.monotonic() - started
        assert hung_up.wait(10)  # the node hung up on the store
    finally:
        server.shutdown()
    assert took < 13 * 0.75, f"not abandoned early: {took:.1f} s"
    assert placed(tmp_path / "models") == []  # the temp file is gone too
    assert files.fetches() == []


def _settle(files: ModelFiles, pin: ModelSpec, placed: object) -> None:
    """Call ``start`` until it stops answering "pending" (raises what it raises then)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            files.start(pin, placed)  # type: ignore[arg-type]
            return
        except ModelFetchPending:
            time.sleep(0.05)
    raise AssertionError("the background fetch did not finish")


def test_start_fetches_in_the_background_and_answers_pending_meanwhile(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """What a config push calls: it never waits for the store."""
    files = ModelFiles(tmp_path / "models", timeout_seconds=10)
    name = "test_start_fetches_in_the_background_and_answers_pending_meanwhile.gguf"
    pin = spec(store.url(name, slow=True))
    done: list[str] = []

    with pytest.raises(ModelFetchPending, match="being fetched"):
        files.start(pin, lambda: done.append("placed"))
    with pytest.raises(ModelFetchPending):  # asked again meanwhile: no second fetch
        files.start(pin, lambda: done.append("twice"))
    _settle(files, pin, lambda: done.append("again"))

    assert done == ["placed"]
    assert placed(tmp_path / "models") == [f"{SHA}.gguf"]
    assert len(store.fetches(name)) == 1


def test_a_failed_background_fetch_is_reported_once_then_tried_again(
    store: ArtifactStore, tmp_path: Path
) -> None:
    files = ModelFiles(tmp_path / "models", timeout_seconds=10)
    wrong = spec(store.url("m.gguf"), sha256="0" * 64)

    with pytest.raises(ModelFetchPending):
        files.start(wrong, lambda: None)
    with pytest.raises(ModelFileMismatch):
        _settle(files, wrong, lambda: None)
    with pytest.raises(ModelFetchPending):  # the next push tries again
        files.start(wrong, lambda: None)
    with pytest.raises(ModelFileMismatch):
        _settle(files, wrong, lambda: None)

    assert placed(tmp_path / "models") == []
    assert len(store.fetches("/m.gguf")) >= 2
