"""The Merkle log in SQL: appends under one lock, signed tree heads, proofs as lookups.

Leaves are receipts (``Receipt.log_index``, ``Receipt.leaf_hash``); every complete
subtree hash is a ``LogSubtree`` row keyed by ``(level, index)``, written the moment
``shared.merkle.CompactRange`` finishes it, and never changed. So:

- an append loads the compact range of the current size (O(log n) lookups in one
  query), adds the leaves, inserts the receipts and the finished subtrees, and signs the
  new tree head, all in one transaction under the ledger lock;
- a root or a proof for any past size is O(log n) lookups; many proofs (a bundle) are
  planned first, fetched in a few batched queries, then computed.

Never behind, never forked: before it signs a tree head, the ledger checks the tree heads
kept outside the database (``control_plane.audit.witness``: the witness file and what the
nodes hold). A ledger smaller than one of them was restored from an older backup: it
refuses to sign (:class:`LedgerBehind`) until :func:`reappend` has put back, at the same
indexes and byte for byte, the leaves the nodes kept with their acknowledgements. A tree
at a witnessed size with another root is a fork (:class:`LedgerForked`): an operator's
decision, never signed over.

The lock: ``pg_advisory_xact_lock`` on PostgreSQL; on SQLite the database's write lock,
taken at the start of the transaction. Two collectors never interleave appends; the
unique ``log_index``, ``(level, index)`` and tree-head ``size`` are the backstop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from control_plane.audit.models import LogSubtree, NodeKey, Receipt, Statement, TreeHead
from control_plane.audit.witness import Witnessed, witnessed_heads, write_witness_file
from control_plane.core.signing import signer
from shared.attestation import StatementEntry, peek_statement
from shared.checkpoint import Checkpoint, sign_checkpoint
from shared.keys import KeyFileError, Signer, key_id, public_key_from_pem
from shared.ledger import LedgerError, LogEntry
from shared.merkle import (
    HASH_SIZE,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    root_hash,
)
from shared.trust import LOG
from shared.usage import UsageRecord, format_timestamp, parse_timestamp, peek_usage_record

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "SNCTLOG" as an integer; only this lock uses it.
LEDGER_LOCK_KEY = 0x534E43544C4F47
_BATCH = 500  # rows per INSERT, and ids per IN (...) lookup

T = TypeVar("T")


def log_key() -> Signer:
    """The key that signs tree heads and bundle manifests: the keyring's log key."""
    return signer(LOG)


def log_key_name() -> str:
    """The signed-note key name tree heads are signed as."""
    return str(settings.SANCTUM.ledger.note_key_name)


def log_origin() -> str:
    """The log's origin: the first line of every checkpoint."""
    return str(settings.SANCTUM.ledger.origin)


def now_ms() -> datetime:
    """Now, at the millisecond precision the ledger's timestamps are written with."""
    moment = timezone.now().astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def lock_ledger() -> None:
    """Hold the ledger lock until the current transaction ends (call inside ``atomic``)."""
    if not connection.in_atomic_block:
        raise RuntimeError("the ledger lock is held by a transaction: call it inside atomic()")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LEDGER_LOCK_KEY])
        elif connection.vendor == "sqlite":
            # A write statement takes SQLite's database write lock (waiting up to the busy
            # timeout), held to the end of the transaction; with transaction_mode
            # IMMEDIATE (our settings) BEGIN has taken it already. It changes no row.
            cursor.execute("UPDATE audit_treehead SET size = size WHERE 0")
        else:  # pragma: no cover - settings only build the two
            raise RuntimeError(f"no ledger lock for database {connection.vendor!r}")


# --- subtree lookups ----------------------------------------------------------------------


