"""The receipt ledger's files: log entries, the auditor bundle, the consistency file.

Both planes and the auditor's ``sanctum verify`` build against this module; the control
plane produces the files with :func:`build_bundle` and :func:`dump_consistency`, and
anyone checks them with :func:`verify_bundle`, :func:`verify_held_receipt` and
:func:`verify_consistency_files`.

Log entry (one Merkle leaf)
---------------------------
When the control plane accepts a node-signed usage record it appends one leaf whose data
is the canonical JSON (``shared.canonical``) of::

    {"logged_at": "<RFC 3339 UTC>", "node_jws": "<the node's compact JWS>",
     "record": <the usage record object the JWS signs>}

The leaf hash is ``SHA-256(0x00 || that data)`` (``shared.merkle``); the log's tree
heads are C2SP checkpoints (``shared.checkpoint``) signed by the control plane's *log
key*. The record is in clear so a reader needn't decode the JWS; a verifier checks it is
exactly what the node signed. The entry holds no content, like the record.

Audit bundle (``GET /api/audit/bundle/?client=ID[&since=T][&until=T]``)
------------------------------------------------------------------------
One client's receipts for a period, with everything needed to check them offline. The
file is the canonical JSON of the object below followed by one newline, byte for byte:
the verifier re-encodes what it read and refuses the file if the bytes differ, so no
whitespace, key order or escape can change without failing. Serve the bytes
:func:`build_bundle` returns as they are (not through a JSON renderer). ::

    {
      "format": "sanctum-audit-bundle/1",
      "log_key": {"name": "<note key name>", "jwk": {"crv": "Ed25519", "kty": "OKP", "x": "…"}},
      "checkpoint": "<the latest signed checkpoint, the whole note text>",
      "manifest": {
        "client_id": "<client id>",
        "since": "<RFC 3339 UTC>" | null,        # receipts with since <= ended_at
        "until": "<RFC 3339 UTC>" | null,        #   and ended_at < until
        "generated_at": "<RFC 3339 UTC>",
        "checkpoint_sha256": "<hex SHA-256 of the checkpoint text>",
        "node_keys": {"<node id>": [<JWK>, …], …},   # keys the control plane registered
        "receipts": [{"index": <log index>, "record_id": "<uuid>",
                      "leaf_hash": "<base64>"}, …]     # every receipt, by log index
      },
      "manifest_signature": "<detached compact JWS: header..signature>",
      "receipts": [
        {"index": <log index>, "entry": <log entry object>,
         "inclusion_proof": ["<base64 hash>", …]},    # against the checkpoint's tree
        …
      ]
    }

``manifest_signature`` is a compact JWS (``alg`` EdDSA, ``typ``
``sanctum-audit-manifest+jws``, ``kid`` the log key's RFC 7638 thumbprint) over the
canonical JSON of ``manifest``, with the payload part left out (RFC 7515 appendix F):
the verifier puts it back from the file. Hashes are standard base64 with padding, JWK
members base64url without; both only in canonical form. Indexes strictly increase, in
``manifest.receipts`` and in ``receipts`` alike, and the two lists name the same entries.

What each part proves, and so why a single changed byte anywhere fails:

- the log key signs the checkpoint (the tree head) and the manifest. The auditor pins it
  with ``--log-key``; otherwise the bundle's own key is used and the report says so.
- the manifest is the control plane's signed statement "these are all of client X's
  receipts for the period": it binds the checkpoint (its hash), the node keys, and each
  receipt's index, record id and leaf hash, so a dropped, added, swapped or edited
  receipt fails, and a client's held receipt missing from it is signed evidence;
- each entry's node JWS verifies against that node's key listed in the manifest, and its
  record is exactly what the node signed, for this client, within the period;
- each inclusion proof leads from the entry's leaf hash at its index to the checkpoint's
  root, so the entries are in the log, at those positions, under the signed tree head.

Consistency file (the control plane's answer to "prove size M grew into the latest")
-------------------------------------------------------------------------------------
::

    {"format": "sanctum-consistency/1", "checkpoint": "<new signed checkpoint>",
     "log_key": {"name": …, "jwk": …}, "old_size": <M>,
     "consistency_proof": ["<base64 hash>", …]}

Every part is covered by a signature or the proof, so any JSON spelling is accepted
(the control plane may render it through DRF); :func:`dump_consistency` writes the
canonical one. ``sanctum verify --consistency OLD NEW`` checks it against a tree head
saved earlier (a checkpoint note, or a bundle or consistency file holding one).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared import envelope
from shared.canonical import (
    CanonicalEncodingError,
    CanonicalJSONError,
    b64decode_canonical,
    b64urldecode_canonical,
    canonical_json,
)
from shared.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_key_name,
    open_checkpoint,
    parse_checkpoint,
)
from shared.config import Name, Sha256Hex
from shared.keys import Signer, b64url, key_id, public_jwk, public_key_bytes
from shared.merkle import HASH_SIZE, ProofError, leaf_hash, verify_consistency, verify_inclusion
from shared.usage import (
    NodeKeys,
    Timestamp,
    UsageRecord,
    UsageRecordError,
    check_compact_jws,
    format_timestamp,
    open_usage_record,
    parse_timestamp,
    validation_summary,
)

BUNDLE_FORMAT = "sanctum-audit-bundle/1"
CONSISTENCY_FORMAT = "sanctum-consistency/1"


class LedgerError(ValueError):
    """A ledger file can't be made from what was given (a bug on the producing side)."""


