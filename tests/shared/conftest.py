"""A small, real receipt ledger for the audit tests: real keys, signatures and proofs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.checkpoint import Checkpoint, sign_checkpoint
from shared.ledger import LogEntry, ReceiptProof, build_bundle, dump_consistency, make_log_entry
from shared.merkle import InMemoryTree
from shared.usage import UsageRecord, format_timestamp, parse_timestamp, sign_usage_record

ORIGIN = "sanctum.test/ledger"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
MODEL_SHA256 = "5f" * 32


def fixed_key(seed: int) -> Ed25519PrivateKey:
    """A deterministic key, so failures reproduce byte for byte."""
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def make_record(n: int, client_id: str, node_id: str) -> UsageRecord:
    """The ``n``-th usage record: ends ``n`` minutes after T0."""
    return UsageRecord(
        record_id=str(uuid.UUID(int=n + 1, version=4)),
        session_id=f"sess-{n}",
        client_id=client_id,
        node_id=node_id,
        model="smollm2-135m",
        model_version="q8_0",
        model_sha256=MODEL_SHA256,
        started_at=format_timestamp(T0 + timedelta(minutes=n)),
        ended_at=format_timestamp(T0 + timedelta(minutes=n, seconds=42)),
        ended_by="teardown",
        request_count=3,
        prompt_tokens=120 + n,
        completion_tokens=80,
    )


@dataclass
class SampleLedger:
    """A ledger as the control plane keeps it, reduced to what the tests need."""

    log_key: Ed25519PrivateKey = field(default_factory=lambda: fixed_key(1))
    node_keys: dict[str, Ed25519PrivateKey] = field(
        default_factory=lambda: {"node-a": fixed_key(2), "node-b": fixed_key(3)}
    )
    tree: InMemoryTree = field(default_factory=InMemoryTree)
    entries: list[LogEntry] = field(default_factory=list)

    @property
    def node_public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {node: key.public_key() for node, key in self.node_keys.items()}

    def add(self, client_id: str, node_id: str = "node-a") -> str:
        """A node signs a record; the control plane logs it. Returns the held JWS."""
        n = len(self.entries)
        jws = sign_usage_record(make_record(n, client_id, node_id), self.node_keys[node_id])
        self.append(make_log_entry(jws, self.node_public_keys, T0 + timedelta(minutes=n + 1)))
        return jws

    def append(self, entry: LogEntry) -> None:
        self.entries.append(entry)
        self.tree.append(entry.leaf_hash())

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return sign_checkpoint(Checkpoint(ORIGIN, size, self.tree.root(size)), self.log_key)

    def receipts(self, client_id: str, size: int | None = None) -> list[ReceiptProof]:
        size = self.tree.size if size is None else size
        return [
            ReceiptProof(i, e, self.tree.inclusion_proof(i, size))
            for i, e in enumerate(self.entries[:size])
            if e.record.client_id == client_id
        ]

    def bundle(
        self,
        client_id: str = "acme",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        receipts: list[ReceiptProof] | None = None,
        node_keys: dict | None = None,
        self_check: bool = True,
    ) -> bytes:
        chosen = receipts
        if chosen is None:  # what the control plane would select for the period
            chosen = [
                r
                for r in self.receipts(client_id)
                if (since is None or parse_timestamp(r.entry.record.ended_at) >= since)
                and (until is None or parse_timestamp(r.entry.record.ended_at) < until)
            ]
        return build_bundle(
            client_id=client_id,
            since=since,
            until=until,
            generated_at=T0 + timedelta(days=1),
            checkpoint=self.checkpoint(),
            receipts=chosen,
            node_keys=self.node_public_keys if node_keys is None else node_keys,
            log_key=self.log_key,
            log_key_name=ORIGIN,
            self_check=self_check,
        )

    def consistency(self, old_size: int, new_size: int | None = None) -> bytes:
        new_size = self.tree.size if new_size is None else new_size
        return dump_consistency(
            checkpoint=self.checkpoint(new_size),
            old_size=old_size,
            proof=self.tree.consistency_proof(old_size, new_size),
            log_key=self.log_key.public_key(),
            log_key_name=ORIGIN,
        )


@pytest.fixture
def ledger() -> SampleLedger:
    """Five receipts: acme's at log indexes 0, 2 and 4 (node-a, node-b, node-a)."""
    log = SampleLedger()
    for client, node in [
        ("acme", "node-a"),
        ("globex", "node-a"),
        ("acme", "node-b"),
        ("globex", "node-b"),
        ("acme", "node-a"),
    ]:
        log.add(client, node)
    return log
