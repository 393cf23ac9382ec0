"""``python -m control_plane ledger_status [--recover]``: may the ledger sign?

Prints the ledger's size against the largest tree head kept outside the database (the
witness file, the nodes), one line of ``KEY=value``; exits non-zero when the ledger is
behind or forked. ``--recover`` first collects the missing records again from the nodes
(what collection does by itself after a restore).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from control_plane.audit.ledger import LedgerError
from control_plane.audit.services import ledger_status, recover_ledger
from control_plane.audit.witness import WitnessError


class Command(BaseCommand):
    help = "Show whether the ledger may sign (not behind a tree head it handed out before)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--recover",
            action="store_true",
            help="collect the records a restore lost again from the nodes first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["recover"]:
            try:
                recover_ledger()
            except (LedgerError, WitnessError) as exc:
                self.stderr.write(str(exc))
        status = ledger_status()
        self.stdout.write(f"SANCTUM_LEDGER_SIZE={status.size}")
        self.stdout.write(f"SANCTUM_LEDGER_WITNESSED={status.witnessed_size or 0}")
        self.stdout.write(f"SANCTUM_LEDGER_BEHIND={status.behind}")
        self.stdout.write(f"SANCTUM_LEDGER_STATUS={status.problem or 'ok'}")
        if status.problem:
            raise CommandError(status.problem)
