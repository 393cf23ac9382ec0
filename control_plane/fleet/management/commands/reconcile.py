"""``python -m control_plane reconcile``: beat's health poll and catch-up, without Celery.

With no broker (the embedded default) tasks run in-process and there is no beat: this
loop does beat's job, checking each node and gateway in turn and pushing to any that is
behind, and disabling expired WireGuard peers (rolling out their gateways).
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
    help = "Poll node health and catch nodes up, every --interval seconds (or --once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval", type=float, default=settings.SANCTUM.rollout.health_poll_seconds
        )
        parser.add_argument("--once", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
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
            if options["once"]:
                return
            time.sleep(options["interval"])
