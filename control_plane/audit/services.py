"""Audit use cases: collect usage records from the nodes; serve bundles and proofs.

Collection (:func:`collect_node`), per node and page:

1. ``GET /internal/usage?after=CURSOR`` on the node's management listener, signed with
   the control plane's key;
2. verify each node-signed record against the key registered for the node; a record
   that fails is reported (log, ``RefusedRecord``) and never stored;
3. log the verified ones (``ledger.append``: receipts, subtrees and a signed tree head
   in one transaction, under the ledger lock; a record already logged is not logged
   again);
4. only after that commit, ``POST /internal/usage/ack``: by cursor for the unbroken run
   of stored records from the start, by record id for stored ones after a refused one;
5. move the node's stored cursor to the end of that unbroken run.

A crash between 3 and 4 leaves the records unacknowledged on the node: the next run
fetches them again, finds them logged, and acknowledges them. Nothing is lost (the node
keeps a record until it is acknowledged) and nothing is doubled (``record_id`` is unique
and checked under the lock).

The acknowledgement carries each record's placement (ledger index, ``logged_at``, leaf
hash) and the latest signed tree head; the node keeps both for its receipt retention.
After a restore from an older backup the ledger is behind a tree head the node or the
witness file holds and refuses to sign; :func:`recover_ledger` then collects the
placed records from every node and puts them back at their indexes (``ledger.reappend``)
before collection goes on.
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydantic import TypeAdapter, ValidationError

from control_plane.audit.ledger import (
    AppendResult,
    LedgerBehind,
    LedgerForked,
    Placed,
    PlacedStatement,
    Verified,
    append,
    append_statement,
    check_not_behind,
    consistency,
    current_tree_head,
    inclusion_proofs,
    log_entry,
    log_key,
    log_key_name,
    log_origin,
    node_public_keys,
    now_ms,
    reappend,
    statement_entry,
    tree_root,
)
from control_plane.audit.models import (
    CollectionState,
    Receipt,
    RefusedRecord,
    Statement,
    TreeHead,
)
from control_plane.audit.querysets import ReceiptQuerySet
from control_plane.audit.scopes import AuditScope
from control_plane.audit.witness import WitnessError, remember_node_head, witnessed_heads
from control_plane.clients.models import Client
from control_plane.core.signing import management_auth
from control_plane.core.tls import management_client
from control_plane.fleet.models import Node, NodeState
from control_plane.registry.models import SoftwareRelease
from shared.attestation import (
    ATTESTATION_PATH,
    ATTESTATION_PLACED_PATH,
    StatementError,
    StatementPlaced,
    build_allowed_releases,
    build_statement_proof,
    open_statement,
)
from shared.attestation import PlacedStatement as StatementPlacement
from shared.checkpoint import verifier_key
from shared.keys import (
    KeyFileError,
    b64url,
    key_id,
    public_jwk,
    public_key_bytes,
    public_key_from_pem,
    public_pem,
)
from shared.ledger import LedgerError, ReceiptProof, build_bundle, dump_consistency
from shared.usage import (
    MAX_COUNT,
    USAGE_ACK_PATH,
    USAGE_PATH,
    USAGE_PLACED_PATH,
    OutboxItem,
    PlacedPage,
    Placement,
    UsageAck,
    UsagePage,
    UsageRecordError,
    format_timestamp,
    open_usage_record,
    parse_timestamp,
    validation_summary,
)

log = logging.getLogger(__name__)

_MAX_REASON = 500


class CollectError(Exception):
    """A collection run for a node could not go on (node unreachable, bad answer...)."""


class UnknownClient(LookupError):
    """No such client: neither registered nor named by any receipt."""


class UnknownTreeHead(LookupError):
    """No signed tree head of that size."""


# --- collection -------------------------------------------------------------------------


@dataclass
class CollectOutcome:
    """What one collection run from one node did."""

    node: str
    fetched: int = 0
    appended: int = 0
    already: int = 0
    refused: int = 0
    acked: int = 0
    cursor: int = 0
    tree_size: int | None = None
    error: str = ""
    skipped: bool = False  # another run holds this node's lease
    statement_index: int | None = None  # where the node's current statement is logged
    statement_error: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"node={self.node} skipped (another run is collecting)"
        text = (
            f"node={self.node} fetched={self.fetched} logged={self.appended} "
            f"already={self.already} refused={self.refused} acked={self.acked} "
            f"cursor={self.cursor} tree_size={self.tree_size}"
        )
        if self.statement_error:
            text = f"{text} statement_error={self.statement_error!r}"
        return f"{text} error={self.error!r}" if self.error else text


def _lease_seconds() -> float:
    ledger = settings.SANCTUM.ledger
    # One page's fetch and ack at worst, and the append between them; renewed per page.
    return 2 * (ledger.connect_timeout_seconds + ledger.timeout_seconds) + 10


def _take_lease(node: Node) -> CollectionState | None:
    now = timezone.now()
    CollectionState.objects.get_or_create(node=node)
    taken = (
        CollectionState.objects.filter(node=node)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + timedelta(seconds=_lease_seconds()), last_run_at=now)
    )
    return CollectionState.objects.get(node=node) if taken else None


def _renew_lease(state: CollectionState) -> None:
    until = timezone.now() + timedelta(seconds=_lease_seconds())
    CollectionState.objects.filter(pk=state.pk).update(lease_until=until)


def _start_cursor(node: Node, state: CollectionState) -> int:
    """The stored cursor, unless the node's health shows an outbox that started over.

    Cursors are stable across a node's restarts; a node whose outbox was wiped (a new
    disk) counts from the start again, and records after our old cursor would never be
    asked for. Its health report's ``last_cursor`` below our cursor gives that away.
    """
    health = NodeState.objects.filter(node=node).values_list("health", flat=True).first()
    usage = health.get("usage") if isinstance(health, dict) else None
    last = usage.get("last_cursor") if isinstance(usage, dict) else None
    if isinstance(last, int) and last < state.cursor:
        log.warning(
            "node %s reports last cursor %d below our %d: its outbox started over; "
            "collecting from the start",
            node.name,
            last,
            state.cursor,
        )
        return 0
    return state.cursor


def _http_error(what: str, exc: httpx.HTTPError) -> CollectError:
    return CollectError(f"{what}: node unreachable: {type(exc).__name__}: {exc}"[:_MAX_REASON])


def _answer_error(what: str, response: httpx.Response) -> CollectError:
    try:
        error = response.json().get("error") or {}
        code = str(error.get("code") or "")
    except (ValueError, AttributeError):
        code = ""
    hint = ""
    if response.status_code == 401:
        hint = " (does the node trust this control plane's key?)"
    return CollectError(f"{what}: HTTP {response.status_code} {code or 'error'}{hint}")


def _fetch(http: httpx.Client, node: Node, after: int, limit: int) -> UsagePage:
    try:
        response = http.get(USAGE_PATH, params={"after": after, "limit": limit})
    except httpx.HTTPError as exc:
        raise _http_error("listing usage", exc) from None
    if response.status_code != 200:
        raise _answer_error("listing usage", response)
    try:
        page = UsagePage.model_validate_json(response.content)
    except ValidationError as exc:
        raise CollectError(f"malformed usage page: {validation_summary(exc)}") from None
    if page.node_id != node.name:
        raise CollectError(
            f"the node at {node.management_url} says it is {page.node_id[:64]!r}, not {node.name!r}"
        )
    cursors = [item.cursor for item in page.records]
    if any(c <= after for c in cursors) or cursors != sorted(set(cursors)):
        raise CollectError("usage page cursors are not increasing from the one asked for")
    return page


def _attest(http: httpx.Client, node: Node, key_pem: str) -> int:
    """Ask the node for its statement (a nonce of ours), log it if its claims are new,
    and tell the node where it is logged; returns the log index.

    Raises :class:`CollectError` when the node's answer is not a statement of its own,
    for this nonce, signed by the key registered for it.
    """
    nonce = b64url(secrets.token_bytes(32))
    try:
        response = http.get(ATTESTATION_PATH, params={"nonce": nonce})
    except httpx.HTTPError as exc:
        raise _http_error("asking for the node's statement", exc) from None
    if response.status_code != 200:
        raise _answer_error("asking for the node's statement", response)
    token = response.text.strip()
    try:
        statement = open_statement(token)
    except StatementError as exc:
        raise CollectError(f"the node's statement: {exc}"[:_MAX_REASON]) from None
    registered = public_key_from_pem(key_pem)
    if statement.node_id != node.name:
        raise CollectError(f"the node's statement names node {statement.node_id[:64]!r}")
    if public_key_bytes(statement.signing_key()) != public_key_bytes(registered):
        raise CollectError("the node's statement is not signed by the key registered for it")
    if statement.nonce != nonce:
        raise CollectError("the node's statement answers another nonce")
    row, logged = append_statement(token, key_id(registered), key_pem)
    placed = StatementPlaced(
        jws=row.node_jws,
        log_index=row.log_index,
        logged_at=format_timestamp(row.logged_at),
        leaf_hash=base64.b64encode(bytes(row.leaf_hash)).decode("ascii"),
    )
    try:
        response = http.post(
            ATTESTATION_PLACED_PATH,
            content=placed.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as exc:
        raise _http_error("telling the node where its statement is logged", exc) from None
    if response.status_code != 200:
        raise _answer_error("telling the node where its statement is logged", response)
    if logged:
        log.info("node %s: new statement logged at index %d", node.name, row.log_index)
    return row.log_index


def attest_node(node: Node) -> int:
    """Log ``node``'s current statement now (after it applied a config, say)."""
    key_pem = (node.public_key or "").strip()
    try:
        public_key_from_pem(key_pem)
    except KeyFileError:
        raise CollectError("the node has no readable public key registered") from None
    with _node_http(node) as http:
        return _attest(http, node, key_pem)


