"""``python -m control_plane allow_release --manifest FILE [--name N]`` (or ``--digest D``).

What ``POST /api/software-releases/`` and ``POST /api/software-releases/<id>/allow/`` do,
from the control plane's shell: records the release (by the manifest that `sanctum
release-manifest --out FILE` wrote, or by its digest alone) if it is new, and allows it;
attributed to a management command in the change trail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.registry.models import SoftwareRelease
from control_plane.registry.services import allow_release, record_release
from shared.canonical import CanonicalJSONError
from shared.software import release_digest


class Command(BaseCommand):
    help = "Record a software release (by its manifest or digest) and allow nodes to run it."

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--manifest",
            type=Path,
            help="the release manifest (`sanctum release-manifest --out FILE` on the node)",
        )
        which.add_argument("--digest", help="the release digest, without its manifest")
        parser.add_argument("--name", default="", help='a label, e.g. "2026.12.1"')

    def handle(self, *args: Any, **options: Any) -> None:
        manifest = None
        digest = options["digest"] or ""
        if options["manifest"] is not None:
            try:
                manifest = json.loads(options["manifest"].read_bytes())
            except OSError as exc:
                raise CommandError(f"can't read {options['manifest']}: {exc.strerror}") from None
            except ValueError:
                raise CommandError(f"{options['manifest']} is not JSON") from None
            try:
                digest = release_digest(manifest)
            except (CanonicalJSONError, TypeError):
                raise CommandError(f"{options['manifest']} is not a release manifest") from None
        try:
            with change_context(source=ChangeSource.COMMAND):
                release = SoftwareRelease.objects.filter(digest=digest).first()
                created = release is None
                if release is None:
                    release = record_release(digest=digest, name=options["name"], manifest=manifest)
                release = allow_release(release)
        except ValidationError as exc:
            fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(f"release not allowed: {fields}") from None
        self.stdout.write(
            f"release {release.digest} id={release.pk} allowed "
            f"({'recorded now' if created else 'already recorded'})"
        )
