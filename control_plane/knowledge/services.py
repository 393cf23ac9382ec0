"""Knowledge-base use cases: create, load documents onto the nodes, delete.

The admin page, the REST API and ``sanctum kb`` (through the API) call these. Loading
sends each file's bytes to every enabled node that serves the client, through the node's
management listener (``POST /internal/knowledge-bases/{client}/{kb}/documents``, base64
JSON, in batches within the limits the node states), each request signed with
:func:`~control_plane.core.signing.management_auth`. The bytes live only in this
process's memory while the request runs: nothing here writes them to a file, a row, a
task message or a log line. What is kept is the catalog (names, sizes, SHA-256, chunk
counts) and which node holds which document.

Network calls happen outside any database transaction (a node may take minutes to embed
a batch); the catalog and the change trail are written afterwards, in one transaction.
A change to the set of a client's knowledge bases (create, delete) queues a rollout on
commit, so the client's config lists them with no second step.

Logs carry ids and counts: never a document's name or content.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from control_plane.changes.choices import ChangeAction
from control_plane.clients.models import Client
from control_plane.core.errors import Conflict
from control_plane.core.signing import management_auth
from control_plane.core.tls import management_client
from control_plane.fleet.models import Node
from control_plane.knowledge.choices import CopyStatus, FileStatus, NodeOutcome
from control_plane.knowledge.models import (
    DocumentCopy,
    KnowledgeBase,
    KnowledgeDocument,
    document_name_validators,
)
from shared.management import KNOWLEDGE_BASES_PATH

log = logging.getLogger(__name__)

# Files per ingest request to a node (the node takes at most 256).
BATCH_FILES = 64
_MAX_ERROR = 300


class NoServingNodes(Conflict):
    """No enabled node serves the client: there is nowhere to load to."""

    def __init__(self) -> None:
        super().__init__(
            "no enabled node serves this client: register or enable a node first",
            "no_serving_nodes",
        )


@dataclass(frozen=True)
class UploadedDocument:
    """A file to load: its name in the knowledge base and its bytes (RAM only)."""

    name: str
    data: bytes = field(repr=False)


@dataclass
class NodeReport:
    """How one node answered: ``ok``, ``unreachable`` or ``error`` (with what it said)."""

    node: str
    status: str = NodeOutcome.OK
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = {"node": self.node, "status": self.status}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class FileResult:
    """One file of a load: the outcome over the nodes, and each node's own."""

    name: str
    status: str
    chunks: int = 0
    reason: str = ""
    nodes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "chunks": self.chunks,
            "nodes": self.nodes,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Report:
    """What a load or a delete did on each node (and, for a load, to each file)."""

    knowledge_base: KnowledgeBase
    nodes: list[NodeReport]
    results: list[FileResult] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every node answered."""
        return all(n.status == NodeOutcome.OK for n in self.nodes)

    @property
    def reached_none(self) -> bool:
        return not any(n.status == NodeOutcome.OK for n in self.nodes)


# --- Which nodes ---------------------------------------------------------------------------


def serving_nodes(client: Client) -> list[Node]:
    """The nodes that serve ``client``: the enabled nodes of its pool (as ``build_bundle``
    places it). Its documents go to these and to no other node."""
    return list(Node.objects.enabled().filter(pool=client.pool_id).order_by("name"))


# --- Talking to a node ---------------------------------------------------------------------


def _connect(node: Node) -> httpx.Client:
    knowledge = settings.SANCTUM.knowledge
    return management_client(
        node.management_url.rstrip("/"),
        node.name,
        auth=management_auth(node.name),
        timeout=httpx.Timeout(
            knowledge.node_timeout_seconds, connect=knowledge.connect_timeout_seconds
        ),
    )


class _NodeFailed(Exception):
    def __init__(self, outcome: str, error: str) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error[:_MAX_ERROR]


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One signed request; a transport failure becomes ``_NodeFailed(unreachable)``."""
    try:
        return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        # The exception's class says what happened; its text may hold the URL, no content.
        raise _NodeFailed(
            NodeOutcome.UNREACHABLE, f"node unreachable: {type(exc).__name__}"
        ) from None