def _placements(record_ids: set[str]) -> list[Placement]:
    """Where each of these (logged) records sits in the ledger: what the node keeps."""
    rows = Receipt.objects.filter(record_id__in=list(record_ids)).values_list(
        "record_id", "log_index", "logged_at", "leaf_hash"
    )
    return [
        Placement(
            record_id=str(record_id),
            log_index=index,
            logged_at=format_timestamp(logged_at),
            leaf_hash=base64.b64encode(bytes(leaf)).decode("ascii"),
        )
        for record_id, index, logged_at, leaf in rows
    ]


def _ack(
    http: httpx.Client,
    cursor: int | None,
    record_ids: list[str],
    placements: list[Placement],
    tree_head: str | None,
) -> None:
    body = UsageAck(
        cursor=cursor, record_ids=record_ids, placements=placements, tree_head=tree_head
    ).model_dump_json(exclude_none=True)
    try:
        response = http.post(
            USAGE_ACK_PATH, content=body, headers={"Content-Type": "application/json"}
        )
    except httpx.HTTPError as exc:
        raise _http_error("acknowledging", exc) from None
    if response.status_code != 200:
        raise _answer_error("acknowledging", response)


def _verify(
    node: Node, items: list[OutboxItem], key_pem: str
) -> tuple[list[Verified], dict[int, str]]:
    """Split a page into verified records and refusals (cursor -> reason)."""
    key = public_key_from_pem(key_pem)
    kid = key_id(key)
    verified: list[Verified] = []
    refused: dict[int, str] = {}
    for item in items:
        try:
            record = open_usage_record(item.jws, {node.name: key})
        except UsageRecordError as exc:
            refused[item.cursor] = str(exc)[:_MAX_REASON]
            continue
        if record.record_id != item.record_id:
            refused[item.cursor] = "the listing names another record id than the signed record"
            continue
        verified.append(
            Verified(jws=item.jws, record=record, node_key_id=kid, node_key_pem=key_pem)
        )
    return verified, refused


