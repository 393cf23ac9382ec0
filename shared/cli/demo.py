"""``sanctum demo``: start ``sanctum up``, walk through the main job, stop it, exit 0.

The walk-through speaks plain HTTP to the printed API base, as any OpenAI-compatible
client would: it opens a session, streams a chat, continues it, and tears it down to
show the usage summary that is all the platform keeps, and the node-signed usage record
(the client's copy of its receipt), verified against the node's public key. Then, as an
auditor would, it waits for the control plane to log that record, downloads the demo
client's audit bundle through the control plane's API, and verifies it offline with the
control plane's log key pinned (``shared.ledger``, what ``sanctum verify`` runs).
Then it asks the node, with a fresh nonce, for its signed statement of what it runs, and
checks it against the ledger, the allowed releases and the held receipt
(``shared.attestation``, what ``sanctum verify --statement`` runs). Last, it loads a
small document set (``demo_docs/``) into the demo client's knowledge
base with ``sanctum kb ingest``, as an operator would, and asks a question those
documents answer, showing the sources.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from shared.attestation import verify_statement
from shared.cli.up import NODE_NAME
from shared.cli.verify import load_log_key
from shared.keys import NODE, KeyFileError, b64url, key_id, load_public_key
from shared.ledger import Report, verify_held_receipt
from shared.trust import TRUST_FILE
from shared.usage import UsageRecord, UsageRecordError, open_usage_record

READY_TIMEOUT = 300
DEMO_DOCS = Path(__file__).resolve().parent / "demo_docs"
DEMO_QUESTION = "Which insurers does the clinic accept?"
COLLECT_TIMEOUT = 120


class LedgerCheckFailed(RuntimeError):
    """The demo's record never reached the ledger, or its bundle did not verify."""


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the platform and show a session end to end")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory for the platform (default: a temporary one)",
    )
    demo.add_argument(
        "--show-logs",
        action="store_true",
        help="print the platform's logs here too (default: DATA_DIR/platform.log)",
    )
    demo.set_defaults(func=run)


