"""The model-pin API."""

from __future__ import annotations

import pytest
from django.utils import timezone

from control_plane.core.choices import HealthStatus
from control_plane.fleet.models import NodeState
from control_plane.registry.models import ModelPin
from control_plane.registry.services import verify_model_pin
from shared.config import file_sha256
from tests.control_plane.factories import ClientFactory, ModelPinFactory, NodeFactory, model_file

pytestmark = pytest.mark.django_db


def test_pinning_through_the_api_hashes_the_file(admin_api, on_commit):
    ClientFactory(slug="acme")
    path = model_file("api-model")

    with on_commit():
        response = admin_api.post(
            "/api/model-pins/",
            {"name": "api-model", "version": "q4", "path": str(path), "clients": ["acme"]},
            format="json",
        )

    assert response.status_code == 201, response.json()
    body = admin_api.get(f"/api/model-pins/{response.json()['id']}/").json()
    assert (body["hash_status"], body["sha256"]) == ("verified", file_sha256(path))
    assert body["clients"] == ["acme"]


def test_pin_errors_are_field_level(admin_api):
    pin = ModelPinFactory(name="llm")

    bad = admin_api.post(
        "/api/model-pins/",
        {"name": "bad name!", "version": "", "path": "x", "context_size": 1, "clients": ["nope"]},
        format="json",
    )
    duplicate = admin_api.post(
        "/api/model-pins/", {"name": "llm", "version": "v2", "path": "/m.gguf"}, format="json"
    )
    moved = admin_api.patch(f"/api/model-pins/{pin.pk}/", {"path": "/elsewhere"}, format="json")

    assert bad.status_code == 400
    assert set(bad.json()) == {"name", "version", "context_size", "clients"}
    assert duplicate.status_code == 400 and set(duplicate.json()) == {"version"}
    assert moved.status_code == 400 and set(moved.json()) == {"path"}


def test_a_version_the_usage_record_cannot_carry_is_a_field_error(admin_api):
    response = admin_api.post(
        "/api/model-pins/", {"name": "m", "version": "v 1", "path": "/m.gguf"}, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()) == {"version"}


def test_verify_needs_change_permission(admin_api, auditor_api, on_commit):
    pin = ModelPinFactory()
    pin.sha256 = ""
    pin.save()

    denied = auditor_api.post(f"/api/model-pins/{pin.pk}/verify/")
    with on_commit():
        accepted = admin_api.post(f"/api/model-pins/{pin.pk}/verify/")

    assert denied.status_code == 403
    assert accepted.status_code == 202
    assert ModelPin.objects.get(pk=pin.pk).sha256 == file_sha256(pin.path)


def test_upgrading_and_rolling_back_through_the_api(admin_api, auditor_api, on_commit):
    def pin(version: str, **extra: object) -> dict:
        path = model_file(f"upgraded-{version}")
        body = {"name": "upgraded", "version": version, "path": str(path), **extra}
        with on_commit():
            made = admin_api.post("/api/model-pins/", body, format="json")
        assert made.status_code == 201, made.json()
        return admin_api.get(f"/api/model-pins/{made.json()['id']}/").json()

    first = pin("v1")
    second = pin("v2", supersede=True)
    assert second["enabled"] and not second["staged"] and second["supersedes"] == first["id"]

    assert auditor_api.post(f"/api/model-pins/{second['id']}/rollback/").status_code == 403
    back = admin_api.post(f"/api/model-pins/{second['id']}/rollback/")
    assert back.status_code == 200 and (back.json()["id"], back.json()["enabled"]) == (
        first["id"],
        True,
    )
    again = admin_api.post(f"/api/model-pins/{first['id']}/rollback/")
    assert again.status_code == 400 and "supersedes" in again.json()
    assert [p.version for p in ModelPin.objects.servable().filter(name="upgraded")] == ["v1"]


def test_gpu_layers_are_set_per_pin_and_reach_the_node_s_engine(admin_api, on_commit):
    from control_plane.fleet.rollout import build_bundle
    from data_plane.runtime import engine_config
    from data_plane.settings import Settings

    path = model_file("gpu-model")
    with on_commit():
        created = admin_api.post(
            "/api/model-pins/",
            {"name": "gpu-model", "version": "q4", "path": str(path), "gpu_layers": -1},
            format="json",
        )
    assert created.status_code == 201, created.json()
    assert created.json()["gpu_layers"] == -1
    bad = admin_api.patch(
        f"/api/model-pins/{created.json()['id']}/", {"gpu_layers": -2}, format="json"
    )
    assert bad.status_code == 400 and "gpu_layers" in bad.json()

    node = NodeFactory()
    (spec,) = build_bundle(node, 1).models
    node_default = Settings(engine={"n_gpu_layers": 0})
    assert engine_config(spec, node_default).n_gpu_layers == -1

    admin_api.patch(f"/api/model-pins/{created.json()['id']}/", {"gpu_layers": None}, format="json")
    (spec,) = build_bundle(node, 2).models
    assert engine_config(spec, Settings(engine={"n_gpu_layers": 12})).n_gpu_layers == 12


def test_a_staged_pin_says_whom_it_waits_for_and_an_admin_can_force_it_live(admin_api, auditor_api):
    ModelPinFactory(name="llm")
    node = NodeFactory(name="n-a")
    NodeState.objects.create(
        node=node,
        health_status=HealthStatus.OK,
        health_checked_at=timezone.now(),
        health={"status": "ok", "models": [], "staged": []},
    )
    made = admin_api.post(
        "/api/model-pins/",
        {"name": "llm", "version": "v2", "path": str(model_file("llm-v2")), "supersede": True},
        format="json",
    )
    assert made.status_code == 201, made.json()
    url = f"/api/model-pins/{made.json()['id']}/"
    verify_model_pin(ModelPin.objects.get(pk=made.json()["id"]))

    staged = admin_api.get(url).json()
    assert (staged["staged"], staged["enabled"]) == (True, False)
    assert staged["staging"] == {
        "ready": False,
        "ready_on": [],
        "waiting_on": {"n-a": "not staged on it yet"},
        "not_counted": {},
    }
    assert auditor_api.post(f"{url}go-live/").status_code == 403
    live = admin_api.post(f"{url}go-live/")
    assert live.status_code == 200, live.json()
    assert (live.json()["enabled"], live.json()["staging"]) == (True, None)
    again = admin_api.post(f"{url}go-live/")
    assert again.status_code == 400 and "staged" in again.json()