# --- log entries ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class LogEntry(_Strict):
    """One leaf of the ledger: a node-signed usage record, as the control plane logged it."""

    record: UsageRecord
    node_jws: str
    logged_at: Timestamp

    def document(self) -> dict[str, Any]:
        """The entry as a JSON object."""
        return {
            "logged_at": self.logged_at,
            "node_jws": self.node_jws,
            "record": self.record.document(),
        }

    def leaf_data(self) -> bytes:
        """The bytes the Merkle leaf hashes: the entry's canonical JSON."""
        return canonical_json(self.document())

    def leaf_hash(self) -> bytes:
        """The entry's RFC 6962 leaf hash."""
        return leaf_hash(self.leaf_data())


def make_log_entry(node_jws: str, node_keys: NodeKeys, logged_at: datetime | str) -> LogEntry:
    """Verify a node-signed record and wrap it as the entry to append to the log.

    Raises :class:`shared.usage.UsageRecordError` if the record does not verify.
    """
    record = open_usage_record(node_jws, node_keys)
    return LogEntry.model_validate(
        {"record": record, "node_jws": node_jws, "logged_at": logged_at}, strict=False
    )


# --- file models ------------------------------------------------------------------------


def _canonical_b64url_key(value: str) -> str:
    try:
        b64urldecode_canonical(value, length=32, what="JWK x")
    except CanonicalEncodingError as exc:
        raise ValueError(str(exc)) from None
    return value


def _canonical_b64_hash(value: str) -> str:
    try:
        b64decode_canonical(value, length=HASH_SIZE, what="hash")
    except CanonicalEncodingError as exc:
        raise ValueError(str(exc)) from None
    return value


def _key_name(value: str) -> str:
    try:
        check_key_name(value)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    return value


B64Hash = Annotated[str, AfterValidator(_canonical_b64_hash)]
KeyName = Annotated[str, AfterValidator(_key_name)]
LogIndex = Annotated[int, Field(ge=0, le=(1 << 63) - 1)]


class PublicJwk(_Strict):
    """An Ed25519 public key as an RFC 8037 JWK, exactly its three members."""

    crv: Literal["Ed25519"]
    kty: Literal["OKP"]
    x: Annotated[str, AfterValidator(_canonical_b64url_key)]

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> PublicJwk:
        """The JWK of ``key``."""
        return cls.model_validate(public_jwk(key))

    def public_key(self) -> Ed25519PublicKey:
        """The key itself."""
        return Ed25519PublicKey.from_public_bytes(b64urldecode_canonical(self.x))