def _report_refused(node: Node, items: list[OutboxItem], refused: dict[int, str]) -> None:
    now = timezone.now()
    for item in items:
        reason = refused.get(item.cursor)
        if reason is None:
            continue
        log.warning(
            "usage record refused node=%s cursor=%d record=%s: %s",
            node.name,
            item.cursor,
            item.record_id[:64],
            reason,
        )
        row, created = RefusedRecord.objects.get_or_create(
            node=node,
            cursor=item.cursor,
            defaults={
                "record_id": item.record_id[:64],
                "reason": reason,
                "first_seen_at": now,
                "last_seen_at": now,
            },
        )
        if not created:
            row.reason, row.last_seen_at, row.resolved_at = reason, now, None
            row.times_seen += 1
            row.save()


def _resolve_refused(node: Node, cursors: list[int]) -> None:
    if cursors:
        RefusedRecord.objects.filter(
            node=node, cursor__in=cursors, resolved_at__isnull=True
        ).update(resolved_at=timezone.now())


def _node_http(node: Node) -> httpx.Client:
    """A client for ``node``'s management listener, as collection talks to it: signed
    requests for that node, mutual TLS once it is enrolled, the ledger's timeouts."""
    ledger = settings.SANCTUM.ledger
    return management_client(
        node.management_url.rstrip("/"),
        node.name,
        auth=management_auth(node.name),
        timeout=httpx.Timeout(ledger.timeout_seconds, connect=ledger.connect_timeout_seconds),
    )


