"""Rollout: bundles from the database, signed pushes, down nodes, catching up, versions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from control_plane.clients.services import issue_api_key, revoke_api_key
from control_plane.core.choices import HealthStatus, ReleaseStatus
from control_plane.core.rollout import (
    ReleaseStamp,
    check_health,
    create_release,
    deliver,
    roll_out,
)
from control_plane.core.signing import signer, target_trust
from control_plane.fleet.models import ConfigRelease, NodeState
from control_plane.fleet.rollout import NODES, build_bundle
from control_plane.registry.choices import HashStatus
from shared.config import open_bundle
from shared.trust import CONFIG
from tests.control_plane.factories import ClientFactory, ModelPinFactory, NodeFactory

pytestmark = pytest.mark.django_db


def test_the_bundle_carries_usable_keys_servable_models_and_allowed_clients():
    acme, other = ClientFactory(slug="acme"), ClientFactory(slug="other", is_active=False)
    good = issue_api_key(acme).api_key
    revoke_api_key(issue_api_key(acme).api_key)
    expired = issue_api_key(acme, expires_at=timezone.now() + timedelta(seconds=5)).api_key
    ModelPinFactory(name="llm", clients=[acme])
    ModelPinFactory(name="broken", hash_status=HashStatus.MISMATCH, clients=[acme])
    ModelPinFactory(name="off", enabled=False, clients=[acme])
    node = NodeFactory(name="n1")

    later = timezone.now() + timedelta(seconds=10)
    stamp = ReleaseStamp(later, later + timedelta(days=1), target_trust())
    bundle = build_bundle(node, 3, stamp)

    assert (bundle.version, bundle.node) == (3, "n1")
    assert [m.name for m in bundle.models] == ["llm"]
    assert [c.id for c in bundle.clients] == ["acme"]
    (client,) = bundle.clients
    assert client.models == ("llm",)
    assert [k.prefix for k in client.api_keys] == [good.prefix]
    assert expired.prefix not in {k.prefix for k in client.api_keys}
    assert other.slug not in {c.id for c in bundle.clients}


def test_a_rollout_signs_pushes_and_records_the_applied_version(fake_node_factory, on_commit):
    ClientFactory(slug="acme")
    fake, node = fake_node_factory()

    with on_commit():
        (release,) = roll_out(NODES)

    release.refresh_from_db()
    assert release.status == ReleaseStatus.APPLIED and release.applied_at is not None
    assert fake.held_version == release.version == 1
    assert open_bundle(release.signed_document, signer(CONFIG).public_key()).node == node.name
    assert NodeState.objects.get(node=node).applied_version == 1


def test_a_down_node_fails_with_the_reason_blocks_no_one_and_catches_up(
    fake_node_factory, on_commit
):
    up, _ = fake_node_factory("up")
    down, down_node = fake_node_factory("down")
    down.stop()

    with on_commit():
        releases = {r.node.name: r for r in roll_out(NODES)}

    for release in releases.values():
        release.refresh_from_db()
    assert releases["up"].status == ReleaseStatus.APPLIED
    assert releases["down"].status == ReleaseStatus.FAILED
    assert "node unreachable" in releases["down"].last_error
    assert check_health(NODES, down_node).health_status == HealthStatus.UNREACHABLE

    down.start()  # same port: the node is back, holding nothing
    state = check_health(NODES, down_node)

    releases["down"].refresh_from_db()
    assert releases["down"].status == ReleaseStatus.APPLIED
    assert state.applied_version == down.held_version == releases["down"].version
    assert up.received == [releases["up"].version]


def test_a_node_never_gets_a_version_older_than_it_holds(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    old = create_release(NODES, node)  # made but not pushed
    with on_commit():
        (new,) = roll_out(NODES, [node])

    outcome = deliver(NODES, old)

    assert outcome.status == ReleaseStatus.SUPERSEDED
    assert fake.received == [new.version]  # the old bundle never left


def test_versions_go_above_what_a_node_holds_once_a_push_finds_out(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    fake.held_version = 41  # e.g. a control plane restored from an older backup
    state = check_health(NODES, node)
    assert state.applied_version is None  # its word alone does not set the next version

    with on_commit():
        (first,) = roll_out(NODES, [node])

    latest = ConfigRelease.objects.filter(node=node).order_by("-version").first()
    assert (first.version, latest.version) == (1, 42)
    assert latest.status == ReleaseStatus.APPLIED and fake.held_version == 42


def test_a_node_holding_a_version_never_issued_here_is_overtaken(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    fake.held_version = 1_700_000_000_000  # pushed by hand, or by a restored database

    with on_commit():
        (first,) = roll_out(NODES, [node])

    first.refresh_from_db()
    latest = ConfigRelease.objects.filter(node=node).order_by("-version").first()
    assert first.status == ReleaseStatus.SUPERSEDED and "not issued here" in first.last_error
    assert latest.version == 1_700_000_000_001 and latest.status == ReleaseStatus.APPLIED
    assert fake.held_version == latest.version
    assert fake.received == [first.version, latest.version]


def test_a_stale_answer_for_the_same_version_counts_as_applied(fake_node_factory):
    fake, node = fake_node_factory()
    release = create_release(NODES, node)
    fake.held_version = release.version  # applied, but the answer was lost

    assert deliver(NODES, release).status == ReleaseStatus.APPLIED
    assert NodeState.objects.get(node=node).applied_version == release.version


def test_a_node_refusing_a_bundle_is_recorded_and_not_retried(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    fake.refuse_with = (
        422,
        {
            "error": {
                "message": "model file hash does not match the pin",
                "type": "invalid_request_error",
                "param": "models",
                "code": "model_hash_mismatch",
            }
        },
    )
    with on_commit():
        (release,) = roll_out(NODES, [node])

    check_health(NODES, node)  # beat's catch-up must not hammer the node with the same bundle

    release.refresh_from_db()
    assert release.status == ReleaseStatus.REJECTED
    assert "422 model_hash_mismatch" in release.last_error
    assert fake.received == [release.version]


def test_a_node_that_lost_its_config_gets_it_again(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    with on_commit():
        (release,) = roll_out(NODES, [node])
    fake.held_version = None  # restarted without its config

    check_health(NODES, node)

    assert fake.received == [release.version, release.version]
    assert fake.held_version == release.version


def test_a_push_task_that_cannot_reach_the_node_records_failure(fake_node_factory):
    from control_plane.core.tasks import push_release

    fake, node = fake_node_factory()
    fake.stop()
    release = create_release(NODES, node)

    push_release.delay("node", release.pk)  # in-process: no retries, the reconciler catches up

    release.refresh_from_db()
    assert (release.status, release.attempts) == (ReleaseStatus.FAILED, 1)
    assert ConfigRelease.objects.get(pk=release.pk).last_error.startswith("node unreachable")
