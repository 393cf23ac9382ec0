"""``python -m control_plane collect_usage [--node NAME]``: collect usage records now.

What beat's task (or the reconciler) does on its schedule, run once in this process:
one line per node with what was fetched, logged and acknowledged.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from control_plane.audit.services import collect_fleet, collect_node
from control_plane.fleet.models import Node


class Command(BaseCommand):
    help = "Collect usage records from the nodes into the ledger, once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node", help="only this node (default: every enabled node)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["node"]:
            node = Node.objects.filter(name=options["node"]).first()
            if node is None:
                raise CommandError(f"no node named {options['node']!r}")
            outcomes = [collect_node(node)]
        else:
            outcomes = collect_fleet()
        for outcome in outcomes:
            self.stdout.write(outcome.summary())
        if any(o.error for o in outcomes):
            raise CommandError("collection failed for some node (see error=)")