def collect_node(node: Node) -> CollectOutcome:
    """One collection run from ``node``: fetch, verify, log, sign, then acknowledge.

    Records the outcome on the node's :class:`CollectionState` and returns it; a node that
    can't be reached or answers badly is an ``error`` in the outcome, not an exception.
    """
    outcome = CollectOutcome(node=node.name)
    state = _take_lease(node)
    if state is None:
        outcome.skipped = True
        return outcome
    outcome.cursor = state.cursor
    try:
        _collect(node, state, outcome)
    except (LedgerError, WitnessError) as exc:
        # Behind or forked: nothing was signed, nothing acknowledged; said plainly.
        outcome.error = str(exc)[:_MAX_REASON]
        log.error("collection from node %s stopped: %s", node.name, outcome.error)
    except CollectError as exc:
        outcome.error = str(exc)[:_MAX_REASON]
        log.warning("collection from node %s failed: %s", node.name, outcome.error)
    finally:
        now = timezone.now()
        changes: dict[str, object] = {
            "lease_until": None,
            "cursor": outcome.cursor,
            "last_error": outcome.error,
            "refused_pending": outcome.refused,
        }
        if not outcome.error:
            changes["last_success_at"] = now
        with transaction.atomic():
            fresh = CollectionState.objects.select_for_update().get(pk=state.pk)
            for name, value in changes.items():
                setattr(fresh, name, value)
            fresh.collected_total += outcome.appended
            fresh.save()
    if outcome.appended or outcome.refused:
        log.info("collected %s", outcome.summary())
    return outcome


