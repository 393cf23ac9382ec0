"""``sanctum up`` as a real process: the printed lines work with the ``openai`` SDK, and
client content leaves no trace on disk or in the output once it is shut down (session
documents included), while an operator-loaded knowledge base is on disk by design."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from shared.keyring import KEYRING_DIR
from shared.trust import LOG, TRUST_FILE, KeySet
from tests.canary import files_containing, new_marker, texts_containing
from tests.conftest import REPO, child_env, signed_health

pytestmark = [pytest.mark.e2e, pytest.mark.model]


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    lines: dict[str, str] = field(default_factory=dict)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    pumps: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=90)
        for pump in self.pumps:
            pump.join(timeout=10)  # stdout and stderr hold every line the process wrote
        return code

    def openai(self) -> OpenAI:
        return OpenAI(
            base_url=self.lines["SANCTUM_API_BASE"],
            api_key=self.lines["SANCTUM_API_KEY"],
            max_retries=0,
        )


def start_up(data_dir: Path, timeout: float = 240) -> Up:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--api-port",
            "0",
            "--management-port",
            "0",
            "--admin-port",
            "0",
        ],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    up = Up(proc, data_dir)
    ready = threading.Event()

    def pump(stream, sink: list[str], parse: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            sink.append(line)
            name, sep, value = line.strip().partition("=")
            if parse and sep and name.startswith("SANCTUM_"):
                up.lines[name] = value
                if name == "SANCTUM_READY":
                    ready.set()
        ready.set()

    up.pumps = [
        threading.Thread(target=pump, args=(proc.stdout, up.stdout, True), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, up.stderr, False), daemon=True),
    ]
    for thread in up.pumps:
        thread.start()
    if not ready.wait(timeout) or "SANCTUM_READY" not in up.lines:
        up.stop()
        raise AssertionError("sanctum up did not become ready:\n" + "".join(up.stderr[-30:]))
    return up


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = start_up(tmp_path / "data")
    yield running
    running.stop()


def test_up_prints_its_lines_and_the_sdk_works(up: Up) -> None:
    for name in (
        "SANCTUM_API_BASE",
        "SANCTUM_API_KEY",
        "SANCTUM_CLIENT_ID",
        "SANCTUM_MODEL",
        "SANCTUM_MANAGEMENT_URL",
    ):
        assert up.lines.get(name), name
        # each alone on its line
        assert any(line.strip() == f"{name}={up.lines[name]}" for line in up.stdout)
    assert up.lines["SANCTUM_API_BASE"].startswith("http://127.0.0.1:")
    assert up.lines["SANCTUM_API_BASE"].endswith("/v1")
    keys = Path(up.lines["SANCTUM_LOG_KEY"]).parent
    health = signed_health(
        up.lines["SANCTUM_MANAGEMENT_URL"], keys / KEYRING_DIR, "node-1", keys / "node.pub"
    )
    assert health["status"] == "ok" and health["retrieval"] is True
    client = up.openai()
    model = up.lines["SANCTUM_MODEL"]
    # the demo client may embed: the embedding model is listed after the chat model
    assert [m.id for m in client.models.list().data] == [model, "all-MiniLM-L6-v2"]
    reply = client.chat.completions.create(
        model=model,
        max_tokens=16,
        temperature=0,
        messages=[
            {
                "role": "user",
                "content": "What is the capital city of France? Answer in one sentence.",
            }
        ],
    )
    assert "Paris" in reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model=model,
        max_tokens=16,
        temperature=0,
        stream=True,
        messages=[
            {
                "role": "user",
                "content": "What is the capital city of France? Answer in one sentence.",
            }
        ],
    )
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_up_collects_receipts_an_auditor_downloads_and_verifies(up: Up) -> None:
    from shared.ledger import verify_held_receipt

    for name in ("SANCTUM_CP_API", "SANCTUM_AUDITOR_TOKEN", "SANCTUM_LOG_KEY"):
        assert up.lines.get(name), name
    reply = up.openai().completions.create(
        model=up.lines["SANCTUM_MODEL"], prompt="Hello", max_tokens=1
    )
    held = reply.model_extra["sanctum"]["usage_record"]
    auditor = httpx.Client(
        base_url=up.lines["SANCTUM_CP_API"],
        headers={"Authorization": f"Token {up.lines['SANCTUM_AUDITOR_TOKEN']}"},
        timeout=60,
    )
    with auditor:
        deadline = time.monotonic() + 60  # up collects every couple of seconds
        while auditor.get("audit/receipts/", params={"client": "demo"}).json()["count"] < 1:
            assert time.monotonic() < deadline, "the receipt was never collected"
            time.sleep(0.5)
        bundle = auditor.get("audit/bundle/", params={"client": "demo"}).content
        assert auditor.post("audit/receipts/", json={}).status_code == 403
        listed = auditor.get("audit/receipts/", params={"client": "demo"}).json()["results"]
        statements = auditor.get("audit/statements/").json()["results"]

    published = KeySet.parse(Path(up.lines["SANCTUM_LOG_KEY"]).read_bytes())
    (log_key,) = published.public_keys(LOG)
    report = verify_held_receipt(held, bundle, log_key=log_key)
    assert report.ok, [str(f) for f in report.failures]
    # The node's statement was logged first (when it applied its config): the receipt
    # follows it in the log.
    assert statements and statements[0]["log_index"] == 0
    assert report.held_log_index == listed[0]["log_index"] > 0


def test_up_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    running = start_up(tmp_path / "data")
    assert running.stop() == 0  # stop() waits at most 90 s, then the test fails
    assert "node stopped" in "".join(running.stderr)


def test_scanner_finds_a_planted_marker(tmp_path: Path) -> None:
    """The canary test below is only as good as its scanner: show that it can see."""
    marker = new_marker()
    (tmp_path / "plain.log").write_text(f"a line with {marker} inside\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff" + marker.encode() + b"\x00")
    import base64

    (tmp_path / "signed.jws").write_text(
        base64.urlsafe_b64encode(b'{"content":"' + marker.encode() + b'"}').decode()
    )
    (tmp_path / "clean.txt").write_text("nothing here\n")
    found = sorted(Path(f).name for f in files_containing(marker, [tmp_path]))
    assert found == ["blob.bin", "plain.log", "signed.jws"]
    assert texts_containing(marker, {"stdout": f"x{marker}y", "stderr": "clean"}) == ["stdout"]


def kb_ingest(up: Up, path: Path) -> subprocess.CompletedProcess[str]:
    """``sanctum kb ingest`` into the demo client's ``docs``, as an operator would: through
    the control plane, with the admin's token."""
    return subprocess.run(
        [
            sys.executable, "-m", "shared.cli", "kb", "ingest",
            "--client", up.lines["SANCTUM_CLIENT_ID"], "--kb", "docs",
            "--no-progress", str(path),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=child_env(
            SANCTUM_CONTROL_PLANE_URL=up.lines["SANCTUM_CONTROL_PLANE_URL"],
            SANCTUM_TOKEN=up.lines["SANCTUM_TOKEN"],
        ),
    )  # fmt: skip


def test_canary_content_leaves_no_trace(tmp_path: Path) -> None:
    marker = new_marker()
    kb_marker = new_marker()  # in an operator-loaded knowledge base: on disk by design
    running = start_up(tmp_path / "data")
    client = running.openai()
    model = running.lines["SANCTUM_MODEL"]
    key = running.lines["SANCTUM_API_KEY"]
    base = running.lines["SANCTUM_API_BASE"]
    auth = {"Authorization": f"Bearer {key}"}
    try:
        # one-shot, plain and streamed
        client.chat.completions.create(
            model=model,
            max_tokens=8,
            messages=[{"role": "user", "content": f"Repeat this code: {marker}"}],
        )
        list(
            client.chat.completions.create(
                model=model,
                max_tokens=8,
                stream=True,
                messages=[
                    {"role": "system", "content": f"The code is {marker}."},
                    {"role": "user", "content": f"Say {marker} twice."},
                ],
            )
        )
        client.completions.create(model=model, prompt=f"{marker} {marker}", max_tokens=8)
        # a session over two turns, torn down
        sid = httpx.post(
            f"{base}/sessions", json={"model": model}, headers=auth, timeout=60
        ).json()["id"]
        for text in (f"My password is {marker}.", "What is my password?"):
            client.chat.completions.create(
                model=model,
                max_tokens=12,
                messages=[{"role": "user", "content": text}],
                extra_headers={"X-Sanctum-Session": sid},
            )
        assert httpx.delete(f"{base}/sessions/{sid}", headers=auth, timeout=60).status_code == 200
        # a session left open: shutdown must end it too
        sid = httpx.post(
            f"{base}/sessions", json={"model": model}, headers=auth, timeout=60
        ).json()["id"]
        client.chat.completions.create(
            model=model,
            max_tokens=4,
            messages=[{"role": "user", "content": marker}],
            extra_headers={"X-Sanctum-Session": sid},
        )
        # an operator-loaded knowledge base, and chats that search it
        (tmp_path / "kb").mkdir()
        (tmp_path / "kb" / "vault.md").write_text(f"The vault code is {kb_marker}.\n")
        loaded = kb_ingest(running, tmp_path / "kb")
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        reply = client.chat.completions.create(
            model=model,
            max_tokens=8,
            messages=[{"role": "user", "content": f"What is the vault code? Not {marker}."}],
            extra_body={"sanctum": {"knowledge_bases": ["docs"], "top_k": 1}},
        )
        assert kb_marker in reply.model_extra["sanctum"]["sources"][0]["text"]
        # session documents, searched in a session over two turns (one streamed), torn down
        sid = httpx.post(f"{base}/sessions", json={"model": model}, headers=auth).json()["id"]
        r = httpx.post(
            f"{base}/sessions/{sid}/documents",
            json={"name": f"{marker}.md", "text": f"The locker combination is {marker}."},
            headers=auth,
        )
        assert r.status_code == 201
        reply = client.chat.completions.create(
            model=model,
            max_tokens=8,
            messages=[{"role": "user", "content": "What is the locker combination?"}],
            extra_headers={"X-Sanctum-Session": sid},
        )
        assert marker in reply.model_extra["sanctum"]["sources"][0]["text"]
        list(
            client.chat.completions.create(
                model=model,
                max_tokens=8,
                stream=True,
                messages=[{"role": "user", "content": "Say the combination twice."}],
                extra_headers={"X-Sanctum-Session": sid},
                extra_body={"sanctum": {"knowledge_bases": ["docs"]}},
            )
        )
        assert httpx.delete(f"{base}/sessions/{sid}", headers=auth).status_code == 200
        # a session document left in an open session: shutdown must drop it
        sid = httpx.post(f"{base}/sessions", json={"model": model}, headers=auth).json()["id"]
        httpx.post(
            f"{base}/sessions/{sid}/documents",
            json={"name": "left.md", "text": f"Left open with {marker} inside."},
            headers=auth,
        )
        # session documents that are refused
        for body, status in [
            ({"name": f"{marker}.md", "text": "   "}, 400),
            ({"name": "big.md", "text": f"{marker} " * 20_000}, 413),
        ]:
            r = httpx.post(f"{base}/sessions/{sid}/documents", json=body, headers=auth)
            assert r.status_code == status
            assert marker not in r.text
        # embeddings of content
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[marker, f"about {marker}"])
        # error paths: content in requests that are refused
        bad = [
            {"model": model, "messages": [{"role": "wizard", "content": marker}]},
            {"model": model, "messages": [{"role": "user", "content": marker * 3000}]},
            {"model": model, "temperature": 9, "messages": [{"role": "user", "content": marker}]},
        ]
        for body in bad:
            r = httpx.post(f"{base}/chat/completions", json=body, headers=auth, timeout=60)
            assert 400 <= r.status_code < 500
            assert marker not in r.text
        # a client that drops a stream half way
        with httpx.stream(
            "POST",
            f"{base}/chat/completions",
            headers=auth,
            timeout=60,
            json={
                "model": model,
                "max_tokens": 64,
                "stream": True,
                "messages": [{"role": "user", "content": f"Tell a story about {marker}."}],
            },
        ) as r:
            next(r.iter_lines())
    finally:
        assert running.stop() == 0
    # the scan below covers the usage outbox, which holds this run's signed records: three
    # one-shot calls, the torn-down session, the one ended at shutdown, the dropped stream
    outbox = running.data_dir / "node" / "outbox"
    lines = [line for seg in outbox.glob("*.seg") for line in seg.read_bytes().splitlines()]
    assert len(lines) >= 6
    leaks = files_containing(marker, [running.data_dir, REPO, Path("/tmp")])
    leaks += texts_containing(
        marker, {"stdout": "".join(running.stdout), "stderr": "".join(running.stderr)}
    )
    assert leaks == []
    # and the run did write what it should: logs with ids and counts
    assert "session ended" in "".join(running.stderr)
    assert "session document added" in "".join(running.stderr)
    # the operator-loaded knowledge base is on the node's disk, by design; not on the
    # control plane's that loaded it (and never in the logs)
    assert files_containing(kb_marker, [running.data_dir / "node"])
    assert files_containing(kb_marker, [running.data_dir / "control-plane"]) == []
    assert (
        texts_containing(
            kb_marker, {"stdout": "".join(running.stdout), "stderr": "".join(running.stderr)}
        )
        == []
    )


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """``make demo`` runs ``sanctum demo``: it must show a streamed answer and a summary."""
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "demo", "--data-dir", str(tmp_path / "demo")],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "assistant> " in result.stdout
    assert '"completion_tokens"' in result.stdout
    assert "session torn down" in result.stdout
    # the session holds its earlier turns
    assert "Zorblax" in result.stdout.split("user> What is my name?")[1].split("[usage")[0]
    # the platform's logs went to a file, not over the walk-through, and hold no content
    log = (tmp_path / "demo" / "platform.log").read_text()
    assert "node ready" in log and "data_plane.access" in log
    assert "data_plane.access" not in result.stdout + result.stderr
    assert "Zorblax" not in log and "green apples" not in log
    assert "usage record signed by node-1 (verified against its key" in result.stdout
    assert "fetched again from /v1/receipts: the same record" in result.stdout
    assert "downloaded the audit bundle of client demo as auditor" in result.stdout
    assert "inclusion proofs against the checkpoint: 1 of 1" in result.stdout
    assert "is the ledger's entry at log index" in result.stdout
    assert "ledger verified: " in result.stdout
    # a chat with retrieval over the demo documents, loaded with sanctum kb ingest
    assert "demo/docs: 4 ingested" in result.stdout
    assert "[searching knowledge base: docs]" in result.stdout
    sources = result.stdout.split("sources:")[1]
    assert sources.splitlines()[1].split("] ")[1].startswith("docs/billing.md chunk 0")
    assert os.path.isdir(tmp_path / "demo")
    # what the demo saved verifies with `sanctum verify`, the log key pinned
    saved = tmp_path / "demo" / "audit"
    (held,) = saved.glob("held-*.jws")
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "verify",
            "--log-key",
            str(tmp_path / "demo" / "keys" / TRUST_FILE),
            "--receipt",
            str(held),
            str(saved / "bundle-demo.json"),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # It ends by checking the node's statement: the same offline, and a stale nonce fails.
    assert "node verified: node-1 runs release" in result.stdout
    assert "the statement claims exactly what the logged statement claims" in result.stdout
    command = result.stdout.split("sanctum verify --statement ")[1].splitlines()[0].split()
    nonce = command[command.index("--nonce") + 1]

    def verify_statement_cli(the_nonce: str) -> subprocess.CompletedProcess[str]:
        args = [the_nonce if a == nonce else a for a in command]
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", "verify", "--statement", *args],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    fresh = verify_statement_cli(nonce)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "is allowed" in fresh.stdout and "is loaded" in fresh.stdout
    stale = verify_statement_cli("A" * 43)
    assert stale.returncode == 1 and "nonce" in stale.stderr