class LogKey(_Strict):
    """The log's public key and its signed-note key name (checkpoints are signed as it)."""

    name: KeyName
    jwk: PublicJwk


class ManifestReceipt(_Strict):
    """One receipt as the signed manifest lists it."""

    index: LogIndex
    record_id: str
    leaf_hash: B64Hash


class Manifest(_Strict):
    """The control plane's signed statement of what the bundle holds."""

    client_id: Name
    since: Timestamp | None
    until: Timestamp | None
    generated_at: Timestamp
    checkpoint_sha256: Sha256Hex
    node_keys: dict[Name, list[PublicJwk]]
    receipts: list[ManifestReceipt]


class BundleReceipt(_Strict):
    """One receipt in the bundle; its entry is checked on its own, so errors name it."""

    index: LogIndex
    entry: dict[str, Any]
    inclusion_proof: list[str]


class AuditBundle(_Strict):
    """The auditor bundle (see the module docstring)."""

    format: Literal["sanctum-audit-bundle/1"]
    log_key: LogKey
    checkpoint: str
    manifest: Manifest
    manifest_signature: str
    receipts: list[BundleReceipt]


class ConsistencyFile(_Strict):
    """A new checkpoint and the proof that it extends the tree of ``old_size`` leaves."""

    format: Literal["sanctum-consistency/1"]
    checkpoint: str
    log_key: LogKey
    old_size: LogIndex
    consistency_proof: list[B64Hash]


# --- producing files (control plane) ----------------------------------------------------


@dataclass(frozen=True)
class ReceiptProof:
    """What the control plane puts in a bundle for one receipt."""

    index: int
    entry: LogEntry
    inclusion_proof: Sequence[bytes]


def b64_text(data: bytes) -> str:
    """Standard base64 with padding, the way ledger files carry hashes."""
    return base64.b64encode(data).decode("ascii")


def _timestamp_text(value: datetime | str) -> str:
    if isinstance(value, datetime):
        return format_timestamp(value)
    parse_timestamp(value)  # raises on anything but the contract's spelling
    return value


def detached_jws(token: str) -> str:
    """A compact JWS with its payload left out (RFC 7515 appendix F)."""
    header, _payload, signature = token.split(".")
    return f"{header}..{signature}"


def build_bundle(
    *,
    client_id: str,
    since: datetime | str | None,
    until: datetime | str | None,
    generated_at: datetime | str,
    checkpoint: str,
    receipts: Iterable[ReceiptProof],
    node_keys: Mapping[str, Ed25519PublicKey | Sequence[Ed25519PublicKey]],
    log_key: Signer,
    log_key_name: str,
    self_check: bool = True,
) -> bytes:
    """Make the bundle file's bytes (canonical JSON and a newline), signed by the log key.

    ``checkpoint`` is the signed tree head every inclusion proof is against; receipts
    are sorted by log index. ``node_keys`` should hold every key of every node that
    served the client (so a held receipt missing from the log can still be shown to be
    genuine). With ``self_check`` (the default) the result is run through
    :func:`verify_bundle` and a :class:`LedgerError` names anything it would reject.
    """
    items = sorted(receipts, key=lambda r: r.index)
    if len({r.index for r in items}) != len(items):
        raise LedgerError("two receipts with the same log index")
    keys: dict[str, list[dict[str, str]]] = {}
    for node_id, value in sorted(node_keys.items()):
        node_list = [value] if isinstance(value, Ed25519PublicKey) else list(value)
        keys[node_id] = [public_jwk(k) for k in node_list]
    manifest = {
        "client_id": client_id,
        "since": None if since is None else _timestamp_text(since),
        "until": None if until is None else _timestamp_text(until),
        "generated_at": _timestamp_text(generated_at),
        "checkpoint_sha256": hashlib.sha256(checkpoint.encode("utf-8")).hexdigest(),
        "node_keys": keys,
        "receipts": [
            {
                "index": r.index,
                "record_id": r.entry.record.record_id,
                "leaf_hash": b64_text(r.entry.leaf_hash()),
            }
            for r in items
        ],
    }
    signature = envelope.sign(manifest, log_key, envelope.TYP_AUDIT_MANIFEST)
    bundle = {
        "format": BUNDLE_FORMAT,
        "log_key": {"name": log_key_name, "jwk": public_jwk(log_key.public_key())},
        "checkpoint": checkpoint,
        "manifest": manifest,
        "manifest_signature": detached_jws(signature),
        "receipts": [
            {
                "index": r.index,
                "entry": r.entry.document(),
                "inclusion_proof": [b64_text(h) for h in r.inclusion_proof],
            }
            for r in items
        ],
    }
    data = canonical_json(bundle) + b"\n"
    if self_check:
        report = verify_bundle(data, log_key=log_key.public_key())
        if not report.ok:
            raise LedgerError(
                "the bundle would not verify: " + "; ".join(map(str, report.failures))
            )
    return data


