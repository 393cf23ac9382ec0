"""Model pins: a model name pinned to one version of one GGUF file, by its sha256. Software
releases: the digests of the release manifests (``shared.software``) nodes may run."""

from __future__ import annotations

import os
import re
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.models import Client
from control_plane.clients.validators import bundle_name_validator, model_version_validator
from control_plane.fleet.models import NodePool
from control_plane.registry.choices import HashStatus
from control_plane.registry.querysets import ModelPinQuerySet, SoftwareReleaseQuerySet
from shared.canonical import CanonicalJSONError
from shared.config import MAX_SOURCE_CHARS, artifact_source_problem
from shared.software import FORMAT as MANIFEST_FORMAT
from shared.software import release_digest

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelPin(ChangeLoggedModel):
    """``name`` served at ``version`` from one GGUF file, and only if it hashes to ``sha256``.

    The file is named one of two ways. By ``path``: a file at that path on the control
    plane and on every node; its hash is computed from the file by a task when the pin
    is made (and again by "verify"), never typed in. By ``source``: where nodes fetch
    it on the storage link (an http(s) URL or a path the nodes can read), with the
    ``sha256`` and ``size`` the admin gives from the publisher's checksums; the control
    plane never reads that file (the pin is ``declared`` and usable at once) and each
    node places and loads it only if it matches. A name has at most one enabled pin: moving to a new
    version is an explicit new pin that supersedes the old one, staged until its hash is
    verified (the old one serves until then), and rolled back to it in one action.
    ``clients`` may use it; the nodes of ``pools`` load it.
    """

    name = models.CharField(max_length=128, validators=[bundle_name_validator])
    version = models.CharField(max_length=64, validators=[model_version_validator])
    path = models.CharField(
        "GGUF path",
        max_length=1024,
        blank=True,
        help_text="Path of the GGUF file on the control plane and the nodes (or give a source).",
    )
    source = models.CharField(
        max_length=MAX_SOURCE_CHARS,
        blank=True,
        help_text="Where nodes fetch the GGUF file on the storage link: an http(s) URL "
        "(no credentials) or an absolute path they can read. Give its SHA-256 and size.",
    )
    size = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Size of the file in bytes (with a source)."
    )
    sha256 = models.CharField(
        "SHA-256",
        max_length=64,
        blank=True,
        help_text="With a source: the file's SHA-256 from the publisher (64 lowercase hex). "
        "With a path: computed from the file.",
    )
    hash_status = models.CharField(
        max_length=16, choices=HashStatus.choices, default=HashStatus.PENDING, editable=False
    )
    hash_error = models.CharField(max_length=300, blank=True, editable=False)
    hash_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    context_size = models.PositiveIntegerField(
        default=2048, validators=[MinValueValidator(128), MaxValueValidator(1_048_576)]
    )
    chat_template = models.TextField(
        blank=True, help_text="Jinja chat template; blank uses the GGUF's own."
    )
    gpu_layers = models.IntegerField(
        "GPU layers",
        null=True,
        blank=True,
        validators=[MinValueValidator(-1), MaxValueValidator(100_000)],
        help_text="Layers offloaded to the GPU (-1: all, 0: none); blank takes the node's "
        "SANCTUM_DP_ENGINE__N_GPU_LAYERS.",
    )
    clients = models.ManyToManyField(Client, blank=True, related_name="model_pins")
    pools = models.ManyToManyField(
        NodePool,
        blank=True,
        related_name="model_pins",
        verbose_name="node pools",
        help_text="The pools whose nodes load it.",
    )
    enabled = models.BooleanField(default=True)
    staged = models.BooleanField(
        default=False,
        editable=False,
        help_text="Waiting to replace the pin it supersedes: it goes live (and that one "
        "retires) when its file's hash is verified.",
    )
    supersedes = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="The pin this one replaced (or is staged to replace): rollback returns to it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelPinQuerySet.as_manager()

    # A model file's sha256 is public (receipts carry it); it is logged so the trail
    # shows when a pin's file changed.
    change_logged_fields = (
        "name",
        "version",
        "path",
        "source",
        "size",
        "sha256",
        "hash_status",
        "context_size",
        "chat_template",
        "gpu_layers",
        "clients",
        "pools",
        "enabled",
        "staged",
        "supersedes",
    )

    class Meta:
        ordering = ("name", "-created_at")
        verbose_name = "model pin"
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="registry_pin_name_version"),
            models.CheckConstraint(
                condition=(Q(path="") & ~Q(source="")) | (~Q(path="") & Q(source="")),
                name="registry_pin_path_or_source",
                violation_error_message="Give the file's path or its source, not both.",
            ),
            models.UniqueConstraint(
                fields=["name"],
                condition=Q(enabled=True),
                name="registry_one_enabled_pin",
                violation_error_message=(
                    "This model already has an enabled pin: disable it first, or pin the "
                    "new version with supersede."
                ),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    def clean(self) -> None:
        """A pin names its file by path (hashed here) or by source (sha256 and size given)."""
        super().clean()
        if bool(self.path) == bool(self.source):
            raise ValidationError(
                {"path": "Give the GGUF file's path, or its source with sha256 and size."}
            )
        if self.path:
            if not os.path.isabs(self.path):
                raise ValidationError({"path": "Give an absolute path to the GGUF file."})
            if self._state.adding and self.sha256:
                raise ValidationError(
                    {"sha256": "A pin by path has its hash computed from the file; leave it blank."}
                )
            return
        errors: dict[str, str] = {}
        problem = artifact_source_problem(self.source)
        if problem is not None:
            errors["source"] = problem[0].upper() + problem[1:] + "."
        if not _SHA256.match(self.sha256):
            errors["sha256"] = "Give the file's SHA-256: 64 lowercase hex characters."
        if self.size is None or self.size <= 0:
            errors["size"] = "Give the file's size in bytes."
        if errors:
            raise ValidationError(errors)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding and self.source:
            # Nothing for the control plane to hash: usable at once, nodes verify.
            self.hash_status = HashStatus.DECLARED
        super().save(*args, **kwargs)


class SoftwareRelease(ChangeLoggedModel):
    """A release of the node software, known by its digest: the SHA-256 of its release
    manifest (``shared.software``: every installed distribution's RECORD hash, the
    project's source and lock), which a node states when asked who it is (issue 17).

    ``allowed`` says the operators vouch for nodes running it: the allowed-releases file
    auditors and clients check node statements against lists the allowed ones (nothing
    refuses a node that runs another; its statement fails that check). ``manifest``, when
    uploaded, is the document the digest is of, so an auditor can see what the release
    holds; it must hash to ``digest``. ``name`` is a free label ("2026.12.1").
    """

    digest = models.CharField(
        max_length=64,
        unique=True,
        help_text="SHA-256 of the release manifest's canonical JSON (64 lowercase hex), "
        "as `sanctum release-manifest` prints it.",
    )
    name = models.CharField(max_length=64, blank=True, help_text='A label, e.g. "2026.12.1".')
    manifest = models.JSONField(
        null=True,
        blank=True,
        help_text="The release manifest (`sanctum release-manifest --out FILE`); its digest "
        "must be the one given.",
    )
    allowed = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    allowed_at = models.DateTimeField(null=True, blank=True, editable=False)
    disallowed_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = SoftwareReleaseQuerySet.as_manager()

    # The digest is public (nodes state it); the manifest is not logged: it is large, and
    # fixed once uploaded (the digest stands for it).
    change_logged_fields = ("digest", "name", "allowed", "allowed_at", "disallowed_at")

    class Meta:
        ordering = ("-created_at", "-pk")
        verbose_name = "software release"

    def __str__(self) -> str:
        return f"{self.name} ({self.digest[:12]})" if self.name else self.digest[:12]

    def clean(self) -> None:
        """The digest is a SHA-256, and an uploaded manifest is the one it is of."""
        super().clean()
        if not _SHA256.match(self.digest or ""):
            raise ValidationError(
                {"digest": "Give the release digest: 64 lowercase hex characters."}
            )
        if self.manifest is None:
            return
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != MANIFEST_FORMAT:
            raise ValidationError(
                {"manifest": f"Not a release manifest: its format must be {MANIFEST_FORMAT}."}
            )
        try:
            actual = release_digest(self.manifest)
        except CanonicalJSONError as exc:
            raise ValidationError({"manifest": f"Not canonical JSON: {exc}."}) from None
        if actual != self.digest:
            raise ValidationError(
                {
                    "manifest": f"This manifest's digest is {actual}, not {self.digest}: "
                    "upload the manifest of that release, or give its own digest."
                }
            )
