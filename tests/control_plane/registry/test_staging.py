"""Staged upgrades: a new version goes live when the nodes that serve the old one have
prepared it, never before its file is verified, and no bundle ever lacks the model."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from pydantic import ValidationError as ContractError

from control_plane.core.choices import HealthStatus
from control_plane.fleet.models import Node, NodePool, NodeState
from control_plane.fleet.rollout import build_bundle
from control_plane.registry.models import ModelPin
from control_plane.registry.services import (
    advance_staged_pins,
    go_live_now,
    pin_model,
    roll_back_pin,
    staging_report,
    verify_model_pin,
)
from shared.config import ConfigBundle
from tests.conftest import release_fields
from tests.control_plane.factories import ModelPinFactory, NodeFactory, model_file

pytestmark = pytest.mark.django_db


def reports(
    node: Node,
    *,
    staged: tuple[tuple[ModelPin, str], ...] = (),
    serves: tuple[ModelPin, ...] = (),
    status: str = HealthStatus.OK,
    age: timedelta = timedelta(0),
) -> None:
    """Record a health report from ``node``, as the poller stores one."""
    health: dict[str, Any] = {
        "status": "ok",
        "models": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in serves],
        "staged": [
            {
                "name": p.name,
                "version": p.version,
                "sha256": p.sha256,
                "state": state,
                "reason": "file not readable on this node" if state == "failed" else "",
            }
            for p, state in staged
        ],
    }
    NodeState.objects.update_or_create(
        node=node,
        defaults={
            "health_status": status,
            "health_checked_at": timezone.now() - age,
            "health": health,
        },
    )


def stage_v2(v1: ModelPin) -> ModelPin:
    """Pin v2 superseding ``v1`` and verify its file (as the hash task does)."""
    staged = pin_model(
        name=v1.name, version="v2", path=str(model_file(f"{v1.name}-v2")), supersede=True
    )
    return verify_model_pin(staged)


def names(bundle: ConfigBundle) -> tuple[list[str], list[str]]:
    return [m.version for m in bundle.models], [m.version for m in bundle.staged]


def test_a_staged_pin_goes_live_once_every_node_of_its_pool_reports_it_ready():
    v1 = ModelPinFactory(name="llm")
    first, second = NodeFactory(name="n-a"), NodeFactory(name="n-b")
    for node in (first, second):
        reports(node, serves=(v1,))

    v2 = stage_v2(v1)

    # Verified, but the nodes have not prepared it: v1 serves, v2 travels as staged.
    assert (v2.staged, v2.enabled) == (True, False)
    for node in (first, second):
        assert names(build_bundle(node, 1)) == (["v1"], ["v2"])
    reports(first, serves=(v1,), staged=((v2, "loaded"),))
    assert advance_staged_pins() == []
    report = staging_report(v2)
    assert report.ready_on == ("n-a",) and report.waiting_on == {"n-b": "not staged on it yet"}

    # "ready": verified, and it will drain the old version first (no room for both).
    reports(second, serves=(v1,), staged=((v2, "ready"),))
    assert advance_staged_pins() == [v2]

    v2.refresh_from_db()
    assert (v2.staged, v2.enabled) == (False, True)
    assert [str(p) for p in ModelPin.objects.servable()] == ["llm@v2"]
    assert names(build_bundle(first, 2)) == (["v2"], [])


def test_a_node_that_failed_to_prepare_it_holds_it_back_until_an_admin_forces_it():
    v1 = ModelPinFactory(name="llm")
    node = NodeFactory(name="n-a")
    reports(node, serves=(v1,))
    v2 = stage_v2(v1)

    reports(node, serves=(v1,), staged=((v2, "failed"),))

    assert advance_staged_pins() == []
    report = staging_report(v2)
    assert report.waiting_on == {"n-a": "failed: file not readable on this node"}
    assert go_live_now(v2).enabled
    assert [str(p) for p in ModelPin.objects.servable()] == ["llm@v2"]
    with pytest.raises(ValidationError, match="Only a staged pin"):
        go_live_now(v2)


def test_a_node_still_fetching_the_file_holds_it_back_until_it_reports_it_loaded():
    """A pin by source is fetched by each node in the background ("fetching", with its
    progress in model_fetches, then "checking" its hash): not ready until done."""
    v1 = ModelPinFactory(name="llm")
    node = NodeFactory(name="n-a")
    reports(node, serves=(v1,))
    v2 = stage_v2(v1)

    for state in ("fetching", "checking"):
        reports(node, serves=(v1,), staged=((v2, state),))
        assert advance_staged_pins() == []
        assert staging_report(v2).waiting_on == {"n-a": state}
    reports(node, serves=(v1,), staged=((v2, "loaded"),))

    assert advance_staged_pins() == [v2]


def test_nodes_down_quiet_disabled_draining_or_elsewhere_do_not_hold_a_pin_back():
    """The rule: counted are enabled, non-draining nodes of a pool that has both pins,
    whose latest health poll answered "ok", no older than two minutes."""
    other_pool = NodePool.objects.create(name="other")
    v1 = ModelPinFactory(name="llm")
    ready = NodeFactory(name="n-ready")
    down, quiet = NodeFactory(name="n-down"), NodeFactory(name="n-quiet")
    off, leaving = NodeFactory(name="n-off", enabled=False), NodeFactory(name="n-drain")
    leaving.draining = True
    leaving.save()
    elsewhere = NodeFactory(name="n-elsewhere", pool=other_pool)
    for node in (ready, down, quiet, off, leaving, elsewhere):
        reports(node, serves=(v1,))
    reports(down, serves=(v1,), status=HealthStatus.UNREACHABLE)
    reports(quiet, serves=(v1,), age=timedelta(hours=1))
    v2 = stage_v2(v1)
    assert not v2.enabled  # n-ready has not reported it yet

    reports(ready, serves=(v1,), staged=((v2, "loaded"),))
    report = staging_report(v2)

    assert report.ready and report.ready_on == ("n-ready",)
    assert report.not_counted == {
        "n-down": "health unreachable",
        "n-quiet": "no health read recently",
    }
    assert advance_staged_pins() == [v2]


def test_without_nodes_a_staged_pin_goes_live_on_its_verification_alone():
    v1 = ModelPinFactory(name="llm")

    v2 = stage_v2(v1)

    assert (v2.staged, v2.enabled) == (False, True)
    assert roll_back_pin(v2) == v1


def test_no_bundle_built_from_staging_to_rollback_lacks_the_model():
    """Every state the database passes through, built into a bundle, names the model:
    the old version until the swap, the new one after, the old one after a rollback."""
    v1 = ModelPinFactory(name="llm")
    node = NodeFactory(name="n-a")
    seen: list[tuple[list[str], list[str]]] = []

    def build() -> None:
        seen.append(names(build_bundle(node, len(seen) + 1)))

    reports(node, serves=(v1,))
    build()
    staged = pin_model(name="llm", version="v2", path=str(model_file("llm-v2")), supersede=True)
    build()  # hash pending: not staged on nodes yet
    v2 = verify_model_pin(staged)
    build()
    reports(node, serves=(v1,), staged=((v2, "loaded"),))
    build()
    advance_staged_pins()
    build()
    roll_back_pin(ModelPin.objects.get(pk=v2.pk))
    build()

    assert seen == [
        (["v1"], []),
        (["v1"], []),
        (["v1"], ["v2"]),
        (["v1"], ["v2"]),
        (["v2"], []),
        (["v1"], []),
    ]


def test_a_staged_pin_is_staged_only_where_its_model_serves_and_newest_first():
    other_pool = NodePool.objects.create(name="other")
    v1 = ModelPinFactory(name="llm")
    here, there = NodeFactory(name="n-a"), NodeFactory(name="n-b", pool=other_pool)
    reports(here, serves=(v1,))
    v2 = stage_v2(v1)
    v3 = verify_model_pin(
        pin_model(name="llm", version="v3", path=str(model_file("llm-v3")), supersede=True)
    )
    v3.pools.add(other_pool)

    assert names(build_bundle(here, 1)) == (["v1"], ["v3"])
    assert names(build_bundle(there, 1)) == ([], [])  # it serves no llm: nothing to stage
    reports(here, serves=(v1,), staged=((v3, "loaded"),))
    assert advance_staged_pins() == [v3]
    v2.refresh_from_db()
    assert v2.staged and not v2.enabled  # v3 replaced v1 first: v2 stays staged


def test_the_bundle_contract_for_staged_models():
    """Additive: a bundle without staged models leaves the field out (a node that
    predates staging takes it); a staged model must replace one the bundle serves."""
    v1 = ModelPinFactory(name="llm")
    node = NodeFactory(name="n-a")
    bundle = build_bundle(node, 1)
    assert "staged" not in bundle.document()
    spec = bundle.models[0]

    with pytest.raises(ContractError, match="replaces no model"):
        ConfigBundle(node="n-a", version=1, staged=(spec,), **release_fields())
    with pytest.raises(ContractError, match="serves already"):
        ConfigBundle(node="n-a", version=1, models=(spec,), staged=(spec,), **release_fields())
    reports(node, serves=(v1,))
    v2 = stage_v2(v1)
    staged = build_bundle(node, 2)
    assert staged.document()["staged"][0]["sha256"] == v2.sha256
    assert ConfigBundle.model_validate(staged.document()) == staged
