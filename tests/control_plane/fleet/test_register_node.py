"""Registering a node from the control plane's shell (``register_node``)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from control_plane.changes.models import ObjectChange
from control_plane.fleet.models import Node, NodePool
from shared.keys import generate_private_key, public_pem

pytestmark = pytest.mark.django_db


def _key_file(tmp_path, name="node.pub"):
    path = tmp_path / name
    path.write_bytes(public_pem(generate_private_key().public_key()))
    return path


def test_a_node_is_registered_in_its_pool_and_the_trail_says_by_a_command(tmp_path, capsys):
    NodePool.objects.create(name="shared-eu", kind="shared")
    key = _key_file(tmp_path)

    call_command(
        "register_node",
        "node-eu-1",
        "--management-url",
        "https://10.10.0.11:8001",
        "--public-key",
        str(key),
        "--pool",
        "shared-eu",
    )

    node = Node.objects.get(name="node-eu-1")
    assert node.pool.name == "shared-eu"
    assert node.public_key == key.read_text()
    assert f"SANCTUM_NODE=node-eu-1 id={node.pk} pool=shared-eu" in capsys.readouterr().out
    change = ObjectChange.objects.filter(
        changed_object_id=str(node.pk), object_repr__contains="node-eu-1"
    ).latest("pk")
    assert change.source == "command"

    # Again with a new key: the same node, updated.
    call_command(
        "register_node",
        "node-eu-1",
        "--management-url",
        "https://10.10.0.12:8001",
        "--public-key",
        str(_key_file(tmp_path, "new.pub")),
    )
    node.refresh_from_db()
    assert node.management_url == "https://10.10.0.12:8001"
    assert node.pool.name == "shared-eu"  # kept: no --pool given
    assert Node.objects.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--management-url", "not a url", "--pool", "default"], "management_url"),
        (["--management-url", "https://10.0.0.1:8001", "--pool", "nope"], "no node pool"),
    ],
)
def test_bad_input_names_what_is_wrong_and_registers_nothing(tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("register_node", "node-x", "--public-key", str(_key_file(tmp_path)), *args)
    assert not Node.objects.filter(name="node-x").exists()


def test_a_file_that_is_not_a_public_key_is_refused(tmp_path):
    junk = tmp_path / "node.pub"
    junk.write_text("not a key")
    with pytest.raises(CommandError, match="public_key"):
        call_command(
            "register_node",
            "node-y",
            "--management-url",
            "https://10.0.0.1:8001",
            "--public-key",
            str(junk),
        )
    missing = tmp_path / "absent.pub"
    with pytest.raises(CommandError, match="can't read"):
        call_command(
            "register_node",
            "node-y",
            "--management-url",
            "https://10.0.0.1:8001",
            "--public-key",
            str(missing),
        )
