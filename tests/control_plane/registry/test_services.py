"""Pinning models: the hash comes from the file, a new version is explicit."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from control_plane.registry.choices import HashStatus
from control_plane.registry.models import ModelPin
from control_plane.registry.services import pin_model, roll_back_pin, verify_model_pin
from shared.config import file_sha256
from tests.control_plane.factories import ClientFactory, model_file

pytestmark = pytest.mark.django_db


def _pin(on_commit, **overrides) -> ModelPin:
    fields = {"name": "llm", "version": "v1", "path": str(model_file("llm-v1"))}
    fields.update(overrides)
    with on_commit():
        pin = pin_model(**fields)
    pin.refresh_from_db()
    return pin


def test_the_hash_is_computed_from_the_file_by_the_task(on_commit):
    path = model_file("llm-v1")

    pin = _pin(on_commit, path=str(path))

    assert pin.hash_status == HashStatus.VERIFIED
    assert pin.sha256 == file_sha256(path)
    assert ModelPin.objects.servable().get() == pin


def test_pinning_another_version_needs_supersede(on_commit):
    client = ClientFactory()
    first = _pin(on_commit, clients=[client])

    with pytest.raises(ValidationError) as caught:
        _pin(on_commit, version="v2", path=str(model_file("llm-v2")))
    second = _pin(on_commit, version="v2", path=str(model_file("llm-v2")), supersede=True)

    assert "version" in caught.value.message_dict
    first.refresh_from_db()
    assert not first.enabled and second.enabled and not second.staged
    assert second.supersedes == first
    assert list(second.clients.all()) == [client]


def test_a_new_version_is_staged_until_its_hash_is_verified_and_the_old_one_serves_meanwhile():
    """No rollout made while the new file is hashed ships the model without a pin."""
    path = model_file("llm-v2")
    first = pin_model(name="llm", version="v1", path=str(model_file("llm-v1")))
    verify_model_pin(first)

    second = pin_model(name="llm", version="v2", path=str(path), supersede=True)

    # Without a broker the hash task runs on commit; this test holds the transaction,
    # so the new pin is still waiting: the old one is what a bundle carries.
    second.refresh_from_db()
    assert (second.staged, second.enabled, second.hash_status) == (True, False, "pending")
    assert [str(p) for p in ModelPin.objects.servable()] == ["llm@v1"]

    verify_model_pin(second)

    assert [str(p) for p in ModelPin.objects.servable()] == ["llm@v2"]
    second.refresh_from_db()
    assert not second.staged


def test_a_staged_version_whose_file_fails_leaves_the_old_one_serving(on_commit):
    first = _pin(on_commit)
    broken = _pin(on_commit, version="v2", path="/nonexistent/llm-v2.gguf", supersede=True)

    assert (broken.staged, broken.enabled, broken.hash_status) == (True, False, "failed")
    assert [str(p) for p in ModelPin.objects.servable()] == [str(first)]


def test_rolling_back_returns_to_the_pin_it_replaced_in_one_step(on_commit):
    first = _pin(on_commit)
    second = _pin(on_commit, version="v2", path=str(model_file("llm-v2")), supersede=True)

    back = roll_back_pin(second)

    assert back == first
    assert [str(p) for p in ModelPin.objects.servable()] == [str(first)]
    with pytest.raises(ValidationError, match="Only a serving pin"):
        roll_back_pin(first)  # v1 replaced nothing
    with pytest.raises(ValidationError, match="Only a serving pin"):
        roll_back_pin(second)  # v2 no longer serves
    # A pin whose file is gone can't be returned to.
    third = _pin(on_commit, version="v3", path=str(model_file("llm-v3")), supersede=True)
    model_file("llm-v1").unlink()
    with pytest.raises(ValidationError, match="no longer there"):
        roll_back_pin(third)
    assert [str(p) for p in ModelPin.objects.servable()] == [str(third)]


def test_a_changed_file_is_a_mismatch_and_leaves_the_bundle(on_commit):
    path = model_file("llm-v1")
    pin = _pin(on_commit, path=str(path))
    path.write_bytes(b"GGUF tampered")

    checked = verify_model_pin(pin)

    assert checked.hash_status == HashStatus.MISMATCH
    assert checked.sha256 == pin.sha256  # the pin keeps the hash it was made with
    assert "pin the new file" in checked.hash_error
    assert not ModelPin.objects.servable().exists()


def test_a_missing_file_fails_with_the_reason(on_commit):
    pin = _pin(on_commit, path="/nonexistent/model.gguf")

    assert pin.hash_status == HashStatus.FAILED
    assert "can't read /nonexistent/model.gguf" in pin.hash_error


def test_a_relative_path_is_a_field_error(on_commit):
    with pytest.raises(ValidationError) as caught:
        _pin(on_commit, path="models/llm.gguf")
    assert "path" in caught.value.message_dict