def _refusal(response: httpx.Response) -> _NodeFailed:
    """A node's error answer (its OpenAI-shaped body carries a code and a message that
    never echo a document: the node's errors name fields, not their values)."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = str(error.get("code") or "error")
    message = str(error.get("message") or response.reason_phrase or "")
    return _NodeFailed(NodeOutcome.ERROR, f"HTTP {response.status_code} {code}: {message}")


def _kb_path(kb: KnowledgeBase) -> str:
    # Both names match the bundle-name rule (letters, digits, ``._:-``): nothing to escape,
    # and the path the node verifies the signature over is the path sent.
    return f"{KNOWLEDGE_BASES_PATH}/{kb.client.slug}/{kb.name}"


def node_limits(node: Node, client_slug: str) -> dict[str, Any]:
    """What one ingest request to ``node`` may carry (``GET /internal/knowledge-bases``)."""
    with _connect(node) as client:
        return _limits(client, client_slug)


def _limits(client: httpx.Client, client_slug: str) -> dict[str, Any]:
    # The listing is narrowed to one client so that the node reads little more than limits.
    response = _request(client, "GET", KNOWLEDGE_BASES_PATH, params={"client": client_slug})
    if response.status_code != 200:
        raise _refusal(response)
    try:
        limits: dict[str, Any] = response.json()["ingest"]
        int(limits["max_request_bytes"])
    except (ValueError, KeyError, TypeError):
        raise _NodeFailed(NodeOutcome.ERROR, "the node's limits are malformed") from None
    return limits


def _batches(files: Sequence[UploadedDocument], limit: int) -> Iterator[list[UploadedDocument]]:
    batch: list[UploadedDocument] = []
    size = 0
    for file in files:
        if batch and (size + len(file.data) > limit or len(batch) >= BATCH_FILES):
            yield batch
            batch, size = [], 0
        batch.append(file)
        size += len(file.data)
    if batch:
        yield batch


def _load_on_node(
    node: Node, path: str, client_slug: str, files: Sequence[UploadedDocument]
) -> tuple[NodeReport, dict[str, dict[str, Any]]]:
    """Send ``files`` to one node in batches; its report and its answer for each file."""
    answers: dict[str, dict[str, Any]] = {}
    try:
        with _connect(node) as client:
            limits = _limits(client, client_slug)
            max_request = int(limits["max_request_bytes"])
            max_document = int(limits.get("max_document_bytes") or max_request)
            # Leave room for base64 (4/3) and the JSON around it.
            batch_bytes = max(1, (max_request - 4096) * 3 // 4)
            sendable = []
            most = min(max_document, batch_bytes)
            for file in files:
                size = len(file.data)
                if size > most:
                    answers[file.name] = {
                        "status": FileStatus.SKIPPED,
                        "reason": f"too large ({size} bytes; at most {most})",
                    }
                else:
                    sendable.append(file)
            for batch in _batches(sendable, batch_bytes):
                body = {
                    "documents": [
                        {"name": f.name, "content": base64.b64encode(f.data).decode("ascii")}
                        for f in batch
                    ]
                }
                response = _request(client, "POST", f"{path}/documents", json=body)
                del body
                if response.status_code != 200:
                    raise _refusal(response)
                for result in response.json().get("results", []):
                    answers[str(result.get("name"))] = result
    except _NodeFailed as exc:
        return NodeReport(node.name, exc.outcome, exc.error), answers
    except ValueError:  # an answer that is not JSON
        return NodeReport(node.name, NodeOutcome.ERROR, "the node's answer is malformed"), answers
    return NodeReport(node.name), answers


# --- Use cases -----------------------------------------------------------------------------


def create_knowledge_base(client: Client, name: str, description: str = "") -> KnowledgeBase:
    """Create ``client``'s knowledge base ``name`` (empty) and roll out on commit, so the
    client's config lists it. 409 if the client has one of that name."""
    with transaction.atomic():
        if KnowledgeBase.objects.filter(client=client, name=name).exists():
            raise Conflict(
                "this client already has a knowledge base of that name", "knowledge_base_exists"
            )
        kb = KnowledgeBase(client=client, name=name, description=description)
        kb.full_clean()
        kb.save()
    log.info("knowledge base %s created for client %s", kb.pk, client.pk)
    return kb


def check_document_names(files: Sequence[UploadedDocument]) -> None:
    """Names the nodes take (1-512 characters, no control characters); 400 otherwise."""
    if not files:
        raise ValidationError({"file": "Send at least one file."})
    for file in files:
        if not file.name:
            raise ValidationError({"name": "Every file needs a name."})
        for validator in document_name_validators:
            try:
                validator(file.name)
            except ValidationError:
                raise ValidationError(
                    {"name": "A document name has 1-512 characters and no control characters."}
                ) from None


