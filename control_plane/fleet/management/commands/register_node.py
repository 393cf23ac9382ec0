"""``python -m control_plane register_node NAME --management-url URL --public-key FILE``.

What ``POST /api/nodes/`` does, from the control plane's shell: registers the node (or
updates it), attributed to a management command in the change trail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.fleet.models import NodePool
from control_plane.fleet.services import register_node


class Command(BaseCommand):
    help = "Register a data-plane node (or update its URL, key, pool) in its pool."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the node id (its SANCTUM_DP_NODE_ID)")
        parser.add_argument("--management-url", required=True, help="e.g. https://10.10.0.11:8001")
        parser.add_argument(
            "--public-key",
            required=True,
            type=Path,
            help="the node's node.pub (made on the node by `sanctum keys generate --role node`)",
        )
        parser.add_argument("--pool", help="its node pool (default: the pool named default)")
        parser.add_argument("--description", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            public_key = options["public_key"].read_text()
        except OSError as exc:
            raise CommandError(f"can't read {options['public_key']}: {exc.strerror}") from None
        try:
            with change_context(source=ChangeSource.COMMAND):
                node, created = register_node(
                    name=options["name"],
                    management_url=options["management_url"],
                    public_key=public_key,
                    pool=options["pool"],
                    description=options["description"],
                )
        except NodePool.DoesNotExist:
            raise CommandError(f"no node pool named {options['pool']!r}") from None
        except ValidationError as exc:
            fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(f"node not registered: {fields}") from None
        self.stdout.write(
            f"SANCTUM_NODE={node.name} id={node.pk} pool={node.pool.name} "
            f"key_id={node.public_key_id} {'created' if created else 'updated'}"
        )
