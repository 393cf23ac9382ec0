"""``python -m control_plane reconcile``: beat's work, without Celery.

With no broker (the embedded default) tasks run in-process and there is no beat: this
loop does beat's jobs. Every ``--interval`` seconds it checks each node and gateway in
turn, pushing to any that is behind, and disables expired WireGuard peers (rolling out
their gateways); every ``--collect-interval`` seconds it collects the nodes' usage
records into the receipt ledger (``control_plane.audit``).
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.fleet.services import check_fleet
from control_plane.network.rollout import check_gateways, roll_out_gateways
from control_plane.network.services import expire_peers


class Command(BaseCommand):
    help = (
        "Poll node and gateway health and catch them up every --interval seconds, and "
        "collect usage records every --collect-interval seconds (or each once, with --once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval", type=float, default=settings.SANCTUM.rollout.health_poll_seconds
        )
        parser.add_argument(
            "--collect-interval",
            type=float,
            default=settings.SANCTUM.ledger.collect_interval_seconds,
        )
        parser.add_argument("--no-collect", action="store_true", help="health and rollout only")
        parser.add_argument("--once", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        # Imported here: the audit app builds on the fleet, not the other way round.
        from control_plane.audit.services import collect_fleet

        next_health = next_collect = time.monotonic()
        collect = not options["no_collect"]
        while True:
            now = time.monotonic()
            if now >= next_health:
                self._health()
                next_health = now + options["interval"]
            if collect and now >= next_collect:
                for outcome in collect_fleet():
                    if outcome.fetched or outcome.error:
                        self.stdout.write(f"collected {outcome.summary()}")
                next_collect = now + options["collect_interval"]
            if options["once"]:
                return
            wake = min(next_health, next_collect) if collect else next_health
            time.sleep(max(0.05, wake - time.monotonic()))

    def _health(self) -> None:
        with change_context(source=ChangeSource.TASK):
            states = check_fleet()
            expired = expire_peers()
            gateways = {p.gateway_id: p.gateway for p in expired if p.gateway.enabled}
            if gateways:
                roll_out_gateways(gateways.values())
            gateway_states = check_gateways()
        for state in states:
            self.stdout.write(
                f"node={state.node.name} health={state.health_status} "
                f"version={state.applied_version}"
            )
        for gateway_state in gateway_states:
            self.stdout.write(
                f"gateway={gateway_state.gateway.name} "
                f"health={gateway_state.health_status} "
                f"version={gateway_state.applied_version}"
            )