def _chunks(items: Sequence[T], size: int = _BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _key(start: int, end: int) -> tuple[int, int]:
    level = (end - start).bit_length() - 1
    return level, start >> level


class SubtreeStore:
    """``subtree_hash(start, end)`` over ``LogSubtree`` rows, with batched prefetching.

    Proof code calls ``subtree_hash`` for ranges that depend only on indexes and sizes,
    never on hash values, so :meth:`plan` runs it once with placeholders to learn the
    keys, fetches them all, and then the real run is dictionary lookups.
    """

    def __init__(self) -> None:
        self._hashes: dict[tuple[int, int], bytes] = {}

    def fetch(self, keys: Iterable[tuple[int, int]]) -> None:
        wanted: dict[int, list[int]] = {}
        for level, index in set(keys) - self._hashes.keys():
            wanted.setdefault(level, []).append(index)
        for level, indexes in wanted.items():
            for chunk in _chunks(sorted(indexes)):
                rows = LogSubtree.objects.filter(level=level, index__in=chunk).values_list(
                    "index", "hash"
                )
                for index, value in rows:
                    self._hashes[(level, index)] = bytes(value)

    def plan(self, compute: Callable[[Callable[[int, int], bytes]], T]) -> T:
        """Run ``compute(subtree_hash)`` with every hash it needs fetched in one go."""
        keys: list[tuple[int, int]] = []

        def record(start: int, end: int) -> bytes:
            keys.append(_key(start, end))
            return bytes(HASH_SIZE)

        compute(record)
        self.fetch(keys)
        return compute(self.subtree_hash)

    def subtree_hash(self, start: int, end: int) -> bytes:
        key = _key(start, end)
        if key not in self._hashes:
            self.fetch([key])
        try:
            return self._hashes[key]
        except KeyError:
            raise ProofError(f"the log has no subtree [{start}, {end})") from None


def compact_range(size: int, store: SubtreeStore | None = None) -> CompactRange:
    """The log's right edge at ``size`` leaves, loaded in one query."""
    store = store or SubtreeStore()
    return store.plan(lambda lookup: CompactRange.from_subtree_hash(size, lookup))


def tree_root(size: int, store: SubtreeStore | None = None) -> bytes:
    """The root of the first ``size`` leaves, from stored subtrees."""
    store = store or SubtreeStore()
    return store.plan(lambda lookup: root_hash(size, lookup))


def inclusion_proofs(indexes: Sequence[int], size: int) -> list[list[bytes]]:
    """The inclusion proof of each leaf in ``indexes`` in the tree of ``size`` leaves."""
    store = SubtreeStore()
    return store.plan(lambda lookup: [inclusion_proof(i, size, lookup) for i in indexes])


def consistency(old_size: int, new_size: int) -> list[bytes]:
    """The consistency proof from ``old_size`` to ``new_size``."""
    store = SubtreeStore()
    return store.plan(lambda lookup: consistency_proof(old_size, new_size, lookup))


# --- tree heads -------------------------------------------------------------------------


class LedgerBehind(LedgerError):
    """The ledger is smaller than a tree head it signed before: restored from an older
    backup. It signs nothing until the missing records are collected again."""

    def __init__(self, size: int, witnessed: Witnessed, detail: str = "") -> None:
        self.size = size
        self.witnessed = witnessed
        self.missing = witnessed.size - size
        super().__init__(
            f"ledger behind: {self.missing} records to re-collect (the ledger holds "
            f"{size}, the {witnessed.source} holds a signed tree head of {witnessed.size}); "
            f"signing refused until they are collected again from the nodes"
            + (f": {detail}" if detail else "")
        )


class LedgerForked(LedgerError):
    """The tree at a witnessed size has another root than the witnessed tree head."""

    def __init__(self, size: int, witnessed: Witnessed) -> None:
        self.size = size
        self.witnessed = witnessed
        super().__init__(
            f"ledger forked: the tree of {witnessed.size} leaves has another root than the "
            f"signed tree head the {witnessed.source} holds; signing refused (an operator's "
            "decision: see docs/operations.md, Backups and restore)"
        )


def check_not_behind(size: int, root: bytes, store: SubtreeStore | None = None) -> None:
    """Refuse to sign a tree of ``size`` leaves and ``root`` below or beside a tree head
    kept outside the database (call under the ledger lock, the subtrees written)."""
    for head in witnessed_heads():
        if head.size > size:
            raise LedgerBehind(size, head)
        at = root if head.size == size else tree_root(head.size, store)
        if at != head.root:
            raise LedgerForked(size, head)


def sign_tree_head(size: int, root: bytes) -> TreeHead:
    """Sign and store the tree head of ``size`` leaves (under the ledger lock).

    Refuses (:class:`LedgerBehind`, :class:`LedgerForked`) a tree that is not an extension
    of every tree head kept outside the database; once the transaction commits, the new
    head goes to the witness file.
    """
    check_not_behind(size, root)
    checkpoint = Checkpoint(origin=log_origin(), size=size, root_hash=root)
    note = sign_checkpoint(checkpoint, log_key(), name=log_key_name())
    head = TreeHead(size=size, root_hash=root, checkpoint=note, created_at=now_ms())
    head.save()
    transaction.on_commit(lambda: write_witness_file(note))
    return head


def current_tree_head() -> TreeHead:
    """The latest signed tree head; the empty log's (size 0) is signed on first need."""
    head = TreeHead.objects.latest_head()
    if head is not None:
        return head
    with transaction.atomic():
        lock_ledger()
        head = TreeHead.objects.latest_head()
        if head is None:
            head = sign_tree_head(0, tree_root(0))
    return head


# --- appending --------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """A node-signed record that verified, with the node key it verified against."""

    jws: str
    record: UsageRecord
    node_key_id: str
    node_key_pem: str

    @property
    def record_id(self) -> str:
        return self.record.record_id


@dataclass
class AppendResult:
    """What one append did: ids newly logged, ids logged before, ids that clash."""

    appended: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # same id, different signed record
    tree_head: TreeHead | None = None

    @property
    def stored(self) -> set[str]:
        """Record ids the ledger holds now (whether logged by this call or before)."""
        return {*self.appended, *self.already}


_RECEIPT_COLUMNS = (
    "record_id",
    "client",
    "node",
    "session_id",
    "model",
    "model_version",
    "model_sha256",
    "started_at",
    "ended_at",
    "ended_by",
    "request_count",
    "prompt_tokens",
    "completion_tokens",
    "first_token_ms",
    "node_jws",
    "node_key_id",
    "logged_at",
    "log_index",
    "leaf_hash",
)


def _receipt_row(
    entry: LogEntry, index: int, leaf: bytes, logged_at: Any, kid: str
) -> tuple[Any, ...]:
    """One receipt's column values, adapted for the database (``_RECEIPT_COLUMNS``)."""
    record = entry.record
    # get_field is typed for any field or relation; this one is Receipt's UUIDField.
    record_id = cast("models.UUIDField[Any, Any]", Receipt._meta.get_field("record_id"))
    first_token_ms = cast("models.JSONField[Any, Any]", Receipt._meta.get_field("first_token_ms"))
    times = list(record.first_token_ms) if record.first_token_ms else None
    return (
        record_id.get_db_prep_save(uuid.UUID(record.record_id), connection),
        record.client_id,
        record.node_id,
        record.session_id,
        record.model,
        record.model_version,
        record.model_sha256,
        connection.ops.adapt_datetimefield_value(parse_timestamp(record.started_at)),
        connection.ops.adapt_datetimefield_value(parse_timestamp(record.ended_at)),
        record.ended_by,
        record.request_count,
        record.prompt_tokens,
        record.completion_tokens,
        first_token_ms.get_db_prep_save(times, connection),
        entry.node_jws,
        kid,
        logged_at,
        index,
        leaf,
    )


def _insert(model: type[models.Model], columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """INSERT many rows in one ``executemany``.

    The ORM's bulk_create builds a model object and prepares every field of every row in
    Python, which was most of an append's cost (tests/bench/ledger.py); the values here
    are adapted once by the caller. Inserting is all the ledger ever does to these tables.
    """
    if not rows:
        return
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608  (our own names)
        quote(model._meta.db_table),
        ", ".join(quote(c) for c in columns),
        ", ".join(["%s"] * len(columns)),
    )
    with connection.cursor() as cursor:
        for chunk in _chunks(rows):
            cursor.executemany(sql, chunk)


def append(verified: Sequence[Verified]) -> AppendResult:
    """Log each verified record once, in order, and sign the new tree head.

    One transaction under the ledger lock: a record whose id is logged already is not
    logged again (``already``, or ``conflicts`` when the stored signed record differs);
    the rest get the next log indexes. The caller acknowledges to the node only after
    this returns (the transaction has committed).
    """
    result = AppendResult()
    if not verified:
        return result
    with transaction.atomic():
        lock_ledger()
        head = TreeHead.objects.latest_head()
        size = head.size if head is not None else 0
        ids = [v.record_id for v in verified]
        logged: dict[str, str] = {}
        for chunk in _chunks(ids):
            for record_id, jws in Receipt.objects.filter(record_id__in=chunk).values_list(
                "record_id", "node_jws"
            ):
                logged[str(record_id)] = jws
        fresh: list[Verified] = []
        seen: set[str] = set()
        for item in verified:
            if item.record_id in logged:
                same = logged[item.record_id] == item.jws
                (result.already if same else result.conflicts).append(item.record_id)
            elif item.record_id not in seen:
                seen.add(item.record_id)
                fresh.append(item)
        if not fresh:
            result.tree_head = head
            return result

        logged_at = now_ms()
        stamp, db_logged_at = (
            format_timestamp(logged_at),
            connection.ops.adapt_datetimefield_value(logged_at),
        )
        rng = compact_range(size)
        receipts: list[tuple[Any, ...]] = []
        subtrees: list[tuple[int, int, bytes]] = []
        keys: dict[tuple[str, str], str] = {}
        for item in fresh:
            entry = LogEntry(record=item.record, node_jws=item.jws, logged_at=stamp)
            leaf = entry.leaf_hash()
            index = rng.size
            subtrees += rng.append(leaf)
            receipts.append(_receipt_row(entry, index, leaf, db_logged_at, item.node_key_id))
            keys[(item.record.node_id, item.node_key_id)] = item.node_key_pem
            result.appended.append(item.record_id)
        _insert(Receipt, _RECEIPT_COLUMNS, receipts)
        _insert(LogSubtree, ("level", "index", "hash"), subtrees)
        _remember_node_keys(keys, logged_at)
        result.tree_head = sign_tree_head(rng.size, rng.root())
    return result


def _statement_row(entry: StatementEntry, index: int, leaf: bytes, kid: str) -> Statement:
    statement = entry.statement
    return Statement(
        node=statement.node_id,
        claims_sha256=statement.claims_sha256(),
        release_digest=statement.release_digest,
        config_version=statement.config.version if statement.config else None,
        loaded_models=[m.model_dump() for m in statement.models],
        issued_at=parse_timestamp(statement.issued_at),
        node_jws=entry.node_jws,
        node_key_id=kid,
        logged_at=parse_timestamp(entry.logged_at),
        log_index=index,
        leaf_hash=leaf,
    )


def append_statement(node_jws: str, node_key_id: str, node_key_pem: str) -> tuple[Statement, bool]:
    """Log a verified node statement, unless the node's latest logged one claims the same.

    Returns the logged statement and whether this call logged it. One transaction under
    the ledger lock, like :func:`append`; the caller has verified the statement (its
    node, its key, its nonce).
    """
    claims = StatementEntry.model_validate(
        {"statement": peek_statement(node_jws), "node_jws": node_jws, "logged_at": now_ms()},
        strict=False,
    ).statement.claims_sha256()
    node = str(peek_statement(node_jws).get("node_id"))
    last = Statement.objects.filter(node=node).order_by("-log_index").first()
    if last is not None and last.claims_sha256 == claims:
        return last, False  # the common case: nothing changed, no ledger lock taken
    with transaction.atomic():
        lock_ledger()
        logged_at = now_ms()
        entry = StatementEntry.model_validate(
            {
                "statement": peek_statement(node_jws),
                "node_jws": node_jws,
                "logged_at": format_timestamp(logged_at),
            },
            strict=False,
        )
        claims = entry.statement.claims_sha256()
        latest = Statement.objects.filter(node=entry.statement.node_id).order_by("-log_index")
        last = latest.first()
        if last is not None and last.claims_sha256 == claims:
            return last, False
        head = TreeHead.objects.latest_head()
        size = head.size if head is not None else 0
        rng = compact_range(size)
        leaf = entry.leaf_hash()
        subtrees = rng.append(leaf)
        row = _statement_row(entry, size, leaf, node_key_id)
        row.save()
        _insert(LogSubtree, ("level", "index", "hash"), subtrees)
        _remember_node_keys({(entry.statement.node_id, node_key_id): node_key_pem}, logged_at)
        sign_tree_head(rng.size, rng.root())
    log.info("statement of node %s logged at index %d", row.node, row.log_index)
    return row, True


def statement_entry(statement: Statement) -> StatementEntry:
    """The ledger leaf of a logged statement, checked against its leaf hash."""
    entry = StatementEntry.model_validate(
        {
            "statement": peek_statement(statement.node_jws),
            "node_jws": statement.node_jws,
            "logged_at": format_timestamp(statement.logged_at),
        },
        strict=False,
    )
    if entry.leaf_hash() != bytes(statement.leaf_hash):
        raise LedgerError(
            f"statement at log index {statement.log_index} does not match its leaf hash"
        )
    return entry


def _remember_node_keys(keys: dict[tuple[str, str], str], when: datetime) -> None:
    if not keys:
        return
    query = Q(pk__in=[])
    for node, kid in keys:
        query |= Q(node=node, key_id=kid)
    known = set(NodeKey.objects.filter(query).values_list("node", "key_id"))
    NodeKey.objects.bulk_create(
        [
            NodeKey(node=node, key_id=kid, public_key=pem, first_used_at=when)
            for (node, kid), pem in sorted(keys.items())
            if (node, kid) not in known
        ]
    )


def node_public_keys(nodes: Iterable[str] | None = None) -> dict[str, list[Ed25519PublicKey]]:
    """Every key that verified a logged record, plus each registered node's current key.

    ``{node id: [Ed25519PublicKey, ...]}`` for ``nodes`` (default: all), what a bundle
    lists so that every receipt (and a client's held copy) can be checked offline.
    """
    from control_plane.fleet.models import Node

    wanted = None if nodes is None else set(nodes)
    found: dict[str, dict[str, Ed25519PublicKey]] = {}
    rows = NodeKey.objects.order_by("node", "first_used_at").values_list("node", "public_key")
    current = Node.objects.exclude(public_key="").values_list("name", "public_key")
    for node, pem in [*rows, *current]:
        if wanted is not None and node not in wanted:
            continue
        try:
            key = public_key_from_pem(pem.strip())
        except KeyFileError:
            log.warning("node %s has an unreadable public key; left out of bundles", node)
            continue
        found.setdefault(node, {}).setdefault(key_id(key), key)
    return {node: list(keys.values()) for node, keys in sorted(found.items())}


def log_entry(receipt: Receipt) -> LogEntry:
    """The ledger leaf of ``receipt``, rebuilt from what it stores and checked against its
    leaf hash (a stored row that no longer matches its leaf is refused, not served)."""
    record = UsageRecord.model_validate(peek_usage_record(receipt.node_jws), strict=True)
    entry = LogEntry(
        record=record,
        node_jws=receipt.node_jws,
        logged_at=format_timestamp(receipt.logged_at),
    )
    if entry.leaf_hash() != bytes(receipt.leaf_hash):
        raise LedgerError(f"receipt at log index {receipt.log_index} does not match its leaf hash")
    return entry


# --- re-appending after a restore --------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    """A record a node kept after its acknowledgement, with where it was logged."""

    verified: Verified
    log_index: int
    logged_at: str
    leaf_hash: bytes


@dataclass(frozen=True)
class PlacedStatement:
    """A node statement its node kept with where it was logged (verified by the caller)."""

    node_jws: str
    node_key_id: str
    node_key_pem: str
    log_index: int
    logged_at: str
    leaf_hash: bytes

    def entry(self) -> StatementEntry:
        return StatementEntry.model_validate(
            {
                "statement": peek_statement(self.node_jws),
                "node_jws": self.node_jws,
                "logged_at": self.logged_at,
            },
            strict=False,
        )


def _node_of(item: Placed | PlacedStatement) -> str:
    if isinstance(item, PlacedStatement):
        return str(peek_statement(item.node_jws).get("node_id", "?"))[:64]
    return item.verified.record.node_id


def _leaf(item: Placed | PlacedStatement) -> bytes:
    """The leaf ``item``'s record (or statement) makes at its ``logged_at``."""
    if isinstance(item, PlacedStatement):
        return item.entry().leaf_hash()
    v = item.verified
    return LogEntry(record=v.record, node_jws=v.jws, logged_at=item.logged_at).leaf_hash()


def reappend(placed: Sequence[Placed | PlacedStatement]) -> TreeHead:
    """Put back the leaves a restore lost, at their own indexes, byte for byte.

    ``placed`` are the records (and statements) the nodes kept with their placements
    (index, ``logged_at``, leaf hash). In one transaction under the ledger lock: from the
    ledger's size on, the indexes must follow one another with no gap up to the largest
    witnessed tree head; each leaf is rebuilt from the node-signed record (or statement)
    and its ``logged_at`` and must hash to the leaf hash the node kept; then the tree head
    is signed, which checks the roots at every witnessed size. Anything short of that
    raises and changes nothing.
    """
    with transaction.atomic():
        lock_ledger()
        head = TreeHead.objects.latest_head()
        size = head.size if head is not None else 0
        heads = witnessed_heads()
        target = heads[0] if heads else None
        if target is None or target.size <= size:
            if head is None:
                return current_tree_head()
            check_not_behind(size, bytes(head.root_hash))
            return head
        by_index: dict[int, Placed | PlacedStatement] = {}
        for item in placed:
            if not size <= item.log_index < target.size:
                # In the ledger already (the restored part, or a run before), or past
                # the newest witnessed head: that part goes through collection's own
                # append, never with a logged_at a node hands back.
                continue
            if _leaf(item) != item.leaf_hash:
                log.warning(
                    "node %s places a record at index %d that does not hash to the leaf it "
                    "names: left out",
                    _node_of(item),
                    item.log_index,
                )
                continue
            other = by_index.get(item.log_index)
            if other is not None and other.leaf_hash != item.leaf_hash:
                raise LedgerError(
                    f"nodes {_node_of(other)} and "
                    f"{_node_of(item)} place different records at index "
                    f"{item.log_index}: disable the one that is wrong, then collect again"
                )
            by_index[item.log_index] = item
        run: list[Placed | PlacedStatement] = []
        while size + len(run) in by_index:
            run.append(by_index[size + len(run)])
        if size + len(run) < target.size:
            raise LedgerBehind(
                size,
                target,
                f"no node holds the record at ledger index {size + len(run)} (past the "
                "nodes' receipt retention, or a node that is gone): an operator's decision",
            )
        ids = [p.verified.record_id for p in run if isinstance(p, Placed)]
        for chunk in _chunks(ids):
            clash = Receipt.objects.filter(record_id__in=chunk).values_list("record_id", flat=True)
            for record_id in clash:
                raise LedgerError(f"record {record_id} is in the ledger at another index")
        rng = compact_range(size)
        receipts: list[tuple[Any, ...]] = []
        subtrees: list[tuple[int, int, bytes]] = []
        keys: dict[tuple[str, str], str] = {}
        first_logged: datetime | None = None
        statements: list[Statement] = []
        for item in run:
            logged_at = parse_timestamp(item.logged_at)
            first_logged = first_logged or logged_at
            index = rng.size
            if isinstance(item, PlacedStatement):
                said = item.entry()
                leaf = said.leaf_hash()  # what _leaf(item) checked above
                subtrees += rng.append(leaf)
                statements.append(_statement_row(said, index, leaf, item.node_key_id))
                keys[(said.statement.node_id, item.node_key_id)] = item.node_key_pem
                continue
            v = item.verified
            entry = LogEntry(record=v.record, node_jws=v.jws, logged_at=item.logged_at)
            leaf = entry.leaf_hash()  # what _leaf(item) checked above
            subtrees += rng.append(leaf)
            db_logged_at = connection.ops.adapt_datetimefield_value(logged_at)
            receipts.append(_receipt_row(entry, index, leaf, db_logged_at, v.node_key_id))
            keys[(v.record.node_id, v.node_key_id)] = v.node_key_pem
        _insert(Receipt, _RECEIPT_COLUMNS, receipts)
        Statement.objects.bulk_create(statements)
        _insert(LogSubtree, ("level", "index", "hash"), subtrees)
        _remember_node_keys(keys, first_logged or now_ms())
        log.warning(
            "ledger re-extended after a restore: %d records put back at indexes %d..%d",
            len(run),
            size,
            rng.size - 1,
        )
        return sign_tree_head(rng.size, rng.root())
