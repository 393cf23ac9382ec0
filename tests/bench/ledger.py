"""Receipt ledger: appends per second on SQLite and PostgreSQL; proofs at a million entries.

Appending is what collection does once a page of records has arrived from a node: check
each node signature, then in one transaction under the ledger lock insert the receipts
and the finished subtree hashes and sign the new tree head. It is measured at three
batch sizes (one record per transaction, the worst case; 100; the collector's default
page of 500) on a fresh database of each kind, each in its own process with the real
settings, beside the same work with no database at all (the ceiling).

Proofs: a tree of 1,000,000 leaves in memory (``shared.merkle.InMemoryTree``, the same
RFC 6962 code the control plane's SQL store feeds); inclusion and consistency proof sizes
and the time to make and check them; and a bundle of 1,000 receipts against that tree,
checked as ``sanctum verify`` does.

``python -m tests.bench ledger``; PostgreSQL comes from ``scripts/test-services.sh
database-url`` (``make bench`` starts it), in a database made for the run and dropped
after it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.bench import usage_record, write_section

REPO = Path(__file__).resolve().parents[2]
BATCHES = {1: 300, 100: 3000, 500: 5000}  # batch size -> records appended at that size
LEAVES = 1_000_000
SAMPLES = 2000
BUNDLE_RECEIPTS = 1000


# --- appends (child process, one per database) --------------------------------------------


def _records(count: int, seed: int, clients: int = 20) -> tuple[str, list[str]]:
    """A node key (PEM) and ``count`` records it signed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shared.keys import public_pem
    from shared.usage import sign_usage_record

    key = Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
    start = datetime(2025, 1, 1, tzinfo=UTC)
    tokens = []
    for n in range(count):
        ended = start + timedelta(seconds=n)
        record = usage_record(n, f"client-{n % clients}", ended)
        tokens.append(sign_usage_record(record, key))
    return public_pem(key.public_key()).decode(), tokens


def _verified(pem: str, tokens: list[str]) -> list[Any]:
    from control_plane.audit.ledger import Verified
    from shared.keys import key_id, public_key_from_pem
    from shared.usage import open_usage_record

    key = public_key_from_pem(pem)
    kid = key_id(key)
    return [Verified(t, open_usage_record(t, {"node-1": key}), kid, pem) for t in tokens]


def child() -> None:
    """Migrate a fresh database, append at each batch size, print the rates as JSON."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from control_plane.audit.ledger import append
    from control_plane.audit.models import Receipt

    call_command("migrate", verbosity=0)
    job = json.loads(sys.stdin.read())
    results: dict[str, Any] = {"vendor": connection.vendor, "rates": {}}
    started = time.perf_counter()
    verified = _verified(job["pem"], job["tokens"])  # what collection checks first
    results["verify_rate"] = len(verified) / (time.perf_counter() - started)
    offset = 0
    for size, count in BATCHES.items():
        items = verified[offset : offset + count]
        offset += count
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, count, size):
            append(items[i : i + size])
        results["rates"][str(size)] = count / (time.perf_counter() - started)
        results.setdefault("cpu_rates", {})[str(size)] = count / (time.process_time() - cpu)
    results["receipts"] = Receipt.objects.count()
    # What an auditor's download costs: one client's bundle, proofs from the SQL store.
    from control_plane.audit.scopes import EVERY_CLIENT
    from control_plane.audit.services import Period, client_bundle

    started = time.perf_counter()
    bundle = client_bundle("client-0", Period(), scope=EVERY_CLIENT)
    results["bundle"] = {
        "seconds": time.perf_counter() - started,
        "bytes": len(bundle),
        "receipts": Receipt.objects.filter(client="client-0").count(),
    }
    print(json.dumps(results))


def in_memory_rate(pem: str, tokens: list[str], size: int) -> tuple[float, float]:
    """The same work with no database: build each entry and its leaf hash, append to a
    CompactRange, sign a checkpoint per batch (records verified beforehand)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shared.checkpoint import Checkpoint, sign_checkpoint
    from shared.keys import public_key_from_pem
    from shared.ledger import LogEntry
    from shared.merkle import CompactRange
    from shared.usage import format_timestamp, open_usage_record

    key = public_key_from_pem(pem)
    log_key = Ed25519PrivateKey.generate()
    rng = CompactRange()
    stamp = format_timestamp(datetime.now(UTC))
    records = [open_usage_record(token, {"node-1": key}) for token in tokens]
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(tokens), size):
        for token, record in zip(tokens[i : i + size], records[i : i + size], strict=True):
            rng.append(LogEntry(record=record, node_jws=token, logged_at=stamp).leaf_hash())
        sign_checkpoint(Checkpoint("bench/log", rng.size, rng.root()), log_key)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(tokens) / wall, len(tokens) / cpu