def _collect(node: Node, state: CollectionState, outcome: CollectOutcome) -> None:
    ledger = settings.SANCTUM.ledger
    key_pem = (node.public_key or "").strip()
    try:
        public_key_from_pem(key_pem)
    except KeyFileError:
        raise CollectError("the node has no readable public key registered") from None
    if not _heads_asked:
        ask_nodes_for_tree_heads()
    if ledger_status().problem:
        recover_ledger()  # restored from an older backup: raises if it can't catch up
    after = _start_cursor(node, state)
    acked_cursor = after  # every record at or below it is stored and acknowledged
    unbroken = True  # every record listed in this run so far is stored
    first = True
    with _node_http(node) as http:
        # The statement first: the records the node signs from now on name its index.
        # A node whose statement fails is still collected (its records are its own
        # signed word); the failure is reported with the outcome.
        try:
            outcome.statement_index = _attest(http, node, key_pem)
        except CollectError as exc:
            outcome.statement_error = str(exc)[:_MAX_REASON]
            log.warning("node %s statement not logged: %s", node.name, outcome.statement_error)
        for _ in range(ledger.max_pages_per_run):
            page = _fetch(http, node, after, ledger.page_size)
            remember_node_head(state, page.tree_head)
            if first and ledger_status().problem:
                recover_ledger()  # this node's tree head shows the ledger is behind
            first = False
            outcome.fetched += len(page.records)
            verified, refused = _verify(node, page.records, key_pem)
            try:
                result: AppendResult = append(verified)  # committed when it returns
            except LedgerBehind:
                # Restored from an older backup: put back what the nodes kept, then
                # append (raises on if the gap can't be filled: nothing is signed).
                recover_ledger()
                result = append(verified)
            for record_id in result.conflicts:
                at = next(i.cursor for i in page.records if i.record_id == record_id)
                refused[at] = "the ledger holds a different signed record with this id"
            outcome.appended += len(result.appended)
            outcome.already += len(result.already)
            outcome.refused += len(refused)
            if result.tree_head is not None:
                outcome.tree_size = result.tree_head.size
            _report_refused(node, page.records, refused)

            stored = result.stored
            cursor: int | None = None
            ids: list[str] = []
            resolved: list[int] = []
            for item in page.records:
                if item.cursor not in refused and item.record_id in stored:
                    resolved.append(item.cursor)
                    if unbroken:
                        cursor = item.cursor
                    else:
                        ids.append(item.record_id)
                else:
                    unbroken = False
            if cursor is not None or ids:
                head = result.tree_head.checkpoint if result.tree_head is not None else None
                _ack(http, cursor, ids, _placements(set(resolved_ids(page, resolved))), head)
                outcome.acked += len(resolved)
            _resolve_refused(node, resolved)
            if cursor is not None:
                acked_cursor = cursor
                outcome.cursor = cursor
                CollectionState.objects.filter(pk=state.pk).update(cursor=cursor)
            _renew_lease(state)
            after = page.next
            if not page.more:
                break
    outcome.cursor = acked_cursor


def resolved_ids(page: UsagePage, cursors: list[int]) -> list[str]:
    wanted = set(cursors)
    return [item.record_id for item in page.records if item.cursor in wanted]


# --- after a restore --------------------------------------------------------------------

_heads_asked = False  # this process has asked every node for its tree head


def ask_nodes_for_tree_heads() -> None:
    """Ask every enabled node for the tree head it holds, and keep what verifies.

    Collection does it once per process before its first append: a control plane started
    on a restored database then knows the largest tree head any node holds before it logs
    anything, even without a witness file (a node it can't reach is asked when it is
    collected). An empty page past every cursor is all it costs.
    """
    global _heads_asked
    for node in Node.objects.enabled():
        try:
            with _node_http(node) as http:
                page = _fetch(http, node, MAX_COUNT, 1)
        except (CollectError, httpx.HTTPError, ValueError) as exc:
            log.info("tree head of node %s not asked: %s", node.name, exc)
            continue
        state, _ = CollectionState.objects.get_or_create(node=node)
        remember_node_head(state, page.tree_head)
    _heads_asked = True


@dataclass
class LedgerStatus:
    """The ledger against the tree heads kept outside the database."""

    size: int
    witnessed_size: int | None = None
    witnessed_by: str = ""
    problem: str = ""  # empty when the ledger may sign

    @property
    def behind(self) -> int:
        return max(0, (self.witnessed_size or 0) - self.size)

    def summary(self) -> str:
        seen = (
            f"witnessed={self.witnessed_size} by={self.witnessed_by!r}"
            if self.witnessed_size is not None
            else "witnessed=none"
        )
        state = self.problem or "ok"
        return f"ledger size={self.size} {seen} behind={self.behind} status={state}"