def start_up(
    data_dir: Path, extra: list[str] | None = None, log: IO[str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``sanctum up`` on free ports and return it with the lines it printed; its
    logs (stderr) go to ``log``, or to ours."""
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
            *(extra or []),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: dict[str, str] = {}
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            name, sep, value = line.strip().partition("=")
            if sep and name.startswith("SANCTUM_"):
                lines[name] = value
                if name == "SANCTUM_READY":
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(READY_TIMEOUT) or "SANCTUM_READY" not in lines:
        stop_up(proc)
        raise RuntimeError("sanctum up did not become ready")
    return proc, lines


def stop_up(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def say(text: str = "") -> None:
    print(text, flush=True)


def stream_chat(
    client: httpx.Client,
    body: dict[str, Any],
    session: str | None,
    on_text: Callable[[str], None],
    sanctum: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """POST a streamed chat; call ``on_text`` per delta; return the last chunk (usage).

    The ``sanctum`` fields of the stream (sources, in its last chunk) go in ``sanctum``.
    """
    last: dict[str, Any] = {}
    with client.stream(
        "POST",
        "/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers={"X-Sanctum-Session": session} if session else {},
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if sanctum is not None and "sanctum" in chunk:
                sanctum.update(chunk["sanctum"])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    on_text(text)
            last = chunk if chunk.get("usage") else last
    return last


def walk_through(lines: dict[str, str], data_dir: Path) -> None:
    base, key, model = lines["SANCTUM_API_BASE"], lines["SANCTUM_API_KEY"], lines["SANCTUM_MODEL"]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        say(f"models this key may use: {[m['id'] for m in client.get('/models').json()['data']]}")
        session = client.post("/sessions", json={"model": model, "ttl": 300}).json()["id"]
        say(f"session opened: {session}")
        for question in (
            "Hello! My name is Zorblax. Please remember my name.",
            "I like green apples.",
            "What is my name?",  # the session holds the earlier turns
        ):
            print(f"\nuser> {question}\nassistant> ", end="", flush=True)
            last = stream_chat(
                client,
                {
                    "model": model,
                    "max_tokens": 40,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": question}],
                },
                session,
                lambda text: print(text, end="", flush=True),
            )
            say(f"\n  [usage: {last.get('usage')}]")
        ended = client.delete(f"/sessions/{session}")
        ended.raise_for_status()
        summary = ended.json()
        say("\nsession torn down; what Sanctum keeps of it is this usage summary:")
        say(json.dumps({k: v for k, v in summary.items() if k != "usage_record"}, indent=2))
        record = show_usage_record(client, session, summary["usage_record"], data_dir)
    verify_ledger(lines, record, summary["usage_record"], data_dir)
    verify_node_statement(lines, record, summary["usage_record"], data_dir)


def show_usage_record(
    client: httpx.Client, session: str, token: str, data_dir: Path
) -> UsageRecord:
    """Verify the teardown's signed record against the node's key and summarise it."""
    node_key = load_public_key(data_dir / "keys" / f"{NODE}.pub")
    record = open_usage_record(token, {NODE_NAME: node_key})
    say(
        f"\nusage record signed by {record.node_id} (verified against its key "
        f"{key_id(node_key)[:16]}...), the client's copy of its receipt:"
    )
    say(f"  record {record.record_id}")
    say(f"  session {record.session_id} of client {record.client_id}")
    say(f"  model {record.model} {record.model_version}, sha256 {record.model_sha256[:16]}...")
    say(f"  {record.started_at} to {record.ended_at}, ended by {record.ended_by}")
    say(
        f"  {record.request_count} requests, {record.prompt_tokens} prompt tokens, "
        f"{record.completion_tokens} completion tokens"
    )
    say("  no prompt, no answer, no transcript: ids, times and counts only")
    again = client.get(f"/receipts/{session}")
    again.raise_for_status()
    if again.json()["usage_record"] == token:
        say("  fetched again from /v1/receipts: the same record")
    else:
        raise UsageRecordError("/v1/receipts returned a different record")
    return record


def show_report(report: Report, what: str) -> None:
    """Print what held, the notes and what failed; raise when anything failed."""
    for line in report.passed:
        say(f"  ok    {line}")
    for warning in report.warnings:
        say(f"  note  {warning}")
    if not report.ok:
        for failure in report.failures:
            say(f"  FAIL  {failure}")
        raise LedgerCheckFailed(f"{what} did not verify ({len(report.failures)} failures)")


def verify_ledger(lines: dict[str, str], record: UsageRecord, held: str, data_dir: Path) -> None:
    """Wait until the control plane has logged ``record``, download the client's bundle as
    an auditor, and verify it and the held copy with the log key pinned.

    The key is the control plane's public key file on this machine, not one the server
    hands out: an auditor pins the key the operator gave them.
    """
    say(
        "\nledger: the node keeps the record in its outbox until the control plane "
        "collects it;\n  waiting for it to be verified, logged and acknowledged..."
    )
    headers = {"Authorization": f"Token {lines['SANCTUM_AUDITOR_TOKEN']}"}
    with httpx.Client(base_url=lines["SANCTUM_CP_API"], headers=headers, timeout=60) as cp:
        deadline = time.monotonic() + COLLECT_TIMEOUT
        while True:
            found = cp.get(f"audit/receipts/{record.record_id}/")
            if found.status_code == 200:
                break
            if found.status_code != 404 or time.monotonic() > deadline:
                raise LedgerCheckFailed(
                    f"record {record.record_id} was not logged (HTTP {found.status_code})"
                )
            time.sleep(0.5)
        receipt = found.json()
        say(f"  logged at index {receipt['log_index']} of the ledger at {receipt['logged_at']}")
        response = cp.get("audit/bundle/", params={"client": record.client_id})
        response.raise_for_status()
        bundle = response.content
    say(
        f"  downloaded the audit bundle of client {record.client_id} as auditor "
        f"{lines.get('SANCTUM_AUDITOR_USER', '')} ({len(bundle)} bytes)"
    )
    key_file = data_dir / "keys" / TRUST_FILE
    _, log_key = load_log_key(key_file)
    report = verify_held_receipt(held, bundle, log_key=log_key)
    say(f"verifying it offline, log key pinned to {key_file} (kid {key_id(log_key)[:16]}...):")
    show_report(report, "the audit bundle")
    saved = data_dir / "audit"
    saved.mkdir(exist_ok=True)
    (saved / f"bundle-{record.client_id}.json").write_bytes(bundle)
    (saved / f"held-{record.record_id}.jws").write_text(held + "\n")
    say(
        f"ledger verified: {report.receipt_count} receipt(s) of client {report.client_id} "
        f"under the signed tree head of size {report.tree_size}, including the one held."
    )
    say(
        f"  the same offline: sanctum verify --log-key {key_file} "
        f"--receipt {saved / f'held-{record.record_id}.jws'} "
        f"{saved / f'bundle-{record.client_id}.json'}"
    )


def verify_node_statement(
    lines: dict[str, str], record: UsageRecord, held: str, data_dir: Path
) -> None:
    """Ask the node what it runs (a fresh nonce), get its logged statement's proof and the
    allowed releases from the control plane, and check all of it with the held receipt."""
    nonce = b64url(os.urandom(32))
    say(f"\nattestation: asking the node what it runs, with a fresh nonce {nonce[:12]}...")
    headers = {"Authorization": f"Bearer {lines['SANCTUM_API_KEY']}"}
    with httpx.Client(base_url=lines["SANCTUM_API_BASE"], headers=headers, timeout=60) as api:
        answer = api.get("/attestation", params={"nonce": nonce})
        answer.raise_for_status()
        statement = answer.text
    auditor = {"Authorization": f"Token {lines['SANCTUM_AUDITOR_TOKEN']}"}
    with httpx.Client(base_url=lines["SANCTUM_CP_API"], headers=auditor, timeout=60) as cp:
        index = record.statement_index
        if index is None:  # the record was signed before the statement was logged
            listed = cp.get(
                "audit/statements/",
                params={"node": record.node_id, "ordering": "-log_index", "limit": 1},
            )
            listed.raise_for_status()
            rows = listed.json()
            rows = rows.get("results", rows) if isinstance(rows, dict) else rows
            if not rows:
                raise LedgerCheckFailed(f"no statement of node {record.node_id} is logged")
            index = rows[0]["log_index"]  # the node's latest
        proof = cp.get(f"audit/statements/{index}/proof/")
        proof.raise_for_status()
        releases = cp.get("audit/releases/")
        releases.raise_for_status()
    key_file = data_dir / "keys" / TRUST_FILE
    _, log_key = load_log_key(key_file)
    report = verify_statement(
        statement,
        nonce=nonce,
        proof=proof.content,
        releases=releases.content,
        log_key=log_key,
        expect_models=[record.model_sha256],
        receipt=held,
    )
    say("verifying the node's statement, the log key pinned as before:")
    show_report(report, "the node's statement")
    saved = data_dir / "audit"
    (saved / "statement.jws").write_text(statement + "\n")
    (saved / "statement-proof.json").write_bytes(proof.content)
    (saved / "releases.json").write_bytes(releases.content)
    said = report.statement
    assert said is not None
    say(
        f"node verified: {said.node_id} runs release {said.release_digest[:16]}..., "
        f"llama-cpp-python {said.llama_cpp.version}, config version "
        f"{said.config.version if said.config else '-'}, the model file "
        f"{record.model_sha256[:16]}... as mapped; logged at index {report.log_index}."
    )
    say(
        f"  the same offline: sanctum verify --statement {saved / 'statement.jws'} "
        f"--nonce {nonce} --proof {saved / 'statement-proof.json'} "
        f"--releases {saved / 'releases.json'} --log-key {key_file} "
        f"--expect-model {record.model_sha256} "
        f"--receipt {saved / f'held-{record.record_id}.jws'} --max-age 86400"
    )


def load_demo_documents(lines: dict[str, str], data_dir: Path) -> bool:
    """``sanctum kb ingest`` the demo documents into the demo client's ``docs`` base."""
    command = [
        sys.executable,
        "-m",
        "shared.cli",
        "kb",
        "ingest",
        "--client",
        lines["SANCTUM_CLIENT_ID"],
        "--kb",
        "docs",
        "--no-progress",
        str(DEMO_DOCS),
    ]
    # Through the control plane, with the admin's API token: no signing key on this side.
    env = {
        **os.environ,
        "SANCTUM_CONTROL_PLANE_URL": lines["SANCTUM_CONTROL_PLANE_URL"],
        "SANCTUM_TOKEN": lines["SANCTUM_TOKEN"],
    }
    say(f"\n$ sanctum kb ingest --client {lines['SANCTUM_CLIENT_ID']} --kb docs {DEMO_DOCS}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    for line in (done.stdout + done.stderr).splitlines():
        say(f"  {line}")
    return done.returncode == 0


def ask_with_retrieval(lines: dict[str, str]) -> None:
    """A one-shot chat that searches the ``docs`` knowledge base; print its sources."""
    base, key, model = lines["SANCTUM_API_BASE"], lines["SANCTUM_API_KEY"], lines["SANCTUM_MODEL"]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        print(f"\nuser> {DEMO_QUESTION}   [searching knowledge base: docs]\nassistant> ", end="")
        found: dict[str, Any] = {}
        stream_chat(
            c,
            {
                "model": model,
                "max_tokens": 48,
                "temperature": 0,
                "messages": [{"role": "user", "content": DEMO_QUESTION}],
                "sanctum": {"knowledge_bases": ["docs"], "top_k": 2},
            },
            None,
            lambda text: print(text, end="", flush=True),
            sanctum=found,
        )
        say("\n  sources:")
        for source in found.get("sources", []):
            first = source["text"].strip().splitlines()[0]
            say(
                f"    [{source['score']:.2f}] {source['knowledge_base']}/{source['document']} "
                f"chunk {source['chunk']}: {first}"
            )


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sanctum-demo-"))
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = data_dir / "platform.log"
        log = None if args.show_logs else stack.enter_context(log_path.open("a"))
        say(f"starting sanctum up (data in {data_dir}); the first start loads the model...")
        if log is not None:
            say(f"  the platform's logs (ids, counts, durations) go to {log_path}")
        try:
            proc, lines = start_up(data_dir, log=log)
        except RuntimeError as exc:
            say(f"error: {exc}")
            _show_log_tail(log_path if log is not None else None)
            return 1
        try:
            say(f"ready: API at {lines['SANCTUM_API_BASE']}")
            walk_through(lines, data_dir)
            if not load_demo_documents(lines, data_dir):
                say("error: loading the demo documents failed")
                return 1
            ask_with_retrieval(lines)
        except (
            httpx.HTTPError,
            KeyError,
            KeyFileError,
            UsageRecordError,
            LedgerCheckFailed,
        ) as exc:
            say(f"error: the walk-through failed: {type(exc).__name__}: {exc}")
            _show_log_tail(log_path if log is not None else None)
            return 1
        finally:
            code = stop_up(proc)
        say(f"\nsanctum up stopped (exit {code}).")
        if code != 0:
            _show_log_tail(log_path if log is not None else None)
        return 0 if code == 0 else 1
    return 1  # not reached


def _show_log_tail(path: Path | None, lines: int = 40) -> None:
    """After a failure, the end of the platform's log (when it went to a file)."""
    if path is None or not path.exists():
        return
    say(f"the last lines of {path}:")
    for line in path.read_text(errors="replace").splitlines()[-lines:]:
        say(f"  | {line}")