def _postgres_url() -> str | None:
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "test-services.sh"), "database-url"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _run_child(env: dict[str, str], job: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", "from tests.bench.ledger import child; child()"],
        cwd=REPO,
        env=env,
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def append_rates() -> dict[str, dict[str, Any]]:
    import psycopg

    total = sum(BATCHES.values())
    pem, tokens = _records(total, seed=6)
    job = {"pem": pem, "tokens": tokens}
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SANCTUM_CP_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))
    }
    base.update(PYTHONPATH=str(REPO), DJANGO_SETTINGS_MODULE="control_plane.settings")
    out: dict[str, dict[str, Any]] = {}
    measured = {str(size): in_memory_rate(pem, tokens[:3000], size) for size in BATCHES}
    out["in memory (no database)"] = {
        "rates": {size: wall for size, (wall, _) in measured.items()},
        "cpu_rates": {size: cpu for size, (_, cpu) in measured.items()},
    }
    with tempfile.TemporaryDirectory(prefix="sanctum-bench-ledger-", dir=REPO / "var") as tmp:
        out["SQLite"] = _run_child({**base, "SANCTUM_CP_DATA_DIR": f"{tmp}/sqlite"}, job)
        url = _postgres_url()
        if url is None:
            out["PostgreSQL"] = {"error": "not available (scripts/test-services.sh start)"}
            return out
        name = f"sanctum_bench_{os.getpid()}"
        admin = url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        try:
            env = {
                **base,
                "SANCTUM_CP_DATA_DIR": f"{tmp}/pg",
                "DATABASE_URL": url.rsplit("/", 1)[0] + f"/{name}",
            }
            out["PostgreSQL"] = _run_child(env, job)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return out


# --- proofs at a million entries ----------------------------------------------------------


