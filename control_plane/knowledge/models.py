"""Knowledge bases, their document catalog, and which node holds which document.

Never text: a document is known here by its name, size, SHA-256 and chunk count. Its
bytes exist on the control plane only in the memory of the request that loads it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.validators import MaxLengthValidator, RegexValidator
from django.db import models

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.models import Client
from control_plane.clients.validators import bundle_name_validator
from control_plane.fleet.models import Node
from control_plane.knowledge.choices import CopyStatus
from control_plane.knowledge.querysets import KnowledgeBaseQuerySet, KnowledgeDocumentQuerySet

# The node's rule for a document's name (data_plane.api.knowledge_bases.DocumentName):
# 1-512 characters, no control characters. A relative path such as ``sub/guide.md`` is fine.
MAX_DOCUMENT_NAME = 512
document_name_validators: list[Callable[[str], None]] = [
    MaxLengthValidator(MAX_DOCUMENT_NAME),
    RegexValidator(
        r"^[^\x00-\x1f\x7f]+\Z", "Use a name without control characters (1-512 characters)."
    ),
]


class KnowledgeBase(ChangeLoggedModel):
    """A client's named collection of documents, searched when a chat names it.

    The client's config bundle lists the names of its knowledge bases; the documents live
    on the nodes that serve the client (in their vector index), put there by
    ``services.load_documents``.
    """

    client = models.ForeignKey(
        Client,
        # Deleting a client must not leave its documents on the nodes unnoticed: delete
        # its knowledge bases first (that deletes them from the nodes).
        on_delete=models.PROTECT,
        related_name="knowledge_bases",
    )
    name = models.CharField(
        max_length=128,
        validators=[bundle_name_validator],
        help_text="What the client's chats name it by; it never changes.",
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = KnowledgeBaseQuerySet.as_manager()

    change_logged_fields = ("client", "name", "description")

    class Meta:
        ordering = ("client__slug", "name")
        verbose_name = "knowledge base"
        constraints = [
            models.UniqueConstraint(fields=["client", "name"], name="knowledge_base_client_name")
        ]

    def __str__(self) -> str:
        return f"{self.client_id and self.client.slug}/{self.name}"


class KnowledgeDocument(ChangeLoggedModel):
    """One document of a knowledge base's catalog: metadata only, never its text.

    ``sha256``, ``bytes`` and ``loaded_at`` describe the version last loaded (by at least
    one node); ``chunks`` is what the nodes cut it into. Where each node stands is in
    :class:`DocumentCopy`.
    """

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    name = models.CharField(max_length=MAX_DOCUMENT_NAME, validators=document_name_validators)
    bytes = models.PositiveBigIntegerField(help_text="Size of the file as loaded.")
    sha256 = models.CharField("SHA-256", max_length=64, help_text="Of the file as loaded.")
    chunks = models.PositiveIntegerField(default=0)
    loaded_at = models.DateTimeField(help_text="When this version was last loaded.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = KnowledgeDocumentQuerySet.as_manager()

    # Not "sha256": the trail records what was loaded, not a fingerprint of its content.
    change_logged_fields = ("knowledge_base", "name", "bytes", "chunks", "loaded_at")

    class Meta:
        ordering = ("knowledge_base", "name")
        verbose_name = "document"
        constraints = [
            models.UniqueConstraint(
                fields=["knowledge_base", "name"], name="knowledge_document_name"
            )
        ]

    def __str__(self) -> str:
        return f"{self.knowledge_base}/{self.name}"[:200]


class DocumentCopy(models.Model):
    """Where one node stands with one document: machine-written, like ``NodeState``.

    A node added later holds no copy: the control plane keeps no bytes, so the document
    must be loaded again for it (docs/rag.md).
    """

    document = models.ForeignKey(KnowledgeDocument, on_delete=models.CASCADE, related_name="copies")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="document_copies")
    status = models.CharField(max_length=16, choices=CopyStatus.choices)
    reason = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(
        "SHA-256", max_length=64, blank=True, help_text="Of the version the node holds."
    )
    chunks = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("document", "node__name")
        verbose_name = "document copy"
        verbose_name_plural = "document copies"
        constraints = [
            models.UniqueConstraint(fields=["document", "node"], name="document_copy_node")
        ]

    def __str__(self) -> str:
        return f"{self.document_id} on {self.node_id}"
