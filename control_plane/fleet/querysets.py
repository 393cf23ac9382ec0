"""Querysets for nodes and releases (the rollout ones come from ``core``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from control_plane.core.querysets import ReleaseQuerySet, RolloutTargetQuerySet

if TYPE_CHECKING:
    from control_plane.fleet.models import ConfigRelease, Node


class NodeQuerySet(RolloutTargetQuerySet["Node"]):
    pass


class ConfigReleaseQuerySet(ReleaseQuerySet["ConfigRelease"]):
    pass
