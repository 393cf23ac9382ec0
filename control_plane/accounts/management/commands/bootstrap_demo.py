"""``python -m control_plane bootstrap_demo``: what ``sanctum up`` runs after ``migrate``.

Prints ``KEY=value`` lines for the caller to parse (and nothing else on stdout):
``SANCTUM_ADMIN_USER``, ``SANCTUM_ADMIN_PASSWORD`` (when this run set it),
``SANCTUM_ADMIN_TOKEN`` (the admin's REST API token, for ``sanctum kb``),
``SANCTUM_AUDITOR_USER``, ``SANCTUM_AUDITOR_PASSWORD`` (when set), ``SANCTUM_AUDITOR_TOKEN``
(the auditor's REST API token), ``SANCTUM_CLIENT_ID``, ``SANCTUM_API_KEY``,
``SANCTUM_MODEL``, ``SANCTUM_CP_PUBLIC_KEY`` and, with a node, ``SANCTUM_CONFIG_VERSION``
and ``SANCTUM_ROLLOUT`` (``applied`` or the reason it is not). Exits 1 when the rollout
did not apply.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from control_plane.accounts.services import bootstrap_demo
from control_plane.core.choices import ReleaseStatus
from control_plane.core.signing import publish
from control_plane.fleet.models import ConfigRelease
from shared.keys import KeyFileError, load_public_key, public_pem
from shared.models import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    BundledModelMissing,
    bundled_gguf_path,
)

SETTLED = (ReleaseStatus.APPLIED, ReleaseStatus.REJECTED, ReleaseStatus.SUPERSEDED)


class Command(BaseCommand):
    help = "Create the admin, roles, demo client and key, model pin and node; roll out."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--admin-user", default="admin")
        parser.add_argument(
            "--keep-admin-password",
            action="store_true",
            help="don't reset an existing admin's password (no password line is printed)",
        )
        parser.add_argument(
            "--auditor-user", default="auditor", help="an auditor operator with an API token"
        )
        parser.add_argument("--no-auditor", action="store_true")
        parser.add_argument("--client-id", default="demo")
        parser.add_argument("--client-name", default="Demo client")
        parser.add_argument(
            "--embeddings", action="store_true", help="the demo client may call /v1/embeddings"
        )
        parser.add_argument(
            "--knowledge-base",
            action="append",
            default=[],
            dest="knowledge_bases",
            metavar="NAME",
            help="a knowledge base the demo client may search (repeatable)",
        )
        parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
        parser.add_argument("--model-version", default=DEFAULT_MODEL_VERSION)
        parser.add_argument("--model-path", help="GGUF path (default: the bundled model)")
        parser.add_argument("--context-size", type=int, default=DEFAULT_CONTEXT_SIZE)
        parser.add_argument("--node-name")
        parser.add_argument("--node-url", help="the node's management listener base URL")
        parser.add_argument("--node-public-key", type=Path, help="PEM file of the node's key")
        parser.add_argument("--no-rollout", action="store_true")
        parser.add_argument(
            "--wait",
            type=float,
            default=120.0,
            help="seconds to wait for the node to apply the release (with a worker)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        node_name = options["node_name"]
        if node_name and not (options["node_url"] and options["node_public_key"]):
            raise CommandError("--node-name needs --node-url and --node-public-key")
        node_key = None
        if options["node_public_key"]:
            try:
                node_key = public_pem(load_public_key(options["node_public_key"])).decode()
            except KeyFileError as exc:
                raise CommandError(str(exc)) from None
        model_path = options["model_path"]
        if not model_path:
            try:
                model_path = str(bundled_gguf_path())
            except BundledModelMissing as exc:
                raise CommandError(str(exc)) from None

        result = bootstrap_demo(
            admin_username=options["admin_user"],
            reset_admin_password=not options["keep_admin_password"],
            auditor_username=None if options["no_auditor"] else options["auditor_user"],
            client_slug=options["client_id"],
            client_name=options["client_name"],
            embeddings=options["embeddings"],
            knowledge_bases=options["knowledge_bases"],
            model_name=options["model_name"],
            model_version=options["model_version"],
            model_path=model_path,
            context_size=options["context_size"],
            node_name=node_name,
            node_url=options["node_url"],
            node_public_key=node_key,
            rollout=not options["no_rollout"],
        )
        out = self.stdout
        out.write(f"SANCTUM_ADMIN_USER={result.admin.user.get_username()}")
        if result.admin.password:
            out.write(f"SANCTUM_ADMIN_PASSWORD={result.admin.password}")
        out.write(f"SANCTUM_ADMIN_TOKEN={result.admin_token}")
        if result.auditor is not None:
            out.write(f"SANCTUM_AUDITOR_USER={result.auditor.user.get_username()}")
            if result.auditor.password:
                out.write(f"SANCTUM_AUDITOR_PASSWORD={result.auditor.password}")
            out.write(f"SANCTUM_AUDITOR_TOKEN={result.auditor_token}")
        out.write(f"SANCTUM_CLIENT_ID={result.client_slug}")
        out.write(f"SANCTUM_API_KEY={result.api_key}")
        out.write(f"SANCTUM_MODEL={result.model_name}")
        out.write(f"SANCTUM_CP_TRUST_KEYS={publish().resolve()}")
        if not result.releases:
            return
        failed = False
        for release in self._wait(result.releases, options["wait"]):
            out.write(f"SANCTUM_CONFIG_VERSION={release.version}")
            if release.status == ReleaseStatus.APPLIED:
                out.write("SANCTUM_ROLLOUT=applied")
            else:
                failed = True
                out.write(f"SANCTUM_ROLLOUT={release.status}: {release.last_error}")
        if failed:
            raise CommandError("the rollout did not apply (see SANCTUM_ROLLOUT)")

    def _wait(self, releases: list[ConfigRelease], seconds: float) -> list[ConfigRelease]:
        """Poll each node's latest release until it settles (a worker pushes it, and a push
        may be overtaken by a newer release) or time runs out."""
        deadline = time.monotonic() + seconds
        node_ids = [r.node_id for r in releases]
        while True:
            latest = [
                ConfigRelease.objects.filter(node_id=node_id).order_by("-version").first()
                for node_id in node_ids
            ]
            settled = all(r is not None and r.status in SETTLED for r in latest)
            if settled or time.monotonic() >= deadline:
                return [r for r in latest if r is not None]
            time.sleep(0.5)