def _timed(fn: Any, runs: int) -> float:
    """Median seconds per call over ``runs`` calls (in batches, to hide the clock)."""
    per = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(runs // 5):
            fn()
        per.append((time.perf_counter() - started) / (runs // 5))
    return statistics.median(per)


def proofs() -> dict[str, Any]:
    import base64
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shared.checkpoint import Checkpoint, sign_checkpoint
    from shared.keys import public_key_from_pem
    from shared.ledger import ReceiptProof, build_bundle, make_log_entry, verify_bundle
    from shared.merkle import (
        InMemoryTree,
        leaf_hash,
        verify_consistency,
        verify_inclusion,
    )

    rnd = random.Random(6)
    pem, tokens = _records(BUNDLE_RECEIPTS, seed=7, clients=1)
    node_key = public_key_from_pem(pem)
    stamp = "2025-02-01T00:00:00.000Z"
    entries = [make_log_entry(t, {"node-1": node_key}, stamp) for t in tokens]
    tree = InMemoryTree()
    started = time.perf_counter()
    # The bundle's receipts are spread through the log, the rest are other clients'.
    positions = sorted(rnd.sample(range(LEAVES), BUNDLE_RECEIPTS))
    placed = dict(zip(positions, entries, strict=True))
    for n in range(LEAVES):
        entry = placed.get(n)
        tree.append(entry.leaf_hash() if entry else leaf_hash(hashlib.sha256(b"%d" % n).digest()))
    build = time.perf_counter() - started
    root = tree.root()

    indexes = [rnd.randrange(LEAVES) for _ in range(SAMPLES)]
    incl = {i: tree.inclusion_proof(i) for i in indexes}
    lengths = [len(p) for p in incl.values()]
    it = iter(indexes * 2)

    def make_inclusion() -> None:
        tree.inclusion_proof(next(it))

    gen_incl = _timed(make_inclusion, SAMPLES)
    it2 = iter(indexes)

    def check_inclusion() -> None:
        i = next(it2)
        verify_inclusion(tree.leaf_hash(i), i, LEAVES, incl[i], root)

    ver_incl = _timed(check_inclusion, SAMPLES)

    olds = [rnd.randrange(1, LEAVES) for _ in range(SAMPLES)]
    cons = {m: tree.consistency_proof(m) for m in olds}
    clens = [len(p) for p in cons.values()]
    old_roots = {m: tree.root(m) for m in olds}
    it3 = iter(olds)

    def check_consistency_only() -> None:
        m = next(it3)
        verify_consistency(m, LEAVES, old_roots[m], root, cons[m])

    ver_cons = _timed(check_consistency_only, SAMPLES)

    log_key = Ed25519PrivateKey.generate()
    checkpoint = sign_checkpoint(Checkpoint("bench/log", LEAVES, root), log_key)
    bundle = build_bundle(
        client_id="client-0",
        since=None,
        until=None,
        generated_at=stamp,
        checkpoint=checkpoint,
        receipts=[ReceiptProof(p, e, tree.inclusion_proof(p)) for p, e in placed.items()],
        node_keys={"node-1": node_key},
        log_key=log_key,
        log_key_name="bench/log",
        self_check=False,
    )
    started = time.perf_counter()
    report = verify_bundle(bundle, log_key=log_key.public_key())
    bundle_seconds = time.perf_counter() - started
    if not report.ok:
        raise RuntimeError(f"the benchmark's bundle did not verify: {report.failures[0]}")
    b64_len = len(base64.b64encode(bytes(32)))
    return {
        "build_seconds": build,
        "incl_len": (min(lengths), statistics.mean(lengths), max(lengths)),
        "incl_json_bytes": max(lengths) * (b64_len + 3),
        "gen_incl_us": gen_incl * 1e6,
        "ver_incl_us": ver_incl * 1e6,
        "cons_len": (min(clens), statistics.mean(clens), max(clens)),
        "ver_cons_us": ver_cons * 1e6,
        "bundle_bytes": len(bundle),
        "bundle_seconds": bundle_seconds,
    }


# --- the report ---------------------------------------------------------------------------


def main() -> None:
    (REPO / "var").mkdir(exist_ok=True)
    rates = append_rates()
    proof = proofs()
    sizes = list(BATCHES)
    lines = [
        "### Receipts appended to the ledger per second",
        "",
        "Appending: each receipt's row and its finished subtree hashes inserted, under the "
        "ledger lock, in one transaction per batch that also signs the new tree head "
        "(records whose node signature was checked before, as collection does). "
        "Target: at least 1,000/s.",
        "",
        "| where | " + " | ".join(f"batch of {s}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    memory = rates["in memory (no database)"]["rates"]
    for name, result in rates.items():
        if "error" in result:
            lines.append(f"| {name} | {result['error']} |" + " |" * (len(sizes) - 1))
            continue
        cells = []
        for s in sizes:
            rate = result["rates"][str(s)]
            ratio = "" if name.startswith("in memory") else f" ({rate / memory[str(s)]:.2f}x)"
            cells.append(f"{rate:,.0f}/s{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    cpu = rates["in memory (no database)"]["cpu_rates"]
    sqlite_cpu = rates.get("SQLite", {}).get("cpu_rates", {})
    lines += [
        "",
        "The same, counting this process's CPU time instead of the clock (what one free "
        "core would do; PostgreSQL's server-side work is not in it, so it is left out):",
        "",
        "| where | " + " | ".join(f"batch of {s}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
        "| in memory (no database) | " + " | ".join(f"{cpu[str(s)]:,.0f}/s" for s in sizes) + " |",
    ]
    if sqlite_cpu:
        lines.append(
            "| SQLite | " + " | ".join(f"{sqlite_cpu[str(s)]:,.0f}/s" for s in sizes) + " |"
        )
    lines += [
        "",
        "In brackets in the first table: the rate as a share of the same work with no "
        "database (measured first, in this process). A batch is "
        "what one collection page brings (the collector asks for 500 at a time). "
        f"Load average during the run: {load}.",
    ]
    checks = [rates[n]["verify_rate"] for n in ("SQLite", "PostgreSQL") if n in rates]
    checks = [c for c in checks if c]
    if checks:
        verify = max(checks)
        lines.append(
            f"\nChecking node signatures, which collection does before appending: "
            f"{verify:,.0f} records/s (Ed25519 through joserfc, plus the record's "
            "validation). Collection's end-to-end rate, a page of 500 at a time, is "
            "about 1 / (1/check + 1/append)."
        )
    for name in ("SQLite", "PostgreSQL"):
        made = rates.get(name, {}).get("bundle")
        if made:
            lines.append(
                f"\n{name}: downloading one client's bundle of {made['receipts']:,} receipts "
                f"(a log of {rates[name]['receipts']:,}) took {made['seconds']:.2f} s to make "
                f"({made['bytes'] / 1e6:.2f} MB; proofs read from the subtree table, and the "
                "bundle checked by the verifier before it is served)."
            )
    lines += [
        "",
        f"### Proofs in a log of {LEAVES:,} entries",
        "",
        "| | |",
        "|---|---|",
        f"| building the tree in memory | {proof['build_seconds']:.1f} s |",
        "| inclusion proof | {:.0f} / {:.1f} / {:.0f} hashes (min / mean / max), "
        "at most {:,} bytes as JSON |".format(*proof["incl_len"], proof["incl_json_bytes"]),
        f"| making one (from the in-memory subtree store) | {proof['gen_incl_us']:.0f} µs |",
        f"| checking one | {proof['ver_incl_us']:.0f} µs |",
        "| consistency proof to the full tree | {:.0f} / {:.1f} / {:.0f} hashes |".format(
            *proof["cons_len"]
        ),
        f"| checking one | {proof['ver_cons_us']:.0f} µs |",
        f"| bundle of {BUNDLE_RECEIPTS:,} receipts in that log | "
        f"{proof['bundle_bytes'] / 1e6:.2f} MB, checked in {proof['bundle_seconds']:.2f} s "
        "(every node signature, every proof, both log-key signatures) |",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("ledger", body)


if __name__ == "__main__":
    main()
