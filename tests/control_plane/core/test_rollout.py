"""The one rollout mechanism, where no kind's own tests reach: signed calls, transient
answers, and beat's schedule run by the reconciler. Nodes stand in for every kind."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from control_plane.core.choices import ReleaseStatus
from control_plane.core.rollout import (
    PushTransientError,
    check_health,
    create_release,
    deliver,
    roll_out,
    rollout_kinds,
)
from control_plane.fleet.rollout import NODES
from control_plane.network.rollout import GATEWAYS

pytestmark = pytest.mark.django_db


def test_nodes_and_gateways_plug_into_the_one_mechanism():
    assert {kind.name for kind in rollout_kinds()} == {"node", "gateway"}
    assert {NODES, GATEWAYS} <= set(rollout_kinds())


def test_every_push_and_health_read_is_signed_by_the_control_plane(fake_node_factory, on_commit):
    fake, node = fake_node_factory()

    with on_commit():
        roll_out(NODES, [node])
    check_health(NODES, node)

    assert fake.management_calls == [
        ("PUT", "/internal/config", True),
        ("GET", "/internal/health", True),
    ]


@pytest.mark.parametrize(
    ("status", "code"),
    # model_fetch_pending: a node fetching a model file the release pins (it refuses
    # the push at once rather than hold its config lock for the storage link).
    [(503, "busy"), (503, "model_fetch_pending"), (429, "busy")],
)
def test_a_failing_or_busy_target_fails_the_attempt_and_a_retry_delivers(
    fake_node_factory, status, code
):
    fake, node = fake_node_factory()
    fake.refuse_with = (
        status,
        {"error": {"message": "try later", "type": "server_error", "param": None, "code": code}},
    )
    release = create_release(NODES, node)

    with pytest.raises(PushTransientError):
        deliver(NODES, release)

    release.refresh_from_db()
    assert (release.status, release.attempts) == (ReleaseStatus.FAILED, 1)
    assert f"HTTP {status} {code}: try later" in release.last_error
    fake.refuse_with = None
    assert deliver(NODES, release).status == ReleaseStatus.APPLIED
    assert fake.held_version == release.version


def test_the_reconciler_runs_beats_schedule_and_catches_a_node_up(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    with on_commit():
        (release,) = roll_out(NODES, [node])
    fake.held_version = None  # restarted without its config
    out = io.StringIO()

    call_command("reconcile", "--once", "--skip", "collect-usage", stdout=out)

    assert fake.held_version == release.version
    printed = out.getvalue().splitlines()
    assert "poll-node-health: 1" in printed and "poll-gateway-health: 0" in printed
    assert not any(line.startswith("collect-usage") for line in printed)