def dump_consistency(
    *,
    checkpoint: str,
    old_size: int,
    proof: Sequence[bytes],
    log_key: Ed25519PublicKey,
    log_key_name: str,
) -> bytes:
    """The consistency file's canonical bytes (see the module docstring)."""
    document = {
        "format": CONSISTENCY_FORMAT,
        "checkpoint": checkpoint,
        "log_key": {"name": log_key_name, "jwk": public_jwk(log_key)},
        "old_size": old_size,
        "consistency_proof": [b64_text(h) for h in proof],
    }
    ConsistencyFile.model_validate(document)
    return canonical_json(document) + b"\n"


# --- reports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One check that did not hold: which check, where, and why (never any content)."""

    check: str
    message: str
    receipt: int | None = None  # position in the bundle's receipts, from 0
    log_index: int | None = None

    def __str__(self) -> str:
        where = []
        if self.receipt is not None:
            where.append(f"receipt #{self.receipt}")
        if self.log_index is not None:
            where.append(f"log index {self.log_index}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.check}: {self.message}"


@dataclass
class Report:
    """The outcome of a verification: what held, what did not, and caveats."""

    passed: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return not self.failures

    def fail(
        self, check: str, message: str, *, receipt: int | None = None, index: int | None = None
    ) -> None:
        """Record a failed check."""
        self.failures.append(Failure(check, message, receipt, index))


@dataclass
class BundleReport(Report):
    """A bundle verification, with what the bundle claims (trust it only when ``ok``)."""

    client_id: str | None = None
    since: str | None = None
    until: str | None = None
    origin: str | None = None
    tree_size: int | None = None
    log_key_id: str | None = None
    log_key_pinned: bool = False
    receipt_count: int = 0
    held_log_index: int | None = None


@dataclass
class ConsistencyReport(Report):
    """A consistency verification between two tree heads."""

    origin: str | None = None
    old_size: int | None = None
    new_size: int | None = None
    log_key_id: str | None = None
    log_key_pinned: bool = False


# --- verifying bundles ------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


def load_strict_json(data: bytes, what: str) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys (two parsers could read them differently)."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None


@dataclass
class _Parsed:
    bundle: AuditBundle
    node_keys: dict[str, list[Ed25519PublicKey]]
    entries: dict[int, LogEntry]  # by log index, entries whose every check held


def _verifydetached_jws(manifest: dict[str, Any], detached: str, key: Ed25519PublicKey) -> None:
    parts = detached.split(".")
    if len(parts) != 3 or parts[1] != "":
        raise envelope.EnvelopeError("manifest signature is not a detached compact JWS")
    token = f"{parts[0]}.{b64url(canonical_json(manifest))}.{parts[2]}"
    try:
        check_compact_jws(token, "manifest signature")
    except UsageRecordError as exc:
        raise envelope.EnvelopeError(str(exc)) from None
    envelope.verify(token, key, envelope.TYP_AUDIT_MANIFEST)


def _in_period(ended_at: str, since: str | None, until: str | None) -> bool:
    moment = parse_timestamp(ended_at)
    if since is not None and moment < parse_timestamp(since):
        return False
    return until is None or moment < parse_timestamp(until)


def _period_text(since: str | None, until: str | None) -> str:
    return f"[{since or 'the beginning'}, {until or 'now'})"


class _Stop(Exception):
    """Raised by a fail-fast report at its first failure."""


@dataclass
class _Checks:
    """Collects failures; with ``fail_fast`` it stops the run at the first one."""

    report: BundleReport
    fail_fast: bool

    def fail(
        self, check: str, message: str, *, receipt: int | None = None, index: int | None = None
    ) -> None:
        self.report.fail(check, message, receipt=receipt, index=index)
        if self.fail_fast:
            raise _Stop


def _verify(
    data: bytes,
    log_key: Ed25519PublicKey | None,
    log_key_name: str | None,
    origin: str | None,
    fail_fast: bool = False,
) -> tuple[BundleReport, _Parsed | None]:
    report = BundleReport()
    checks = _Checks(report, fail_fast)
    parsed: _Parsed | None = None
    with contextlib.suppress(_Stop):
        parsed = _run_checks(data, log_key, log_key_name, origin, checks)
    # Global findings first, then each receipt's, in bundle order.
    report.failures.sort(key=lambda f: (f.receipt is not None, f.receipt or 0))
    return report, parsed


def _run_checks(
    data: bytes,
    log_key: Ed25519PublicKey | None,
    log_key_name: str | None,
    origin: str | None,
    checks: _Checks,
) -> _Parsed | None:
    # Cheap checks (encoding, hashes, proofs) run before the signature checks, so a
    # fail-fast run over a damaged file rarely pays for an Ed25519 verification.
    report = checks.report
    fail = checks.fail

    # 1. The file is exactly the canonical encoding of what it says.
    try:
        raw = load_strict_json(data, "bundle file")
        if not isinstance(raw, dict):
            raise ValueError("bundle file is not a JSON object")
        if canonical_json(raw) + b"\n" != data:
            raise ValueError(
                "bundle file is not byte-for-byte canonical JSON plus one newline "
                "(it was changed after it was made)"
            )
    except (ValueError, CanonicalJSONError, UnicodeEncodeError) as exc:
        fail("bundle file", str(exc))
        return None
    try:
        bundle = AuditBundle.model_validate(raw)
    except ValidationError as exc:
        fail("bundle format", validation_summary(exc))
        return None
    report.passed.append("bundle file is canonical and well-formed")
    manifest = bundle.manifest
    report.client_id, report.since, report.until = (
        manifest.client_id,
        manifest.since,
        manifest.until,
    )
    report.receipt_count = len(bundle.receipts)

    # 2. The log key: pinned by the caller, or the bundle's own (and then say so).
    bundle_key = bundle.log_key.jwk.public_key()
    trusted = bundle_key if log_key is None else log_key
    report.log_key_id = key_id(trusted)
    report.log_key_pinned = log_key is not None
    if log_key is None:
        report.warnings.append(
            f"log key taken from the bundle itself (kid {key_id(bundle_key)}): "
            "pin the control plane's key with --log-key to know who signed it"
        )
    elif public_key_bytes(log_key) != public_key_bytes(bundle_key):
        fail(
            "log key",
            f"the bundle's log key (kid {key_id(bundle_key)}) is not the pinned key "
            f"(kid {key_id(log_key)})",
        )
    if log_key_name is not None and bundle.log_key.name != log_key_name:
        fail(
            "log key",
            f"the bundle's log key is named {bundle.log_key.name!r}, not {log_key_name!r}",
        )

    # 3. The checkpoint is the one the manifest names (its signature comes later).
    checkpoint: Checkpoint | None = None
    if hashlib.sha256(bundle.checkpoint.encode("utf-8")).hexdigest() != manifest.checkpoint_sha256:
        fail("checkpoint", "the checkpoint is not the one the signed manifest names")
    try:
        checkpoint = parse_checkpoint(bundle.checkpoint)
    except CheckpointError as exc:
        fail("checkpoint", str(exc))
    if checkpoint is not None:
        report.origin, report.tree_size = checkpoint.origin, checkpoint.size
        if origin is not None and checkpoint.origin != origin:
            fail("checkpoint", f"is for log {checkpoint.origin!r}, expected {origin!r}")

    # 4. Node keys, as the control plane vouches for them in the manifest.
    node_keys: dict[str, list[Ed25519PublicKey]] = {
        node_id: [jwk.public_key() for jwk in jwks] for node_id, jwks in manifest.node_keys.items()
    }
    for node_id, keys in node_keys.items():
        if not keys:
            fail("node keys", f"node {node_id!r} is listed without a key")

    # 5. The receipts are exactly the ones the manifest lists, in log order.
    listed = {m.index: m for m in manifest.receipts}
    for prev, cur in zip(manifest.receipts, manifest.receipts[1:], strict=False):
        if cur.index <= prev.index:
            fail("manifest", f"lists log index {cur.index} after {prev.index}: not in log order")
    present = {r.index for r in bundle.receipts}
    for m in manifest.receipts:
        if m.index not in present:
            fail(
                "receipt list",
                f"record {m.record_id} is in the signed manifest but missing from the bundle",
                index=m.index,
            )
    for pos in range(1, len(bundle.receipts)):
        prev_index, cur_index = bundle.receipts[pos - 1].index, bundle.receipts[pos].index
        if cur_index <= prev_index:
            fail(
                "receipt order",
                f"comes after log index {prev_index}: receipts must be in log order",
                receipt=pos,
                index=cur_index,
            )

    # 6. Each receipt's entry, leaf hash, record and inclusion proof.
    entries: dict[int, LogEntry] = {}
    seen_records: dict[str, int] = {}
    proofs_ok = 0
    for pos, receipt in enumerate(bundle.receipts):
        idx = receipt.index
        where = {"receipt": pos, "index": idx}
        expected = listed.get(idx)
        if expected is None:
            fail("receipt list", "not listed in the signed manifest", **where)
        try:
            entry = LogEntry.model_validate(receipt.entry)
        except ValidationError as exc:
            fail("log entry", validation_summary(exc), **where)
            continue
        entries[pos] = entry
        leaf = leaf_hash(canonical_json(receipt.entry))
        record = entry.record
        if expected is not None:
            if b64decode_canonical(expected.leaf_hash) != leaf:
                fail("leaf hash", "the entry is not the one the signed manifest lists", **where)
            if expected.record_id != record.record_id:
                fail(
                    "receipt list", f"the manifest lists record {expected.record_id} here", **where
                )
        if record.record_id in seen_records:
            fail(
                "record",
                f"record {record.record_id} is also at log index {seen_records[record.record_id]}",
                **where,
            )
        seen_records.setdefault(record.record_id, idx)
        if record.client_id != manifest.client_id:
            fail(
                "record", f"is for client {record.client_id!r}, not {manifest.client_id!r}", **where
            )
        if not _in_period(record.ended_at, manifest.since, manifest.until):
            period = _period_text(manifest.since, manifest.until)
            fail("period", f"ended at {record.ended_at}, outside {period}", **where)
        if checkpoint is None:
            fail("inclusion proof", "no readable checkpoint to check it against", **where)
            continue
        try:
            proof = [
                b64decode_canonical(h, length=HASH_SIZE, what=f"proof hash {i}")
                for i, h in enumerate(receipt.inclusion_proof)
            ]
            verify_inclusion(leaf, idx, checkpoint.size, proof, checkpoint.root_hash)
            proofs_ok += 1
        except (CanonicalEncodingError, ProofError) as exc:
            fail("inclusion proof", str(exc), **where)

    # 7. Signatures: the manifest and the checkpoint by the log key, records by nodes.
    try:
        _verifydetached_jws(raw["manifest"], bundle.manifest_signature, trusted)
        report.passed.append(f"manifest signature by the log key (kid {key_id(trusted)})")
    except envelope.EnvelopeError as exc:
        fail("manifest signature", str(exc))
    try:
        open_checkpoint(bundle.checkpoint, trusted, name=bundle.log_key.name)
        if checkpoint is not None:
            report.passed.append(
                f"checkpoint signature: log {checkpoint.origin}, tree size {checkpoint.size}"
            )
    except CheckpointError as exc:
        fail("checkpoint signature", str(exc))
    node_ok = 0
    for pos, entry in entries.items():
        where = {"receipt": pos, "index": bundle.receipts[pos].index}
        try:
            signed = open_usage_record(entry.node_jws, node_keys)
        except UsageRecordError as exc:
            fail("node signature", str(exc), **where)
            continue
        if signed.document() != bundle.receipts[pos].entry["record"]:
            fail("node signature", "the entry's record is not what the node signed", **where)
            continue
        node_ok += 1

    if bundle.receipts:
        total = len(bundle.receipts)
        report.passed.append(f"node signatures: {node_ok} of {total}")
        report.passed.append(f"inclusion proofs against the checkpoint: {proofs_ok} of {total}")
    failed_positions = {f.receipt for f in report.failures}
    verified = {
        bundle.receipts[pos].index: entry
        for pos, entry in entries.items()
        if pos not in failed_positions
    }
    return _Parsed(bundle, node_keys, verified)


def verify_bundle(
    data: bytes,
    *,
    log_key: Ed25519PublicKey | None = None,
    log_key_name: str | None = None,
    origin: str | None = None,
    fail_fast: bool = False,
) -> BundleReport:
    """Check every part of an audit bundle file; the report lists each failure.

    ``log_key`` pins the control plane's log key (recommended; without it the bundle's
    own key is trusted and the report warns). ``log_key_name`` and ``origin``, when
    given, must match the bundle's note key name and the checkpoint's origin.
    ``fail_fast`` stops at the first failed check: the verdict is the same, the list of
    failures shorter, and a damaged file is rejected without the costlier checks.
    """
    report, _ = _verify(data, log_key, log_key_name, origin, fail_fast)
    return report


def verify_held_receipt(
    held: str,
    data: bytes,
    *,
    log_key: Ed25519PublicKey | None = None,
    log_key_name: str | None = None,
    origin: str | None = None,
) -> BundleReport:
    """Check the bundle, and that a client-held node-signed record is in it unchanged.

    ``held`` is the compact JWS the client got when its session ended.
    """
    report, parsed = _verify(data, log_key, log_key_name, origin)
    held = held.strip()
    try:
        check_compact_jws(held, "the file")
    except UsageRecordError as exc:
        report.fail("held receipt", str(exc))
        return report
    if parsed is None:
        report.fail("held receipt", "can't be looked up: the bundle itself is unreadable")
        return report
    bundle = parsed.bundle
    try:
        record = open_usage_record(held, parsed.node_keys)
    except UsageRecordError as exc:
        report.fail("held receipt", f"does not verify against the bundle's node keys: {exc}")
        return report
    for receipt in bundle.receipts:
        entry = receipt.entry
        if entry.get("node_jws") == held:
            report.held_log_index = receipt.index
            if receipt.index in parsed.entries:
                report.passed.append(
                    f"held receipt {record.record_id} is the ledger's entry at log index "
                    f"{receipt.index}"
                )
            else:
                report.fail(
                    "held receipt",
                    "is in the bundle, but that entry failed its checks (see above)",
                    index=receipt.index,
                )
            return report
    for receipt in bundle.receipts:
        logged = receipt.entry.get("record")
        if isinstance(logged, dict) and logged.get("record_id") == record.record_id:
            report.fail(
                "held receipt",
                f"the ledger holds a different record for record id {record.record_id}",
                index=receipt.index,
            )
            return report
    manifest = bundle.manifest
    if record.client_id != manifest.client_id:
        why = f"it is for client {record.client_id!r}, the bundle for {manifest.client_id!r}"
    elif not _in_period(record.ended_at, manifest.since, manifest.until):
        why = (
            f"it ended at {record.ended_at}, outside the bundle's period "
            f"{_period_text(manifest.since, manifest.until)}"
        )
    else:
        why = "the log is missing a genuine, node-signed record of this client and period"
    report.fail("held receipt", f"record {record.record_id} is not in the bundle: {why}")
    return report


# --- verifying consistency --------------------------------------------------------------


def _checkpoint_source(data: bytes, what: str) -> tuple[str, LogKey | None]:
    """The checkpoint text in a file: a bare note, or a JSON file carrying one."""
    if data.lstrip().startswith(b"{"):
        raw = load_strict_json(data, what)
        if not isinstance(raw, dict) or not isinstance(raw.get("checkpoint"), str):
            raise ValueError(f"{what} holds no checkpoint")
        key = None
        if "log_key" in raw:
            try:
                key = LogKey.model_validate(raw["log_key"])
            except ValidationError as exc:
                raise ValueError(f"{what}: log_key: {validation_summary(exc)}") from None
        return raw["checkpoint"], key
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None


def verify_consistency_files(
    old: bytes,
    new: bytes,
    *,
    log_key: Ed25519PublicKey | None = None,
    log_key_name: str | None = None,
    origin: str | None = None,
) -> ConsistencyReport:
    """Check that the tree head in ``new`` extends the one saved in ``old``.

    ``old`` is a signed checkpoint note, or a bundle or consistency file holding one;
    ``new`` is a consistency file. Both tree heads must be signed by the log key (the
    pinned ``log_key``, else the one ``new`` carries, which then must also have signed
    the tree head saved earlier), be for the same log, and the proof must hold.
    """
    report = ConsistencyReport()
    try:
        old_text, old_key = _checkpoint_source(old, "OLD")
    except ValueError as exc:
        report.fail("old tree head", str(exc))
        return report
    try:
        raw = load_strict_json(new, "NEW")
        new_file = ConsistencyFile.model_validate(raw)
    except ValueError as exc:  # ValidationError is a ValueError
        message = validation_summary(exc) if isinstance(exc, ValidationError) else str(exc)
        report.fail("consistency file", message)
        return report

    carried = new_file.log_key
    trusted = carried.jwk.public_key() if log_key is None else log_key
    name = log_key_name or carried.name
    report.log_key_id = key_id(trusted)
    report.log_key_pinned = log_key is not None
    if log_key is None:
        report.warnings.append(
            f"log key taken from NEW (kid {key_id(trusted)}); it must also have signed OLD, "
            "but pin it with --log-key to know who signed them"
        )
    elif public_key_bytes(log_key) != public_key_bytes(carried.jwk.public_key()):
        report.fail(
            "log key",
            f"NEW carries log key kid {key_id(carried.jwk.public_key())}, "
            f"not the pinned kid {key_id(log_key)}",
        )
    if old_key is not None and public_key_bytes(old_key.jwk.public_key()) != public_key_bytes(
        trusted
    ):
        report.warnings.append(
            "OLD names another log key than the one used; checking with the latter"
        )

    heads: list[Checkpoint | None] = []
    for label, text in (("old tree head", old_text), ("new tree head", new_file.checkpoint)):
        try:
            head = open_checkpoint(text, trusted, name=name, origin=origin)
            report.passed.append(f"{label} signature: tree size {head.size}")
            heads.append(head)
        except CheckpointError as exc:
            report.fail(label, str(exc))
            heads.append(None)
    old_head, new_head = heads
    if old_head is None or new_head is None:
        return report
    report.origin, report.old_size, report.new_size = new_head.origin, old_head.size, new_head.size
    if old_head.origin != new_head.origin:
        report.fail("origin", f"OLD is for log {old_head.origin!r}, NEW for {new_head.origin!r}")
        return report
    if new_file.old_size != old_head.size:
        report.fail(
            "consistency proof",
            f"NEW proves growth from size {new_file.old_size}, but OLD has size {old_head.size}",
        )
        return report
    proof = [b64decode_canonical(h) for h in new_file.consistency_proof]
    try:
        verify_consistency(
            old_head.size, new_head.size, old_head.root_hash, new_head.root_hash, proof
        )
    except ProofError as exc:
        report.fail("consistency proof", str(exc))
        return report
    report.passed.append(
        f"consistency: the tree of {old_head.size} is a prefix of the tree of {new_head.size}"
    )
    return report
