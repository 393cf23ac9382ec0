"""The config bundle contract and API key handling."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.canonical import CanonicalJSONError, canonical_json
from shared.config import (
    ApiKeySpec,
    ClientSpec,
    ConfigBundle,
    ModelSpec,
    api_key_matches,
    api_key_prefix,
    new_api_key,
    open_bundle,
    sign_bundle,
)
from shared.keys import generate_private_key
from shared.trust import KeySet
from tests.conftest import release_fields


def test_api_keys_are_random_and_only_their_hash_is_kept() -> None:
    key, prefix, digest = new_api_key()
    other, _, _ = new_api_key()
    assert key != other
    assert api_key_prefix(key) == prefix
    assert api_key_matches(key, digest)
    assert not api_key_matches(other, digest)
    assert key not in digest and len(digest) == 64


def test_bundle_round_trip() -> None:
    key, prefix, digest = new_api_key()
    bundle = ConfigBundle(
        version=3,
        **release_fields(),
        node="node-1",
        clients=(ClientSpec(id="acme", api_keys=(ApiKeySpec(prefix=prefix, sha256=digest),)),),
    )
    signer = generate_private_key()
    assert open_bundle(sign_bundle(bundle, signer), signer.public_key()) == bundle
    assert key not in sign_bundle(bundle, signer)


def test_bundle_contract_is_strict() -> None:
    with pytest.raises(ValidationError):
        ConfigBundle(version=0, **release_fields(), node="n")
    with pytest.raises(ValidationError, match="expires_at"):
        ConfigBundle(version=1, **release_fields(expires_at=datetime.now(UTC)), node="n")
    with pytest.raises(ValidationError, match="config key"):
        ConfigBundle(version=1, **release_fields(trust=KeySet()), node="n")
    with pytest.raises(ValidationError):
        ConfigBundle.model_validate(
            {"version": 1, "issued_at": "2026-01-01T00:00:00Z", "node": "n", "surprise": 1}
        )
    with pytest.raises(ValidationError, match="unique"):
        ConfigBundle(
            version=1,
            **release_fields(),
            node="n",
            clients=(ClientSpec(id="a"), ClientSpec(id="a")),
        )


def test_canonical_json() -> None:
    assert canonical_json({"b": [1, "é"], "a": None}) == '{"a":null,"b":[1,"é"]}'.encode()
    with pytest.raises(CanonicalJSONError, match="float"):
        canonical_json({"x": 1.5})


def test_a_release_has_an_aware_expiry_and_a_bounded_version() -> None:
    with pytest.raises(ValidationError):
        ConfigBundle(version=2**60, **release_fields(), node="n")
    naive = {**release_fields(), "expires_at": datetime(2030, 1, 1)}
    with pytest.raises(ValidationError):
        ConfigBundle(version=1, **naive, node="n")


_MODEL = {"name": "m", "version": "v1", "sha256": "ab" * 32, "context_size": 2048}


def test_a_model_names_its_file_by_path_or_by_source_with_its_size() -> None:
    by_path = ModelSpec.model_validate({**_MODEL, "path": "/models/m.gguf"})
    by_source = ModelSpec.model_validate(
        {**_MODEL, "source": "https://store.storage/m.gguf", "size": 10}
    )

    assert (by_path.source, by_path.size) == (None, None)  # a bundle from before sources
    assert by_source.path is None
    for bad in (
        {},
        {"path": "/m.gguf", "source": "/store/m.gguf", "size": 10},
        {"source": "/store/m.gguf"},
        {"source": "http://user:pw@store/m.gguf", "size": 10},
        {"source": "file:///store/m.gguf", "size": 10},
        {"source": "http://store/m.gguf", "size": 0},
    ):
        with pytest.raises(ValidationError):
            ModelSpec.model_validate({**_MODEL, **bad})
