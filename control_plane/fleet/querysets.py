"""Querysets for nodes and releases (the rollout ones come from ``core``)."""

from __future__ import annotations

from control_plane.core.querysets import ReleaseQuerySet, RolloutTargetQuerySet


class NodeQuerySet(RolloutTargetQuerySet):
    pass


class ConfigReleaseQuerySet(ReleaseQuerySet):
    pass
