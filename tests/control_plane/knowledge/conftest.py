"""Fixtures for knowledge-base tests: fake nodes that take documents, registered nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from control_plane.core.signing import target_trust
from control_plane.fleet.models import Node
from tests.control_plane.factories import ClientFactory, NodeFactory
from tests.control_plane.knowledge.fakes import FakeKnowledgeNode


@pytest.fixture
def kb_node_factory(db) -> Iterator[Callable[..., tuple[FakeKnowledgeNode, Node]]]:
    """Start a fake node that trusts this control plane's key, and register it."""
    started: list[FakeKnowledgeNode] = []

    def make(name: str | None = None, **kwargs: int) -> tuple[FakeKnowledgeNode, Node]:
        name = name or f"kb-node-{len(started) + 1}"
        fake = FakeKnowledgeNode(target_trust(), name, **kwargs).start()
        started.append(fake)
        node = NodeFactory(name=name, management_url=fake.url)
        return fake, node

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def acme(db):
    return ClientFactory(slug="acme", name="Acme Law")
