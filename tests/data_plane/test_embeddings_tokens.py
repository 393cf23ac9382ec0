"""Embeddings of token arrays, with the ``openai`` SDK against a real node and the real
embedder: the same vectors as the text those tokens came from."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import openai
import pytest

from data_plane.rag.embedder import bundled_model_path
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node

pytestmark = [pytest.mark.model, pytest.mark.embedder]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by four percent."]


@cache
def tokenizer() -> Any:
    """all-MiniLM-L6-v2's own tokenizer, as a client holding the model would use it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)


def ids(text: str) -> list[int]:
    return list(tokenizer()(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def embedder_tenant() -> Tenant:
    return make_tenant("emma", (DEFAULT_MODEL_NAME,), embeddings=True)


@pytest.fixture(scope="module")
def embed_node(
    tmp_path_factory: pytest.TempPathFactory, model_spec: Any, embedder_tenant: Tenant
) -> Iterator[Node]:
    n = new_node(tmp_path_factory.mktemp("embed-node"))
    n.start()
    n.push([model_spec], [embedder_tenant])
    yield n
    n.stop()


def vectors(reply: Any) -> np.ndarray:
    return np.array([d.embedding for d in reply.data])


def test_token_arrays_embed_as_their_text(embed_node: Node, embedder_tenant: Tenant) -> None:
    client = embed_node.openai(embedder_tenant)
    text = vectors(client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS))
    many = client.embeddings.create(model=EMBEDDING_MODEL, input=[ids(t) for t in TEXTS])
    assert many.usage.prompt_tokens == sum(len(ids(t)) for t in TEXTS)
    np.testing.assert_allclose(vectors(many), text, atol=1e-5)
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=ids(TEXTS[0]))
    assert len(one.data) == 1
    np.testing.assert_allclose(vectors(one)[0], text[0], atol=1e-5)


def test_bad_token_arrays_are_400(embed_node: Node, embedder_tenant: Tenant) -> None:
    client = embed_node.openai(embedder_tenant)
    size = len(tokenizer())
    for bad in ([[1, 2], []], [5, size], [[-1]], [[7] * 1000]):
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model=EMBEDDING_MODEL, input=bad)
        assert err.value.body["param"] == "input"
        assert str(size) not in err.value.body["message"].replace(str(size - 1), "")


def test_langchain_embeddings_send_token_arrays(embed_node: Node, embedder_tenant: Tenant) -> None:
    """LangChain's ``OpenAIEmbeddings`` sends token arrays by default; without tiktoken's
    files (nothing is downloaded here) it uses the embedding model's own tokenizer."""
    from langchain_openai import OpenAIEmbeddings  # a dev extra: installed by the set-up

    embeddings = OpenAIEmbeddings(
        model=EMBEDDING_MODEL,
        base_url=f"{embed_node.api}/v1",
        api_key=embedder_tenant.key,
        tiktoken_enabled=False,
        tiktoken_model_name=str(bundled_model_path()),
    )
    got = np.array(embeddings.embed_documents(TEXTS))
    text = vectors(
        embed_node.openai(embedder_tenant).embeddings.create(model=EMBEDDING_MODEL, input=TEXTS)
    )
    np.testing.assert_allclose(got, text, atol=1e-5)
