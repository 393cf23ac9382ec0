"""Crash safety of the usage outbox, through the real node process.

Clients tear sessions down continuously while the node is killed with SIGKILL at random
moments and restarted. Afterwards every teardown that was answered has exactly one
record on disk (the very record the client got), no session has two, and everything the
management listener serves verifies. A torn or garbage tail in a segment is skipped at
start.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from data_plane.outbox import parse_line
from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from shared.usage import peek_usage_record
from tests.conftest import Node, Tenant, make_tenant, new_node

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
WORKERS = 4
SESSIONS = 160
KILLS = 4


def records_on_disk(outbox: Path) -> list[tuple[int, str]]:
    """(cursor, jws) of every complete, intact line in every segment, read independently."""
    found = []
    for segment in sorted(outbox.glob("*.seg")):
        for line in segment.read_bytes().split(b"\n")[:-1]:
            parsed = parse_line(line)
            if parsed is not None:
                found.append((parsed[0], parsed[1]))
    return found


def churn(node: Node, tenant: Tenant, answered: dict[str, str]) -> None:
    """Open and tear down sessions until there are enough or the node goes away."""
    try:
        with node.client(tenant, timeout=30) as c:
            while len(answered) < SESSIONS:
                opened = c.post("/sessions", json={"model": MODEL})
                if opened.status_code != 201:
                    continue
                sid = opened.json()["id"]
                ended = c.delete(f"/sessions/{sid}")
                if ended.status_code == 200:
                    answered[sid] = ended.json()["usage_record"]
    except httpx.TransportError:
        return  # killed under us: whatever was not answered may or may not be recorded


@pytest.mark.slow
def test_sigkill_during_teardowns_loses_and_doubles_nothing(
    tmp_path: Path, model_spec: ModelSpec
) -> None:
    rng = random.Random(6)
    node = new_node(tmp_path)
    tenant = make_tenant("gina", (MODEL,), limits=ClientLimits(max_sessions=WORKERS * 2))
    answered: dict[str, str] = {}
    kills = 0
    try:
        node.start()
        node.push([model_spec], [tenant])
        while True:
            workers = [
                threading.Thread(target=churn, args=(node, tenant, answered))
                for _ in range(WORKERS)
            ]
            for w in workers:
                w.start()
            if kills == KILLS:
                for w in workers:
                    w.join(timeout=300)
                break
            # let a random number of teardowns through, then kill at a random moment
            goal = len(answered) + rng.randint(10, 40)
            deadline = time.monotonic() + 120
            while len(answered) < goal and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
            assert node.stop(signal.SIGKILL) == -signal.SIGKILL
            kills += 1
            for w in workers:
                w.join(timeout=60)
            node.start()  # the saved config comes back; the outbox is reopened
        assert len(answered) >= SESSIONS
        # what the files hold, read without the node's own index
        on_disk = records_on_disk(node.data_dir / "outbox")
        cursors = [c for c, _ in on_disk]
        assert len(cursors) == len(set(cursors))
        sessions = Counter(peek_usage_record(jws)["session_id"] for _, jws in on_disk)
        assert [s for s, n in sessions.items() if n > 1] == []  # none doubled
        disk_jws = {jws for _, jws in on_disk}
        lost = [sid for sid, jws in answered.items() if jws not in disk_jws]
        assert lost == []  # none lost: each answered teardown's own record is there
        # what the management listener serves: all of it, each one verified
        served = node.usage()
        assert sorted(r["cursor"] for r in served) == sorted(cursors)
        opened = [node.open_record(r["jws"]) for r in served]
        assert {r.session_id for r in opened} >= set(answered)
        # and a torn write at the moment of a kill never stopped the node from starting
        assert "outbox opened" in "".join(node.output)
    finally:
        node.stop()


def test_torn_and_garbage_tails_are_skipped_at_start(tmp_path: Path, model_spec: ModelSpec) -> None:
    node = new_node(tmp_path)
    tenant = make_tenant("hal", (MODEL,))
    try:
        node.start()
        node.push([model_spec], [tenant])
        with node.client(tenant) as c:
            for _ in range(3):
                sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
                assert c.delete(f"/sessions/{sid}").status_code == 200
        before = node.usage()
        assert node.stop(signal.SIGKILL) == -signal.SIGKILL
        segment = sorted((node.data_dir / "outbox").glob("*.seg"))[-1]
        intact = segment.read_bytes()
        # a garbage line that happens to end in LF, then half a record with no LF
        half = intact.split(b"\n")[0][: len(intact.split(b"\n")[0]) // 2]
        segment.write_bytes(intact + b"\x00\x00garbage\n" + half)
        node.start()
        assert node.usage() == before  # the garbage is not served
        assert segment.read_bytes() == intact + b"\x00\x00garbage\n"  # the torn half is cut
        with node.client(tenant) as c:
            sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
            held = c.delete(f"/sessions/{sid}").json()["usage_record"]
        after = node.usage()
        assert after[:3] == before and after[3]["jws"] == held
        node.stop()
        node.start()
        assert node.usage() == after
        log = "".join(node.output)
        assert "torn_tails=1" in log and "bad_lines=1" in log
    finally:
        node.stop()
