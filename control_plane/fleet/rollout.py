"""Node rollout: what a data-plane node's config bundle holds, plugged into core's rollout.

The mechanism (versions, pushes, health, catching up) is ``control_plane.core.rollout``;
this module says only what is a node's: :func:`build_bundle` from the database, signed
with ``shared.config.sign_bundle``. Roll out with ``roll_out(NODES, nodes)``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction

from control_plane.clients.models import ApiKey, Client
from control_plane.core.rollout import ReleaseStamp, RolloutKind
from control_plane.core.signing import signer
from control_plane.fleet.models import ConfigRelease, Node, NodeState
from control_plane.network.backbone import node_backbone
from control_plane.pki.choices import TargetKind
from control_plane.pki.services import tls_material
from control_plane.registry.models import ModelPin
from control_plane.registry.querysets import SERVABLE_HASH_STATUSES
from control_plane.registry.services import advance_staged_pins
from shared.config import (
    ApiKeySpec,
    ClientLimits,
    ClientSpec,
    ConfigBundle,
    ModelSpec,
    PoolSpec,
    sign_bundle,
)
from shared.trust import CONFIG


def build_bundle(node: Node, version: int, stamp: ReleaseStamp | None = None) -> ConfigBundle:
    """The config ``node`` should hold, from the database as it is now.

    Only what is placed on the node's pool: models, every enabled pin on the pool whose
    file hash is verified (or declared: pinned by source, each node checks what it
    fetches); clients, every active one placed on the pool, with its usable
    keys (revoked and expired ones are left out), the pool's models it may use, and this
    node's share of its rates and quotas: the pool's enabled nodes serve its clients, so
    each enforces its part (``Client.limit_shares``; docs/security.md). A client placed
    elsewhere is not in the bundle at all: the node does not know its keys.
    TLS: once the node has enrolled, its management certificate, renewed when due.
    Staged: each verified staged pin on the pool that replaces a model the bundle
    serves (the newest, if several wait), for the node to prepare
    (``control_plane.registry.services``); it serves no one until it goes live.
    """
    stamp = stamp or ReleaseStamp.now()
    issued_at = stamp.issued_at
    pool = node.pool
    serving = list(
        Node.objects.enabled().filter(pool=pool).order_by("name").values_list("name", flat=True)
    )
    share_of = serving.index(node.name) if node.name in serving else 0
    placed = Client.objects.active().filter(pool=pool).order_by("slug")
    pins = list(
        ModelPin.objects.servable().filter(pools=pool).prefetch_related("clients").order_by("name")
    )
    models = tuple(_model_spec(pin) for pin in pins)
    served = {m.name: m.sha256 for m in models}
    staged: dict[str, ModelSpec] = {}
    for pin in (
        ModelPin.objects.filter(staged=True, hash_status__in=SERVABLE_HASH_STATUSES, pools=pool)
        .exclude(sha256="")
        .order_by("-created_at")
    ):
        if pin.name in served and pin.sha256 != served[pin.name]:
            staged.setdefault(pin.name, _model_spec(pin))
    allowed: dict[int, list[str]] = {}
    for pin in pins:
        for client in pin.clients.all():
            allowed.setdefault(client.pk, []).append(pin.name)
    keys: dict[int, list[ApiKey]] = {}
    for api_key in ApiKey.objects.usable(issued_at).filter(client__pool=pool).order_by("prefix"):
        keys.setdefault(api_key.client_id, []).append(api_key)
    clients = tuple(
        ClientSpec(
            id=client.slug,
            name=client.name,
            api_keys=tuple(
                ApiKeySpec(prefix=k.prefix, sha256=k.sha256, expires_at=k.expires_at)
                for k in keys.get(client.pk, [])
            ),
            models=tuple(sorted(allowed.get(client.pk, []))),
            knowledge_bases=tuple(client.knowledge_bases.names()),
            embeddings=client.embeddings,
            limits=ClientLimits(
                max_sessions=client.max_sessions,
                max_tokens_per_request=client.max_tokens_per_request,
                max_running=client.max_running_generations,
                max_queued=client.max_queued_generations,
                max_parked_bytes=None
                if client.max_parked_kv_mib is None
                else client.max_parked_kv_mib << 20,
                **client.limit_shares(len(serving))[share_of],
            ),
        )
        for client in placed
    )
    return ConfigBundle(
        version=version,
        **stamp.fields(),
        tls=tls_material(TargetKind.NODE, node.name),
        node=node.name,
        pool=PoolSpec(name=pool.name, dedicated=pool.dedicated),
        models=models,
        staged=tuple(staged[name] for name in sorted(staged)),
        clients=clients,
        backbone=node_backbone(node),
    )


def _model_spec(pin: ModelPin) -> ModelSpec:
    return ModelSpec(
        name=pin.name,
        version=pin.version,
        sha256=pin.sha256,
        path=pin.path or None,
        source=pin.source or None,
        size=pin.size,
        context_size=pin.context_size,
        chat_template=pin.chat_template or None,
        gpu_layers=pin.gpu_layers,
    )


class NodeRollout(RolloutKind[Node, ConfigRelease, NodeState]):
    """Nodes: their config bundle, pushed to the node's management listener."""

    name = "node"
    target_model = Node
    release_model = ConfigRelease
    state_model = NodeState
    target_related = ("pool",)

    def build(self, target: Node, version: int, stamp: ReleaseStamp) -> ConfigBundle:
        return build_bundle(target, version, stamp)

    def sign(self, document: Any) -> str:
        return sign_bundle(document, signer(CONFIG))

    def health_key(self, target: Node) -> str:
        return target.public_key

    def read_health(self, target: Node, health: dict[str, Any]) -> None:
        """A node's report may make a staged pin of its pool ready: once this report is
        stored, such pins go live (and the swap rolls out by itself). So may a node
        that stopped answering, or that is no longer counted."""
        transaction.on_commit(partial(advance_staged_pins, [target.pool.pk]))


NODES = NodeRollout()
