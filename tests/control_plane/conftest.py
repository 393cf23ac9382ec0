"""Fixtures for the control plane's tests: operators, API clients, fake nodes.

Every control-plane test that doesn't need the real model or a browser is also marked
``postgres_suite``: ``make test`` runs those a second time against PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from control_plane.accounts.choices import Role
from control_plane.accounts.services import create_operator, issue_api_token
from control_plane.core.signing import target_trust
from control_plane.fleet.models import Node
from tests.control_plane.factories import NodeFactory
from tests.control_plane.fakes import FakeNode

_HERE = Path(__file__).parent
_HEAVY = {"model", "browser", "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.fspath).parents and not _HEAVY & {
            mark.name for mark in item.iter_markers()
        }:
            item.add_marker(pytest.mark.postgres_suite)


@pytest.fixture
def admin_user(db):
    return create_operator("alice", Role.ADMIN).user


@pytest.fixture
def auditor_user(db):
    return create_operator("audrey", Role.AUDITOR).user


def _api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {issue_api_token(user)}")
    return client


@pytest.fixture
def admin_api(admin_user) -> APIClient:
    return _api(admin_user)


@pytest.fixture
def auditor_api(auditor_user) -> APIClient:
    return _api(auditor_user)


@pytest.fixture
def anon_api(db) -> APIClient:
    return _api()


@pytest.fixture
def fake_node_factory(db) -> Iterator[Callable[..., tuple[FakeNode, Node]]]:
    """Start a fake node trusting this control plane's key and register it."""
    started: list[FakeNode] = []

    def make(name: str | None = None) -> tuple[FakeNode, Node]:
        node = NodeFactory(**({"name": name} if name else {}))
        fake = FakeNode(node.name, target_trust()).start()
        started.append(fake)
        node.management_url = fake.url
        node.public_key = fake.node_public_pem  # the key its usage records are signed with
        node.save()
        return fake, node

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """Run on-commit callbacks (queued pushes, hash tasks) as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of the test's own (fails in CI when redis-server is missing)."""
    from tests.control_plane.processes import RedisServer

    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def control_plane_factory(tmp_path):
    """Build control-plane installations in the test's temp dir; stops their processes."""
    from tests.control_plane.processes import ControlPlane

    made: list[ControlPlane] = []

    def make(redis_url: str | None = None, **env: str) -> ControlPlane:
        cp = ControlPlane(tmp_path / f"cp{len(made)}", redis_url, **env)
        made.append(cp)
        return cp

    yield make
    for cp in made:
        cp.stop()