def ledger_status() -> LedgerStatus:
    """Whether the ledger may sign: its size against the largest witnessed tree head."""
    head = TreeHead.objects.latest_head()
    status = LedgerStatus(size=head.size if head is not None else 0)
    try:
        heads = witnessed_heads()
        if heads:
            status.witnessed_size, status.witnessed_by = heads[0].size, heads[0].source
        root = bytes(head.root_hash) if head is not None else tree_root(0)
        check_not_behind(status.size, root)
    except (LedgerBehind, LedgerForked, WitnessError) as exc:
        status.problem = str(exc)
    return status


def _fetch_placed(node: Node, from_index: int, upto: int) -> list[Placed | PlacedStatement]:
    """Every record ``node`` kept with a placement from ``from_index`` up to ``upto``,
    verified. A node that keeps answering "more" stops at ``upto``: recovery never
    pages further than the gap it fills."""
    ledger = settings.SANCTUM.ledger
    key_pem = (node.public_key or "").strip()
    try:
        key = public_key_from_pem(key_pem)
    except KeyFileError:
        raise CollectError(f"node {node.name} has no readable public key registered") from None
    kid = key_id(key)
    out: list[Placed | PlacedStatement] = []
    state, _ = CollectionState.objects.get_or_create(node=node)
    with _node_http(node) as http:
        after = from_index
        while True:
            try:
                response = http.get(
                    USAGE_PLACED_PATH, params={"from_index": after, "limit": ledger.page_size}
                )
            except httpx.HTTPError as exc:
                raise _http_error(f"node {node.name}: listing placed usage", exc) from None
            if response.status_code != 200:
                raise _answer_error(f"node {node.name}: listing placed usage", response)
            try:
                page = PlacedPage.model_validate_json(response.content)
            except ValidationError as exc:
                raise CollectError(f"malformed placed page: {validation_summary(exc)}") from None
            if page.node_id != node.name:
                raise CollectError(f"the node at {node.management_url} is not {node.name!r}")
            remember_node_head(state, page.tree_head)
            for item in page.records:
                placement = item.placement
                try:
                    record = open_usage_record(item.jws, {node.name: key})
                    leaf = base64.b64decode(placement.leaf_hash, validate=True)
                    parse_timestamp(placement.logged_at)
                except (UsageRecordError, ValueError) as exc:
                    log.warning(
                        "placed record refused node=%s index=%d: %s",
                        node.name,
                        placement.log_index,
                        str(exc)[:_MAX_REASON],
                    )
                    continue
                if record.record_id != placement.record_id:
                    continue
                verified = Verified(item.jws, record, kid, key_pem)
                out.append(Placed(verified, placement.log_index, placement.logged_at, leaf))
            if not page.more or page.next <= after or page.next >= upto:
                break
            after = page.next
        out += _fetch_placed_statements(http, node, key_pem, from_index, upto)
    return out


def _fetch_placed_statements(
    http: httpx.Client, node: Node, key_pem: str, from_index: int, upto: int
) -> list[PlacedStatement]:
    """The statements ``node`` kept with where they were logged, in ``[from_index, upto)``,
    each its own, signed by its registered key."""
    key = public_key_from_pem(key_pem)
    try:
        response = http.get(ATTESTATION_PLACED_PATH)
    except httpx.HTTPError as exc:
        raise _http_error(f"node {node.name}: listing placed statements", exc) from None
    if response.status_code == 404:
        return []  # a node from before statements
    if response.status_code != 200:
        raise _answer_error(f"node {node.name}: listing placed statements", response)
    try:
        items = TypeAdapter(list[StatementPlacement]).validate_json(response.content)
    except ValidationError as exc:
        raise CollectError(f"malformed placed statements: {validation_summary(exc)}") from None
    out: list[PlacedStatement] = []
    for item in items:
        placement = item.placement
        if not from_index <= placement.log_index < upto:
            continue
        try:
            statement = open_statement(item.jws)
            if statement.node_id != node.name or public_key_bytes(
                statement.signing_key()
            ) != public_key_bytes(key):
                raise ValueError("not this node's statement")
            leaf = base64.b64decode(placement.leaf_hash, validate=True)
            parse_timestamp(placement.logged_at)
        except (StatementError, ValueError) as exc:
            log.warning(
                "placed statement refused node=%s index=%d: %s",
                node.name,
                placement.log_index,
                str(exc)[:_MAX_REASON],
            )
            continue
        out.append(
            PlacedStatement(
                item.jws, key_id(key), key_pem, placement.log_index, placement.logged_at, leaf
            )
        )
    return out


