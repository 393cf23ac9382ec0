"""The ledger's and collection's series for /metrics (control_plane.core.metrics)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.audit.models import CollectionState, Receipt, TreeHead
from control_plane.core.metrics import gauge, labelled


class LedgerCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        head = TreeHead.objects.order_by("-size").values("size", "created_at").first()
        yield gauge("sanctum_cp_ledger_receipts", "receipts in the ledger", Receipt.objects.count())
        yield gauge(
            "sanctum_cp_ledger_tree_size",
            "size of the latest signed tree head (0: none yet)",
            head["size"] if head else 0,
        )
        if head is not None:
            yield gauge(
                "sanctum_cp_ledger_tree_head_timestamp_seconds",
                "when the latest tree head was signed (its age: time() minus this)",
                head["created_at"].timestamp(),
            )
        states = list(CollectionState.objects.select_related("node"))
        yield labelled(
            "sanctum_cp_collection_last_success_timestamp_seconds",
            "a node's last successful collection (its lag: time() minus this)",
            ["node"],
            (
                ([s.node.name], s.last_success_at.timestamp())
                for s in states
                if s.last_success_at is not None
            ),
        )
        yield labelled(
            "sanctum_cp_collection_records",
            "records collected from a node, all told",
            ["node"],
            (([s.node.name], s.collected_total) for s in states),
        )
        yield labelled(
            "sanctum_cp_collection_failing",
            "1 while a node's last collection failed",
            ["node"],
            (([s.node.name], int(bool(s.last_error))) for s in states),
        )
        yield labelled(
            "sanctum_cp_collection_refused_pending",
            "a node's records that did not verify, waiting for an operator",
            ["node"],
            (([s.node.name], s.refused_pending) for s in states),
        )
