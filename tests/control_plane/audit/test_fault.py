"""No receipt lost, none doubled: collection under SIGKILLed nodes and a broker outage.

Real processes throughout: a data-plane node with the bundled model, gunicorn, a Celery
worker and beat over a real redis-server. Client threads open and tear down sessions
(some with a one-token completion) while the node is killed with SIGKILL at random
moments and restarted, and Redis and the worker are stopped for a while (the worker
with SIGKILL, so a collection may die between its commit and its acknowledgement) and
started again. Afterwards every record the node ever stored, and so every session whose
end was answered, has exactly one receipt; the downloaded bundle verifies with
``sanctum verify`` and the log key pinned; and the tree head saved before the outage is
consistent with the last one.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from data_plane.outbox import parse_line
from shared.keyring import KEYRING_DIR
from shared.keys import write_key_pair
from shared.models import DEFAULT_MODEL_NAME
from shared.usage import peek_usage_record
from tests.conftest import REPO, child_env, signed_health, wait_until
from tests.control_plane.processes import DataPlaneNode

pytestmark = [pytest.mark.e2e, pytest.mark.model, pytest.mark.redis, pytest.mark.slow]

SESSIONS = 1000
CLIENTS = 6
NODE_KILLS = 4
OUTAGE_SECONDS = 8
CLIENT_ID = "fault"
QUESTION = "What is the capital city of France? Answer in one sentence."


def outbox_records(outbox: Path) -> dict[str, str]:
    """record id -> JWS of every intact record in the node's segments, read independently."""
    found: dict[str, str] = {}
    for segment in sorted(outbox.glob("*.seg")):
        for line in segment.read_bytes().split(b"\n")[:-1]:
            parsed = parse_line(line)
            if parsed is not None:
                found[parsed[2].record_id] = parsed[1]
    return found


class Sessions:
    """Client threads opening and tearing down sessions until there are enough answers."""

    def __init__(self, node: DataPlaneNode, api_key: str) -> None:
        self.node = node
        self.api_key = api_key
        self.answered: dict[str, str] = {}  # session id -> the usage record it was handed
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._churn, args=(i,)) for i in range(CLIENTS)]

    def start(self) -> Sessions:
        for t in self.threads:
            t.start()
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def _churn(self, number: int) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        turn = 0
        with httpx.Client(
            base_url=f"{self.node.api_url}/v1", headers=headers, timeout=60
        ) as client:
            while self.count() < SESSIONS:
                turn += 1
                try:
                    opened = client.post("/sessions", json={"model": DEFAULT_MODEL_NAME})
                    if opened.status_code != 201:
                        self.errors[f"open {opened.status_code}"] += 1
                        time.sleep(0.05)
                        continue
                    sid = opened.json()["id"]
                    if turn % 10 == number % 10:  # some sessions make a one-token call
                        client.post(
                            "/chat/completions",
                            json={
                                "model": DEFAULT_MODEL_NAME,
                                "max_tokens": 1,
                                "temperature": 0,
                                "messages": [{"role": "user", "content": QUESTION}],
                            },
                            headers={"X-Sanctum-Session": sid},
                        )
                    ended = client.delete(f"/sessions/{sid}")
                    if ended.status_code == 200:
                        with self._lock:
                            self.answered[sid] = ended.json()["usage_record"]
                    else:
                        self.errors[f"end {ended.status_code}"] += 1
                except httpx.TransportError:
                    self.errors["node down"] += 1
                    time.sleep(0.1)  # killed under us: keep going once it is back

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=600)