def load_documents(kb: KnowledgeBase, files: Sequence[UploadedDocument]) -> Report:
    """Load ``files`` into ``kb`` on every node serving its client; record the catalog.

    Each node checks, parses, chunks and embeds the files itself and answers per file:
    ingested, unchanged, or skipped with its reason. A file is in the catalog once a node
    holds it. A node that can't be reached or fails is in the report (and its copies are
    marked not reached); the other nodes load regardless. Raises :class:`NoServingNodes`
    when there is no enabled node.
    """
    check_document_names(files)
    nodes = serving_nodes(kb.client)
    if not nodes:
        raise NoServingNodes()
    # Two files of one name: the first is loaded, the second named and skipped.
    unique: list[UploadedDocument] = []
    duplicates: list[str] = []
    seen: set[str] = set()
    for file in files:
        if file.name in seen:
            duplicates.append(file.name)
        else:
            seen.add(file.name)
            unique.append(file)

    path, slug = _kb_path(kb), kb.client.slug
    if len(nodes) == 1:
        outcomes = [_load_on_node(nodes[0], path, slug, unique)]
    else:
        # Nodes in parallel (threads do HTTP only; the database is written afterwards).
        with ThreadPoolExecutor(max_workers=min(len(nodes), 4)) as pool:
            outcomes = list(pool.map(lambda n: _load_on_node(n, path, slug, unique), nodes))
    node_reports = [report for report, _ in outcomes]
    results = [_combine(file, nodes, outcomes) for file in unique]
    results += [
        FileResult(name, FileStatus.SKIPPED, reason="same name as an earlier file")
        for name in duplicates
    ]
    _record_load(kb, nodes, unique, outcomes)
    log.info(
        "knowledge base %s: %d files to %d nodes: ingested=%d unchanged=%d skipped=%d "
        "nodes_failed=%d",
        kb.pk,
        len(files),
        len(nodes),
        sum(r.status == FileStatus.INGESTED for r in results),
        sum(r.status == FileStatus.UNCHANGED for r in results),
        sum(r.status == FileStatus.SKIPPED for r in results),
        sum(r.status != NodeOutcome.OK for r in node_reports),
    )
    return Report(kb, node_reports, results)


def _combine(
    file: UploadedDocument,
    nodes: list[Node],
    outcomes: list[tuple[NodeReport, dict[str, dict[str, Any]]]],
) -> FileResult:
    """The file's outcome over the nodes: ingested if any node ingested it, unchanged if
    any held it already, skipped (with the first reason) if every node that answered
    refused it, and skipped as not loaded when no node answered for it."""
    per_node: dict[str, str] = {}
    ingested = unchanged = None
    reason = ""
    for node, (report, answers) in zip(nodes, outcomes, strict=True):
        answer = answers.get(file.name)
        if answer is None:
            per_node[node.name] = report.status if report.status != NodeOutcome.OK else "failed"
            continue
        status = str(answer.get("status"))
        per_node[node.name] = status
        if status == FileStatus.INGESTED and ingested is None:
            ingested = int(answer.get("chunks") or 0)
        elif status == FileStatus.UNCHANGED and unchanged is None:
            unchanged = int(answer.get("chunks") or 0)
        elif status not in (FileStatus.INGESTED, FileStatus.UNCHANGED) and not reason:
            reason = str(answer.get("reason") or "not usable")
    if ingested is not None:
        return FileResult(file.name, FileStatus.INGESTED, ingested, nodes=per_node)
    if unchanged is not None:
        return FileResult(file.name, FileStatus.UNCHANGED, unchanged, nodes=per_node)
    return FileResult(
        file.name,
        FileStatus.SKIPPED,
        reason=reason or "not loaded: no node could take it",
        nodes=per_node,
    )


def _record_load(
    kb: KnowledgeBase,
    nodes: list[Node],
    files: list[UploadedDocument],
    outcomes: list[tuple[NodeReport, dict[str, dict[str, Any]]]],
) -> None:
    """Write the catalog and the copies, and a trail entry per document loaded."""
    now = timezone.now()
    with transaction.atomic():
        held = {d.name: d for d in KnowledgeDocument.objects.filter(knowledge_base=kb)}
        for file in files:
            loaded = [
                (node, answers[file.name])
                for node, (_, answers) in zip(nodes, outcomes, strict=True)
                if str(answers.get(file.name, {}).get("status"))
                in (FileStatus.INGESTED, FileStatus.UNCHANGED)
            ]
            document = held.get(file.name)
            if loaded:
                digest = hashlib.sha256(file.data).hexdigest()
                document = document or KnowledgeDocument(knowledge_base=kb, name=file.name)
                document.bytes = len(file.data)
                document.sha256 = digest
                document.chunks = int(loaded[0][1].get("chunks") or 0)
                document.loaded_at = now
                document.set_change_action(ChangeAction.LOAD)
                document.save()
            if document is None:
                continue  # refused everywhere and not in the catalog: nothing to record
            for node, (report, answers) in zip(nodes, outcomes, strict=True):
                _record_copy(document, node, report, answers.get(file.name))


