"""factory_boy factories for the control plane's models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import factory
from factory.django import DjangoModelFactory

from control_plane.clients.models import ApiKey, Client
from control_plane.fleet.models import Node, NodePool, default_pool_id
from control_plane.registry.choices import HashStatus
from control_plane.registry.models import ModelPin, SoftwareRelease
from shared.config import file_sha256, new_api_key
from shared.keys import generate_private_key, public_pem
from shared.software import FORMAT as MANIFEST_FORMAT
from shared.software import release_digest

_MODEL_DIR = Path(tempfile.mkdtemp(prefix="sanctum-cp-models-"))


def model_file(name: str, content: bytes | None = None) -> Path:
    """A small stand-in GGUF file (the registry only hashes it)."""
    path = _MODEL_DIR / f"{name}.gguf"
    path.write_bytes(content if content is not None else b"GGUF" + name.encode() * 64)
    return path


class ClientFactory(DjangoModelFactory):
    class Meta:
        model = Client

    slug = factory.Sequence(lambda n: f"client-{n}")
    name = factory.Sequence(lambda n: f"Client {n}")


class ApiKeyFactory(DjangoModelFactory):
    """A stored key. Use ``clients.services.issue_api_key`` when the secret is needed."""

    class Meta:
        model = ApiKey
        exclude = ("generated",)

    client = factory.SubFactory(ClientFactory)
    name = "test key"
    generated = factory.LazyFunction(new_api_key)
    prefix = factory.LazyAttribute(lambda o: o.generated[1])
    sha256 = factory.LazyAttribute(lambda o: o.generated[2])


class ModelPinFactory(DjangoModelFactory):
    """A pin whose file exists and whose hash is already verified."""

    class Meta:
        model = ModelPin
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"model-{n}")
    version = "v1"
    path = factory.LazyAttribute(lambda o: str(model_file(f"{o.name}-{o.version}")))
    sha256 = factory.LazyAttribute(lambda o: file_sha256(o.path))
    hash_status = HashStatus.VERIFIED
    context_size = 2048

    @factory.post_generation
    def clients(self, create: bool, extracted: list[Client] | None, **kwargs: object) -> None:
        if create and extracted:
            self.clients.set(extracted)

    @factory.post_generation
    def pools(self, create: bool, extracted: list[NodePool] | None, **kwargs: object) -> None:
        """Placed on ``pools`` (default: the default pool, where nodes and clients go)."""
        if create:
            self.pools.set(extracted if extracted is not None else [default_pool_id()])


class NodeFactory(DjangoModelFactory):
    class Meta:
        model = Node

    name = factory.Sequence(lambda n: f"node-{n}")
    management_url = "http://127.0.0.1:9"
    public_key = factory.LazyFunction(
        lambda: public_pem(generate_private_key().public_key()).decode()
    )


def release_manifest_of(n: int) -> dict[str, object]:
    """A small release manifest: one distribution, a source hash (not this environment's)."""
    return {
        "format": MANIFEST_FORMAT,
        "python": "3.11.7",
        "distributions": [
            {"name": "llama-cpp-python", "version": "0.3.36", "record_sha256": f"{n:064x}"}
        ],
        "source": {"sha256": "ab" * 32, "files": n, "requirements": {}},
    }


class SoftwareReleaseFactory(DjangoModelFactory):
    """A recorded release with its manifest, not allowed."""

    class Meta:
        model = SoftwareRelease

    manifest = factory.Sequence(release_manifest_of)
    digest = factory.LazyAttribute(lambda o: release_digest(o.manifest))
    name = factory.Sequence(lambda n: f"2026.12.{n}")
