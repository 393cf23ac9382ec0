"""Fixtures for knowledge-base tests: fake nodes that take documents, registered nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from control_plane.fleet.models import Node
from control_plane.fleet.signing import signing_key
from tests.control_plane.factories import ClientFactory, NodeFactory
from tests.control_plane.knowledge.fakes import FakeKnowledgeNode


@pytest.fixture
def kb_node_factory(db) -> Iterator[Callable[..., tuple[FakeKnowledgeNode, Node]]]:
    """Start a fake node that trusts this control plane's key, and register it."""
    started: list[FakeKnowledgeNode] = []

    def make(name: str | None = None, **kwargs: int) -> tuple[FakeKnowledgeNode, Node]:
        fake = FakeKnowledgeNode(signing_key().public_key(), **kwargs).start()
        started.append(fake)
        node = NodeFactory(**({"name": name} if name else {}), management_url=fake.url)
        return fake, node

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def acme(db):
    return ClientFactory(slug="acme", name="Acme Law")
