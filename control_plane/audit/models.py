"""Receipts, the Merkle log they are leaves of, its signed tree heads, and collection state.

The ledger (``Receipt``, ``LogSubtree``, ``TreeHead``, ``NodeKey``) is append-only three
times over: the models refuse to save a change or delete (and their querysets refuse
``update()``/``delete()``), the admin and the API only read, and database triggers
refuse ``UPDATE`` and ``DELETE`` on their tables (migration 0002). ``CollectionState``
and ``RefusedRecord`` are operational state, not part of the ledger.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Self

from django.db import models

from control_plane.audit.choices import EndedBy
from control_plane.audit.querysets import (
    AppendOnlyError,
    AppendOnlyManager,
    ReceiptManager,
    TreeHeadManager,
)
from control_plane.fleet.models import Node

__all__ = [
    "AppendOnlyError",
    "AppendOnlyModel",
    "CollectionState",
    "LogSubtree",
    "NodeKey",
    "Receipt",
    "RefusedRecord",
    "Statement",
    "TreeHead",
]


class AppendOnlyModel(models.Model):
    """Rows are inserted once and never changed or deleted."""

    objects: ClassVar[AppendOnlyManager[Self]] = AppendOnlyManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(f"{self._meta.label} is append-only: a saved row never changes")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise AppendOnlyError(f"{self._meta.label} is append-only: no delete")


class Receipt(AppendOnlyModel):
    """One node-signed usage record the control plane verified and logged: a ledger leaf.

    The leaf is the canonical JSON of ``{"logged_at", "node_jws", "record"}``
    (``shared.ledger.LogEntry``); ``node_jws`` is kept byte for byte, so the leaf can be
    rebuilt and checked against ``leaf_hash``. The other record fields are copies for
    listing, filtering and the usage charts. Ids, times and counts only: never content.
    """

    record_id = models.UUIDField("record ID", unique=True, editable=False)
    client = models.CharField("client ID", max_length=128, db_index=True, editable=False)
    node = models.CharField("node ID", max_length=128, db_index=True, editable=False)
    session_id = models.CharField("session ID", max_length=128, db_index=True, editable=False)
    model = models.CharField(max_length=128, editable=False)
    model_version = models.CharField(max_length=128, editable=False)
    model_sha256 = models.CharField("model SHA-256", max_length=64, editable=False)
    started_at = models.DateTimeField(editable=False)
    ended_at = models.DateTimeField(db_index=True, editable=False)
    ended_by = models.CharField(max_length=16, choices=EndedBy.choices, editable=False)
    request_count = models.PositiveBigIntegerField(editable=False)
    prompt_tokens = models.PositiveBigIntegerField(editable=False)
    completion_tokens = models.PositiveBigIntegerField(editable=False)
    # NULL when the record holds no times: signed before the field existed, or no turn
    # gave any text. A JSON list, so it is the same column on SQLite and PostgreSQL.
    first_token_ms = models.JSONField(
        "times to first token (ms)",
        null=True,
        blank=True,
        editable=False,
        help_text="Each turn's time to first token in milliseconds, as the node signed it.",
    )
    node_jws = models.TextField("node-signed record (compact JWS)", editable=False)
    node_key_id = models.CharField("node key ID", max_length=64, editable=False)
    logged_at = models.DateTimeField(db_index=True, editable=False)
    log_index = models.PositiveBigIntegerField(unique=True, editable=False)
    leaf_hash = models.BinaryField(max_length=32, editable=False)

    objects: ClassVar[ReceiptManager] = ReceiptManager()

    class Meta:
        ordering = ("log_index",)
        indexes = [models.Index(fields=["client", "ended_at"], name="audit_receipt_client_end")]

    def __str__(self) -> str:
        return f"#{self.log_index} {self.record_id}"

    @property
    def leaf_hash_b64(self) -> str:
        return base64.b64encode(bytes(self.leaf_hash)).decode("ascii")


class Statement(AppendOnlyModel):
    """A node statement the control plane verified and logged: a ledger leaf of its own type.

    The leaf is the canonical JSON of ``{"logged_at", "node_jws", "statement"}``
    (``shared.attestation.StatementEntry``). One each time a node's claims change: what it
    runs (release, llama.cpp build, model files as mapped, config, engine settings,
    keys), so an auditor can list what ran where and when. The other fields are copies
    for listing; ``node_jws`` is kept byte for byte.
    """

    node = models.CharField("node ID", max_length=128, db_index=True, editable=False)
    claims_sha256 = models.CharField("claims SHA-256", max_length=64, editable=False)
    release_digest = models.CharField(max_length=64, db_index=True, editable=False)
    config_version = models.PositiveBigIntegerField(null=True, blank=True, editable=False)
    loaded_models = models.JSONField(
        editable=False, help_text="The models the node had loaded: name, version, sha256."
    )
    issued_at = models.DateTimeField(editable=False)
    node_jws = models.TextField("node-signed statement (compact JWS)", editable=False)
    node_key_id = models.CharField("node key ID", max_length=64, editable=False)
    logged_at = models.DateTimeField(db_index=True, editable=False)
    log_index = models.PositiveBigIntegerField(unique=True, editable=False)
    leaf_hash = models.BinaryField(max_length=32, editable=False)

    class Meta:
        ordering = ("log_index",)
        verbose_name = "node statement"

    def __str__(self) -> str:
        return f"#{self.log_index} {self.node} {self.claims_sha256[:12]}"


class LogSubtree(AppendOnlyModel):
    """The hash of one complete subtree: leaves ``[index << level, (index + 1) << level)``.

    ``shared.merkle.CompactRange.append`` reports each one the moment its last leaf is
    appended, after which it never changes; every root and proof of any tree size is
    then a handful of lookups by ``(level, index)``. Level 0 holds the leaf hashes.
    """

    level = models.PositiveSmallIntegerField(editable=False)
    index = models.PositiveBigIntegerField(editable=False)
    hash = models.BinaryField(max_length=32, editable=False)

    class Meta:
        verbose_name = "log subtree"
        constraints = [
            models.UniqueConstraint(fields=["level", "index"], name="audit_subtree_level_index")
        ]

    def __str__(self) -> str:
        return f"level {self.level} index {self.index}"


class TreeHead(AppendOnlyModel):
    """A signed tree head: the log's size and root, as a C2SP checkpoint note.

    ``checkpoint`` is the whole signed note, byte for byte what auditors download and
    what bundles carry; it is signed by the control plane's key under the log's key name.
    """

    size = models.PositiveBigIntegerField(unique=True, editable=False)
    root_hash = models.BinaryField(max_length=32, editable=False)
    checkpoint = models.TextField("signed checkpoint", editable=False)
    created_at = models.DateTimeField(editable=False)

    objects: ClassVar[TreeHeadManager] = TreeHeadManager()

    class Meta:
        ordering = ("-size",)
        verbose_name = "tree head"
        get_latest_by = "size"

    def __str__(self) -> str:
        return f"tree size {self.size}"

    @property
    def root_hash_b64(self) -> str:
        return base64.b64encode(bytes(self.root_hash)).decode("ascii")


class NodeKey(AppendOnlyModel):
    """A node public key that verified at least one receipt, kept for as long as the log.

    A node's key in the fleet may be replaced; bundles still list every key that signed
    a logged record, so old receipts keep verifying offline.
    """

    node = models.CharField("node ID", max_length=128, editable=False)
    key_id = models.CharField("key ID", max_length=64, editable=False)
    public_key = models.TextField("public key (PEM)", editable=False)
    first_used_at = models.DateTimeField(editable=False)

    class Meta:
        ordering = ("node", "first_used_at")
        verbose_name = "node key"
        constraints = [
            models.UniqueConstraint(fields=["node", "key_id"], name="audit_nodekey_node_kid")
        ]

    def __str__(self) -> str:
        return f"{self.node} {self.key_id[:12]}"


class CollectionState(models.Model):
    """Where collection from one node stands (machine-written, not part of the ledger).

    ``cursor``: every record of the node at or below it is stored here and acknowledged,
    so the next run asks for records after it. ``lease_until`` keeps two runs for the
    same node from overlapping (harmless, but wasted work).
    """

    node = models.OneToOneField(
        Node, on_delete=models.CASCADE, primary_key=True, related_name="collection"
    )
    cursor = models.PositiveBigIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    collected_total = models.PositiveBigIntegerField(default=0)
    refused_pending = models.PositiveIntegerField(
        default=0, help_text="Records the node holds that the last run refused."
    )
    tree_head = models.TextField(
        "tree head the node holds",
        blank=True,
        help_text="The largest signed tree head the node reports it was handed (a copy a "
        "restore of this database can't roll back).",
    )

    class Meta:
        verbose_name = "collection state"

    def __str__(self) -> str:
        return f"collection from {self.node_id}"


class RefusedRecord(models.Model):
    """A record a node offered that did not verify: reported, never stored as a receipt.

    It stays unacknowledged on the node, so it is offered again (and can be collected
    once, say, the node's right key is registered); ``resolved_at`` is set then.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="refused_records")
    cursor = models.PositiveBigIntegerField()
    record_id = models.CharField(
        "record ID (claimed)", max_length=64, blank=True, help_text="As the node listed it."
    )
    reason = models.TextField()
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    times_seen = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-last_seen_at",)
        verbose_name = "refused record"
        constraints = [
            models.UniqueConstraint(fields=["node", "cursor"], name="audit_refused_node_cursor")
        ]

    def __str__(self) -> str:
        return f"{self.node_id} cursor {self.cursor}"