def recover_ledger() -> LedgerStatus:
    """Collect again, from every enabled node, the records a restore lost, and put them
    back at their ledger indexes; then the ledger signs again.

    Raises :class:`~control_plane.audit.ledger.LedgerBehind` (plainly worded) when the
    nodes can't fill the gap; nothing is signed then.
    """
    status = ledger_status()
    if not status.behind and not status.problem:
        return status
    log.warning("%s; collecting the missing records again from the nodes", status.problem)
    placed: list[Placed | PlacedStatement] = []
    unreachable: list[str] = []
    for node in Node.objects.enabled():
        try:
            placed += _fetch_placed(node, status.size, status.size + status.behind)
        except CollectError as exc:
            unreachable.append(str(exc))
            log.warning("re-collection: %s", exc)
    try:
        head = reappend(placed)
    except LedgerBehind as exc:
        if unreachable:
            raise LedgerBehind(
                exc.size, exc.witnessed, "; ".join(unreachable)[:_MAX_REASON]
            ) from None
        raise
    status = ledger_status()
    log.warning("ledger caught up after a restore: tree size %d", head.size)
    return status


def collect_fleet() -> list[CollectOutcome]:
    """:func:`collect_node` for every enabled node, one after another (the reconciler)."""
    return [collect_node(node) for node in Node.objects.enabled()]


# --- auditors ---------------------------------------------------------------------------


def parse_moment(value: str | date | datetime) -> datetime:
    """An auditor's period bound: RFC 3339 (``Z`` or an offset), or a date (UTC midnight).

    Returned in UTC at millisecond precision, the precision of the bundle's manifest, so
    the receipts selected and the period the manifest states are the same.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("not a date or an RFC 3339 time, like 2025-01-31T12:00:00Z") from None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Period:
    """``since <= ended_at < until``; either end open when ``None``."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("the period ends before it starts (since must be before until)")


def client_known(client_id: str) -> bool:
    """A registered client, or one that receipts name (a client deleted since)."""
    return (
        Client.objects.filter(slug=client_id).exists()
        or Receipt.objects.filter(client=client_id).exists()
    )


def receipts_for(client_id: str, period: Period, *, scope: AuditScope) -> ReceiptQuerySet:
    """The client's receipts whose session ended in ``period``, in log order.

    Raises ``ClientOutOfScope`` when ``scope`` (the asking operator's,
    ``control_plane.audit.scopes.audit_scope``) does not include the client.
    """
    scope.check(client_id)
    return Receipt.objects.for_client(client_id).in_period(period.since, period.until)


def client_bundle(client_id: str, period: Period, *, scope: AuditScope) -> bytes:
    """The audit bundle of one client and period: the exact bytes to serve.

    Every receipt of the client whose session ended in the period and that the latest
    signed tree head covers, each with its inclusion proof against that head, the node
    keys, and the manifest signed by the log key (``shared.ledger.build_bundle``, which
    checks the result with the verifier before it is returned).

    Raises ``ClientOutOfScope`` when ``scope`` does not include the client (checked first,
    so a scoped operator can't tell another client that exists from one that doesn't),
    then ``UnknownClient``.
    """
    scope.check(client_id)
    if not client_known(client_id):
        raise UnknownClient(client_id)
    head = current_tree_head()
    receipts = list(
        receipts_for(client_id, period, scope=scope).in_tree(head.size).order_by("log_index")
    )
    proofs = inclusion_proofs([r.log_index for r in receipts], head.size)
    items = [
        ReceiptProof(index=r.log_index, entry=log_entry(r), inclusion_proof=proof)
        for r, proof in zip(receipts, proofs, strict=True)
    ]
    return build_bundle(
        client_id=client_id,
        since=period.since,
        until=period.until,
        generated_at=now_ms(),
        checkpoint=head.checkpoint,
        receipts=items,
        node_keys=node_public_keys(),
        log_key=log_key(),
        log_key_name=log_key_name(),
    )


