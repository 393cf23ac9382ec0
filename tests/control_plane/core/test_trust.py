"""Keys per purpose, releases that stay fresh, signed health, and changes that release
themselves. Fake nodes stand in for the real one here (which tests/data_plane proves);
the end-to-end tests are test_e2e_trust.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from control_plane.clients.services import issue_api_key, revoke_api_key
from control_plane.core import signing
from control_plane.core.choices import HealthStatus, ReleaseStatus, RolloutState
from control_plane.core.models import rollout_state
from control_plane.core.rollout import advance_keys, check_health, refresh, roll_out
from control_plane.fleet.models import ConfigRelease
from control_plane.fleet.rollout import NODES
from shared.config import open_bundle
from shared.envelope import peek_header
from shared.keys import generate_private_key
from shared.trust import CONFIG, LOG, MANAGEMENT, PURPOSES, KeySet
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A keyring of this test's own, so rotating it touches no other test."""
    monkeypatch.setattr(settings.SANCTUM, "keyring", tmp_path / "keyring")
    signing.keyring.cache_clear()
    yield tmp_path / "keyring"
    signing.keyring.cache_clear()


def latest(node) -> ConfigRelease:
    return ConfigRelease.objects.filter(node=node).order_by("-version").first()


def test_each_purpose_has_its_own_key_and_the_published_set_holds_no_secret(
    own_keyring, auditor_api, anon_api
):
    kids = {p: signing.keyring().active(p).kid for p in PURPOSES}
    assert len(set(kids.values())) == 3
    answer = auditor_api.get("/api/keys/")
    assert answer.status_code == 200
    published = {(k["purpose"], k["kid"]) for k in answer.json()["keys"]}
    assert published == {(p, kid) for p, kid in kids.items()}
    assert '"d"' not in answer.content.decode()
    assert anon_api.get("/api/keys/").status_code in (401, 403)
    assert KeySet.parse(signing.publish().read_bytes()) == signing.published_keys()
    # ...and each key signs only its own documents.
    assert (
        signing.management_auth("n1")._key.public_key() == signing.signer(MANAGEMENT).public_key()
    )


def test_a_release_is_signed_by_the_config_key_and_carries_an_expiry_and_the_trust_set(
    own_keyring, fake_node_factory, on_commit
):
    _, node = fake_node_factory()
    with on_commit():
        (release,) = roll_out(NODES, [node])
    assert peek_header(release.signed_document)["kid"] == signing.keyring().active(CONFIG).kid
    bundle = open_bundle(release.signed_document, signing.signer(CONFIG).public_key())
    lifetime = settings.SANCTUM.rollout.release_lifetime_seconds
    assert bundle.expires_at - bundle.issued_at == timedelta(seconds=lifetime)
    assert bundle.trust == signing.target_trust()
    assert not bundle.trust.kids(LOG)


def test_revoking_a_key_releases_to_every_node_when_it_commits(fake_node_factory, on_commit):
    fake, node = fake_node_factory()
    acme = ClientFactory(slug="acme")
    with on_commit():
        key = issue_api_key(acme).api_key
    assert fake.held_version == latest(node).version
    assert [k["prefix"] for k in fake.last_bundle.document()["clients"][0]["api_keys"]] == [
        key.prefix
    ]
    with on_commit():
        revoke_api_key(key)
    assert latest(node).status == ReleaseStatus.APPLIED
    assert fake.last_bundle.clients[0].api_keys == ()
    # A change that alters no node's document releases nothing.
    before = latest(node).version
    with on_commit():
        acme.description = "a note for operators"
        acme.save()
    assert latest(node).version == before


def test_a_node_behind_its_latest_release_is_out_of_date_never_in_sync(fake_node_factory):
    fake, node = fake_node_factory()
    fake.stop()
    (release,) = roll_out(NODES, [node])  # made, never delivered (no commit here)
    state = node.current_state()
    assert rollout_state(release.version, release.status, state.applied_version) == (
        RolloutState.OUT_OF_DATE
    )


def test_a_release_about_to_expire_is_renewed_and_an_unchanged_one_is_not(
    fake_node_factory, on_commit, monkeypatch
):
    _, node = fake_node_factory()
    with on_commit():
        roll_out(NODES, [node])
    first = latest(node).version
    with on_commit():
        assert refresh(NODES) == []  # fresh, same keys, same content
    rollout = settings.SANCTUM.rollout
    monkeypatch.setattr(rollout, "renew_before_seconds", rollout.release_lifetime_seconds)
    with on_commit():
        (renewed,) = refresh(NODES)
    assert renewed.version == first + 1
    renewed.refresh_from_db()
    assert renewed.status == ReleaseStatus.APPLIED


def test_a_next_key_is_sent_first_and_signs_only_once_every_target_holds_it(
    own_keyring, fake_node_factory, on_commit
):
    fake, node = fake_node_factory()
    with on_commit():
        roll_out(NODES, [node])
    old = signing.keyring().active(CONFIG).kid
    new = signing.keyring().rotate(CONFIG).kid
    fake.stop()  # the node is away: the new key must not sign yet
    with on_commit():
        (carrying,) = refresh(NODES)
    assert new in {k["kid"] for k in carrying.document["trust"]["keys"]}
    assert advance_keys() == []
    assert signing.keyring().active(CONFIG).kid == old
    fake.start()
    check_health(NODES, node)  # catches it up: it now holds a release naming the next key
    assert advance_keys() == [f"activated config {new}"]
    with on_commit():
        (signed_by_new,) = refresh(NODES)  # the old key now has a not_after: a new trust set
    assert peek_header(signed_by_new.signed_document)["kid"] == new
    retiring = next(k for k in signed_by_new.document["trust"]["keys"] if k["kid"] == old)
    assert retiring["not_after"] > timezone.now().timestamp()


def test_a_health_answer_not_signed_by_the_nodes_registered_key_is_not_believed(
    fake_node_factory,
):
    fake, node = fake_node_factory()
    fake.node_key = generate_private_key()  # someone else answering at the node's address
    state = check_health(NODES, node)
    assert state.health_status == HealthStatus.ERROR
    assert "health answer refused" in state.health_error
    assert state.applied_version is None


def test_a_version_the_node_was_never_sent_does_not_steer_the_next_one(fake_node_factory):
    fake, node = fake_node_factory()
    # What a compromised node could claim in a signed answer (past any version issued;
    # canonical JSON holds integers up to 2**53 - 1 only, so that is the most it can sign).
    fake.held_version = 2**53 - 1
    state = check_health(NODES, node)
    assert state.applied_version is None
    assert "not issued here" in state.health_error
    (release,) = roll_out(NODES, [node])
    assert release.version == 1