def test_sigkills_and_a_broker_outage_lose_and_double_no_receipt(
    redis_server, control_plane_factory, tmp_path: Path
):
    rng = random.Random(6)
    cp = control_plane_factory(
        redis_server.url,
        SANCTUM_CP_LEDGER__COLLECT_INTERVAL_SECONDS="1",
        SANCTUM_CP_LEDGER__CONNECT_TIMEOUT_SECONDS="1",
        SANCTUM_CP_LEDGER__TIMEOUT_SECONDS="5",
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="2",
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="1",
    )
    cp.manage("migrate", "-v0")
    log_key = Path(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])
    node_key = write_key_pair(tmp_path / "node-keys", "node")
    node = DataPlaneNode(tmp_path / "node", "node-1", log_key, node_key).start()
    worker = cp.worker()
    beat = cp.beat()
    printed = cp.manage(
        "bootstrap_demo",
        "--node-name",
        node.name,
        "--node-url",
        node.management_url,
        "--node-public-key",
        str(node_key.with_suffix(".pub")),
        "--client-id",
        CLIENT_ID,
    )
    assert printed["SANCTUM_ROLLOUT"] == "applied"
    web = cp.serve()
    auditor = cp.api(printed["SANCTUM_AUDITOR_TOKEN"])
    sessions = Sessions(node, printed["SANCTUM_API_KEY"])
    saved_head = tmp_path / "head-before-outage.txt"
    started = time.monotonic()
    beat_restarted = False

    def receipts() -> int:
        return auditor.get("/audit/receipts/", params={"client": CLIENT_ID, "limit": 1}).json()[
            "count"
        ]

    try:
        sessions.start()
        for kill in range(NODE_KILLS):
            goal = (kill + 1) * SESSIONS // (NODE_KILLS + 2) + rng.randint(-40, 40)
            assert wait_until(lambda g=goal: sessions.count() >= g, timeout=300, interval=0.01)
            time.sleep(rng.uniform(0, 0.2))
            assert node.process is not None
            node.process.stop(signal.SIGKILL)
            node.process = None
            if kill == 1:
                # The broker and the worker go too (the worker killed, maybe between a
                # commit and its acknowledgement); the node comes back meanwhile.
                assert wait_until(lambda: receipts() > 0, timeout=120)
                saved_head.write_bytes(auditor.get("/audit/checkpoint/").content)
                worker.stop(signal.SIGKILL)
                redis_server.stop()
                node.start()
                time.sleep(OUTAGE_SECONDS)
                redis_server.start()
                worker = cp.worker()
                if beat.proc.poll() is not None:  # beat outlives a broker outage...
                    beat = cp.beat()  # ...but if not, it is restarted like the worker
                    beat_restarted = True
            else:
                node.start()  # same ports; the outbox is reopened from disk
        sessions.join()
        assert sessions.count() >= SESSIONS, sessions.errors

        # Recovery: the node's outbox drains into the ledger.
        def drained() -> bool:
            health = signed_health(
                node.management_url,
                cp.data_dir / "keys" / KEYRING_DIR,
                node.name,
                node_key.with_suffix(".pub"),
            )
            return health["usage"]["pending"] == 0

        assert wait_until(drained, timeout=240, interval=1), worker.tail()
        on_disk = outbox_records(tmp_path / "node" / "outbox")
        bundle = auditor.get("/audit/bundle/", params={"client": CLIENT_ID}).content
        consistency = auditor.get(
            "/audit/consistency/", params={"old": int(saved_head.read_text().split("\n")[1])}
        ).content
    except BaseException:
        print("--- gunicorn\n" + web.tail(80) + "--- worker\n" + worker.tail(80))
        raise
    finally:
        sessions.join()
        auditor.close()
        node.stop()
    elapsed = time.monotonic() - started

    entries = [r["entry"] for r in json.loads(bundle)["receipts"]]
    logged = Counter(e["record"]["record_id"] for e in entries)
    by_session = Counter(e["record"]["session_id"] for e in entries)
    logged_jws = {e["node_jws"] for e in entries}
    assert [rid for rid, n in logged.items() if n > 1] == []  # no record twice
    assert [sid for sid, n in by_session.items() if n > 1] == []  # no session twice
    assert sorted(logged) == sorted(on_disk)  # every record the node stored, and no other
    assert set(on_disk.values()) == logged_jws
    lost = [sid for sid, jws in sessions.answered.items() if jws not in logged_jws]
    assert lost == []  # every answered end has its receipt: the very record handed out
    assert all(peek_usage_record(j)["client_id"] == CLIENT_ID for j in logged_jws)

    (tmp_path / "bundle.json").write_bytes(bundle)
    (tmp_path / "consistency.json").write_bytes(consistency)

    def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", "verify", "--log-key", str(log_key)]
            + [str(a) for a in args],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    checked = verify(tmp_path / "bundle.json")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert f"node signatures: {len(entries)} of {len(entries)}" in checked.stdout
    grown = verify("--consistency", saved_head, tmp_path / "consistency.json")
    assert grown.returncode == 0, grown.stdout + grown.stderr
    print(
        f"{len(sessions.answered)} answered sessions, {len(entries)} receipts, "
        f"{NODE_KILLS} node kills, beat restarted: {beat_restarted}, "
        f"errors {dict(sessions.errors)}, {elapsed:.0f} s"
    )