def consistency_file(old_size: int, new_size: int | None = None) -> bytes:
    """The consistency file from ``old_size`` to the signed tree head of ``new_size``
    (default: the latest): ``shared.ledger.dump_consistency``'s canonical bytes."""
    if new_size is None:
        head = current_tree_head()
    else:
        found = TreeHead.objects.filter(size=new_size).first()
        if found is None:
            raise UnknownTreeHead(f"no signed tree head of size {new_size}")
        head = found
    if not 0 <= old_size <= head.size:
        raise ValueError(f"old size must be between 0 and {head.size}")
    return dump_consistency(
        checkpoint=head.checkpoint,
        old_size=old_size,
        proof=consistency(old_size, head.size),
        log_key=log_key().public_key(),
        log_key_name=log_key_name(),
    )


class UnknownStatement(LookupError):
    """No logged statement at that index."""


def statement_proof(index: int) -> bytes:
    """The proof file of the statement logged at ``index``: its entry, an inclusion
    proof and the latest signed tree head (``shared.attestation.build_statement_proof``)."""
    found = Statement.objects.filter(log_index=index).first()
    if found is None:
        raise UnknownStatement(f"no node statement is logged at index {index}")
    head = current_tree_head()
    (proof,) = inclusion_proofs([found.log_index], head.size)
    return build_statement_proof(
        entry=statement_entry(found),
        index=found.log_index,
        checkpoint=head.checkpoint,
        inclusion_proof=proof,
        log_key=log_key().public_key(),
        log_key_name=log_key_name(),
    )


def allowed_releases_file() -> bytes:
    """The release digests the control plane allows now, signed by the log key."""
    rows = SoftwareRelease.objects.allowed().values_list("digest", "name")
    return build_allowed_releases(
        list(rows), generated_at=now_ms(), log_key=log_key(), log_key_name=log_key_name()
    )


@dataclass
class LogKeyInfo:
    """The log's public key in the forms ``sanctum verify --log-key`` reads."""

    name: str
    origin: str
    key_id: str
    verifier_key: str
    pem: str
    jwk: dict[str, str] = field(default_factory=dict)


def log_key_info() -> LogKeyInfo:
    """The log key and its names: what an auditor pins (get it from the operator too)."""
    public = log_key().public_key()
    return LogKeyInfo(
        name=log_key_name(),
        origin=log_origin(),
        key_id=key_id(public),
        verifier_key=verifier_key(log_key_name(), public),
        pem=public_pem(public).decode("ascii"),
        jwk=public_jwk(public),
    )


@dataclass(frozen=True)
class QuotaUse:
    """A client's tokens in one UTC period, as its collected receipts count them."""

    period: str  # "day" or "month"
    since: datetime
    until: datetime
    tokens: int
    quota: int | None

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.tokens)


def quota_use(client: Client, at: datetime | None = None) -> list[QuotaUse]:
    """Tokens (prompt plus completion) ``client`` used this UTC day and month, from the
    receipts logged so far, against its quotas.

    Nodes enforce their shares of the quotas as they serve; this view lags them by the
    collection interval (records are pulled, not pushed).
    """
    from django.db.models import Sum

    at = (at or timezone.now()).astimezone(UTC)
    day = datetime(at.year, at.month, at.day, tzinfo=UTC)
    month = day.replace(day=1)
    next_month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
    out = []
    for name, since, until, quota in (
        ("day", day, day + timedelta(days=1), client.tokens_per_day),
        ("month", month, next_month, client.tokens_per_month),
    ):
        totals = (
            Receipt.objects.for_client(client.slug)
            .in_period(since, until)
            .aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        )
        tokens = (totals["prompt"] or 0) + (totals["completion"] or 0)
        out.append(QuotaUse(name, since, until, tokens, quota))
    return out
