"""The restore drill: real PostgreSQL, a real node, the real tools, the auditor's CLI.

Collect, back up (``pg_dump -Fc``), collect more, and while an auditor keeps the tree head
of that moment, restore the older backup (``pg_restore --clean`` into the same database).
The restored control plane is behind the tree head it handed out: it refuses to sign
(even with the node down, thanks to the witness file on its own volume), then collects
the lost records again from the node, puts them back at their indexes, and logs the new
one after them. Every record the node ever wrote is in the ledger once, and
``sanctum verify --consistency`` holds from the auditor's pre-restore tree head.
docs/operations.md, "Backups and restore", is the procedure this follows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shared.keys import write_key_pair
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import REPO, child_env
from tests.control_plane.audit.test_fault import outbox_records
from tests.control_plane.processes import ControlPlane, DataPlaneNode, require_tool
from tests.e2e.postgres import throwaway_database

pytestmark = [pytest.mark.e2e, pytest.mark.model, pytest.mark.postgres]

CLIENT_ID = "drill"


def end_sessions(node: DataPlaneNode, api_key: str, count: int) -> list[str]:
    """Open and end ``count`` sessions: each end is a node-signed usage record."""
    records = []
    with httpx.Client(
        base_url=f"{node.api_url}/v1",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as client:
        for _ in range(count):
            opened = client.post("/sessions", json={"model": DEFAULT_MODEL_NAME})
            assert opened.status_code == 201, opened.text
            ended = client.delete(f"/sessions/{opened.json()['id']}")
            assert ended.status_code == 200, ended.text
            records.append(ended.json()["usage_record"])
    return records


def run_manage(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control_plane", *args],
        cwd=REPO,
        env=cp.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree_size(cp: ControlPlane) -> int:
    out = run_manage(cp, "collect_usage")
    assert out.returncode == 0, out.stdout + out.stderr
    return int(out.stdout.rsplit("tree_size=", 1)[1].split()[0])


def test_restore_an_older_backup_and_the_ledger_stays_whole(control_plane_factory, tmp_path: Path):
    pg_dump, pg_restore = require_tool("pg_dump"), require_tool("pg_restore")
    witness = tmp_path / "witness-volume" / "ledger-witness"  # not in the backup set
    with throwaway_database(tmp_path / "pg") as db:
        cp = control_plane_factory(
            DATABASE_URL=db.direct_url, SANCTUM_CP_LEDGER__WITNESS_FILE=str(witness)
        )
        cp.manage("migrate", "-v0")
        trust_keys = Path(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])
        node_key = write_key_pair(tmp_path / "node-keys", "node")
        node = DataPlaneNode(tmp_path / "node", "node-1", trust_keys, node_key).start()
        try:
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
            api_key = printed["SANCTUM_API_KEY"]

            # Collect (the node's statement first, then its records); back up; collect more.
            end_sessions(node, api_key, 3)
            statements = db.query("SELECT count(*) FROM audit_statement")[0][0]
            assert statements >= 1  # logged when the node applied its config, and since
            before = tree_size(cp)
            assert before == 3 + statements
            backup = tmp_path / "backups" / "sanctum.dump"
            backup.parent.mkdir()
            subprocess.run(
                [pg_dump, "-Fc", "-f", str(backup), "--dbname", db.direct_url],
                check=True,
                timeout=120,
            )
            end_sessions(node, api_key, 3)
            assert tree_size(cp) == before + 3  # the node's claims did not change

            # An auditor keeps the tree head of this moment.
            cp.serve()
            with cp.api(printed["SANCTUM_AUDITOR_TOKEN"]) as auditor:
                kept = auditor.get("/audit/checkpoint/")
            assert kept.status_code == 200 and kept.text.split("\n")[1] == str(before + 3)
            auditor_head = tmp_path / "auditor" / "head-before-restore.txt"
            auditor_head.parent.mkdir()
            auditor_head.write_bytes(kept.content)
            cp.stop()

            # Restore the older backup into the same database.
            subprocess.run(
                [
                    pg_restore,
                    "--clean",
                    "--if-exists",
                    "--single-transaction",
                    "--no-owner",
                    "--dbname",
                    db.direct_url,
                    str(backup),
                ],
                check=True,
                timeout=120,
            )
            assert db.query("SELECT max(size) FROM audit_treehead") == [(before,)]

            # Behind: it says so, and signs nothing, even with the node out of reach.
            status = run_manage(cp, "ledger_status")
            assert status.returncode != 0
            assert "SANCTUM_LEDGER_BEHIND=3" in status.stdout
            assert "ledger behind: 3 records to re-collect" in status.stdout
            end_sessions(node, api_key, 1)  # a new record waits on the node
            node.stop()
            refused = run_manage(cp, "collect_usage")
            assert refused.returncode != 0
            assert "ledger behind: 3 records to re-collect" in refused.stdout
            assert db.query("SELECT max(size) FROM audit_treehead") == [(before,)]
            assert db.query("SELECT count(*) FROM audit_receipt") == [(3,)]

            # The node is back: the lost records are collected again, then the new one
            # (its statement is the one logged before the backup: nothing new to log).
            node.start()
            assert tree_size(cp) == before + 4
            ok = run_manage(cp, "ledger_status")
            assert ok.returncode == 0 and "SANCTUM_LEDGER_STATUS=ok" in ok.stdout

            cp.serve()
            with cp.api(printed["SANCTUM_AUDITOR_TOKEN"]) as auditor:
                bundle = auditor.get("/audit/bundle/", params={"client": CLIENT_ID})
                consistency = auditor.get("/audit/consistency/", params={"old": before + 3})
            assert bundle.status_code == 200 and consistency.status_code == 200
        finally:
            cp.stop()
            node.stop()

    # Every record the node ever wrote is in the ledger, once.
    entries = [r["entry"] for r in json.loads(bundle.content)["receipts"]]
    logged = Counter(e["record"]["record_id"] for e in entries)
    on_disk = outbox_records(tmp_path / "node" / "outbox")
    assert len(on_disk) == 7
    assert sorted(logged) == sorted(on_disk) and set(logged.values()) == {1}
    assert {e["node_jws"] for e in entries} == set(on_disk.values())

    # The auditor's pre-restore tree head is a prefix of the tree after recovery.
    (tmp_path / "auditor" / "bundle.json").write_bytes(bundle.content)
    (tmp_path / "auditor" / "consistency.json").write_bytes(consistency.content)

    def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", "verify", "--log-key", str(trust_keys)]
            + [str(a) for a in args],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    checked = verify(tmp_path / "auditor" / "bundle.json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "node signatures: 7 of 7" in checked.stdout
    grown = verify("--consistency", auditor_head, tmp_path / "auditor" / "consistency.json")
    assert grown.returncode == 0, grown.stdout + grown.stderr
