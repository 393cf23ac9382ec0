"""Two collectors never interleave appends: on PostgreSQL the advisory lock, on SQLite
the database's write lock, serialise them; the same record offered to both is logged once.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection, connections

from control_plane.audit.ledger import append
from control_plane.audit.models import Receipt, TreeHead
from shared.checkpoint import open_checkpoint
from shared.keyring import KEYRING_DIR, Keyring
from shared.merkle import InMemoryTree
from shared.trust import LOG
from tests.conftest import REPO, throwaway_trust
from tests.control_plane.audit.conftest import verified
from tests.control_plane.fakes import FakeNode
from tests.control_plane.processes import ControlPlane

BATCHES, PER_BATCH, COLLECTORS = 24, 3, 4


@pytest.mark.django_db(transaction=True)
def test_concurrent_collectors_on_postgresql_append_each_record_once(check_ledger):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's advisory lock; test_concurrent_processes_on_sqlite covers SQLite")
    fake = FakeNode("n1", throwaway_trust())
    batches = [verified(fake, PER_BATCH) for _ in range(BATCHES)]
    barrier = threading.Barrier(COLLECTORS)
    errors: list[BaseException] = []

    def collector(seed: int) -> None:
        order = batches[:]
        random.Random(seed).shuffle(order)  # each offers every batch, in its own order
        try:
            barrier.wait()
            for batch in order:
                append(batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=collector, args=(i,)) for i in range(COLLECTORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    assert errors == []
    assert Receipt.objects.count() == BATCHES * PER_BATCH
    assert TreeHead.objects.count() == BATCHES  # one per batch: whoever came first
    check_ledger()


COLLECTOR = """
import json, random, sys
from control_plane.audit.ledger import Verified, append
from shared.usage import open_usage_record
from shared.keys import key_id, public_key_from_pem
job = json.load(open(sys.argv[-1]))
pem = job["pem"]
key = public_key_from_pem(pem)
batches = [[Verified(t, open_usage_record(t, {"n1": key}), key_id(key), pem) for t in b]
           for b in job["batches"]]
random.Random(job["seed"]).shuffle(batches)
for batch in batches:
    append(batch)
print("done")
"""


@pytest.mark.e2e
def test_concurrent_processes_on_sqlite_append_each_record_once(tmp_path: Path):
    cp = ControlPlane(tmp_path / "cp")
    cp.manage("migrate", "-v0")
    fake = FakeNode("n1", throwaway_trust())
    tokens = [[fake.add_usage("acme")[1] for _ in range(PER_BATCH)] for _ in range(BATCHES)]
    pem = fake.node_public_pem
    script = tmp_path / "collector.py"
    script.write_text(COLLECTOR)
    procs = []
    for seed in range(3):
        job = tmp_path / f"job-{seed}.json"
        job.write_text(json.dumps({"pem": pem, "batches": tokens, "seed": seed}))
        code = f"import sys; sys.argv.append({str(job)!r}); exec(open({str(script)!r}).read())"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "control_plane", "shell", "-c", code],
                cwd=REPO,
                env=cp.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]

    db = sqlite3.connect(cp.data_dir / "control-plane.sqlite3")
    leaves = db.execute("SELECT log_index, leaf_hash FROM audit_receipt ORDER BY log_index")
    indexes, hashes = zip(*leaves.fetchall(), strict=True)
    heads = db.execute("SELECT size, checkpoint FROM audit_treehead ORDER BY size").fetchall()
    ids = db.execute("SELECT COUNT(DISTINCT record_id) FROM audit_receipt").fetchone()[0]
    db.close()
    assert list(indexes) == list(range(BATCHES * PER_BATCH)) and ids == len(indexes)
    assert [size for size, _ in heads] == [PER_BATCH * (i + 1) for i in range(BATCHES)]
    log_key = Keyring(cp.data_dir / "keys" / KEYRING_DIR).signer(LOG).public_key()
    tree = InMemoryTree(hashes)
    for size, note in heads:
        assert open_checkpoint(note, log_key).root_hash == tree.root(size)