def _record_copy(
    document: KnowledgeDocument, node: Node, report: NodeReport, answer: dict[str, Any] | None
) -> None:
    copy = DocumentCopy.objects.filter(document=document, node=node).first()
    copy = copy or DocumentCopy(document=document, node=node)
    status = str((answer or {}).get("status"))
    if status in (FileStatus.INGESTED, FileStatus.UNCHANGED):
        copy.status, copy.reason = CopyStatus.LOADED, ""
        copy.sha256, copy.chunks = document.sha256, int((answer or {}).get("chunks") or 0)
    elif answer is not None:
        copy.status = CopyStatus.REFUSED
        copy.reason = str(answer.get("reason") or "not usable")[:300]
    else:
        copy.status = CopyStatus.FAILED
        copy.reason = (report.error or "not sent")[:300]
    copy.save()


def delete_document(document: KnowledgeDocument) -> Report:
    """Delete one document from every node serving the client, then from the catalog.

    A node that already lacks it counts as done. If a node can't be reached, the
    document stays in the catalog (marked not reached there) so the delete can be
    repeated; the nodes that answered have deleted it.
    """
    kb = document.knowledge_base
    nodes = serving_nodes(kb.client)
    reports = [
        _delete_on_node(n, f"{_kb_path(kb)}/documents", {"name": document.name}) for n in nodes
    ]
    with transaction.atomic():
        if all(r.status == NodeOutcome.OK for r in reports):
            document.delete()
        else:
            _record_failed_delete([document], nodes, reports)
    log.info(
        "document %s of knowledge base %s deleted from %d of %d nodes",
        document.pk,
        kb.pk,
        sum(r.status == NodeOutcome.OK for r in reports),
        len(nodes),
    )
    return Report(kb, reports)


def delete_knowledge_base(kb: KnowledgeBase) -> Report:
    """Delete ``kb`` from every node serving its client, then the knowledge base and its
    catalog, and roll out on commit (the client's config stops listing it).

    If a node can't be reached nothing is removed from the catalog (so the delete can
    be repeated); the nodes that answered have deleted their copies.
    """
    nodes = serving_nodes(kb.client)
    reports = [_delete_on_node(n, _kb_path(kb), None) for n in nodes]
    with transaction.atomic():
        if all(r.status == NodeOutcome.OK for r in reports):
            kb_id = kb.pk
            kb.delete()
            kb.pk = kb_id  # the report still names it
        else:
            _record_failed_delete(list(kb.documents.all()), nodes, reports)
    log.info(
        "knowledge base %s deleted from %d of %d nodes",
        kb.pk,
        sum(r.status == NodeOutcome.OK for r in reports),
        len(nodes),
    )
    return Report(kb, reports)


def _delete_on_node(node: Node, path: str, params: dict[str, str] | None) -> NodeReport:
    try:
        with _connect(node) as client:
            response = _request(client, "DELETE", path, params=params)
            # 404: the node holds no such thing (never loaded there, or deleted before).
            if response.status_code not in (200, 404):
                raise _refusal(response)
    except _NodeFailed as exc:
        return NodeReport(node.name, exc.outcome, exc.error)
    return NodeReport(node.name)


def _record_failed_delete(
    documents: list[KnowledgeDocument], nodes: list[Node], reports: list[NodeReport]
) -> None:
    for node, report in zip(nodes, reports, strict=True):
        copies = DocumentCopy.objects.filter(document__in=documents, node=node)
        if report.status == NodeOutcome.OK:
            copies.delete()
        else:
            for copy in copies:
                copy.status = CopyStatus.FAILED
                copy.reason = f"delete failed: {report.error}"[:300]
                copy.save()


def ingest_limits(client: Client) -> dict[str, Any]:
    """What one upload may carry: the control plane's cap, and what the nodes take (file
    types all of them take, the smallest per-file limit); ``None`` where no node answered."""
    file_types: set[str] | None = None
    max_document: int | None = None
    for node in serving_nodes(client):
        try:
            limits = node_limits(node, client.slug)
        except _NodeFailed:
            continue
        types = {str(t).lower() for t in limits.get("file_types") or []}
        file_types = types if file_types is None else file_types & types
        size = int(limits.get("max_document_bytes") or 0)
        max_document = size if max_document is None else min(max_document, size)
    return {
        "max_request_bytes": settings.SANCTUM.knowledge.max_upload_bytes,
        "max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES,
        "file_types": sorted(file_types) if file_types is not None else None,
        "max_document_bytes": max_document,
    }
