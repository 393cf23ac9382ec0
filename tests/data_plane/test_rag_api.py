"""Retrieval through a real node: the real embedder, Qdrant local mode, the real model,
the ``openai`` SDK. acme's knowledge base ``handbook`` is the test corpus; globex has a
handbook of its own (same document name, other facts) and a base named ``secrets``."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI, PermissionDeniedError

from shared.keys import generate_private_key
from shared.models import DEFAULT_CONTEXT_SIZE, DEFAULT_MODEL_NAME
from shared.signed_request import SignedRequestAuth, authorization
from shared.trust import MANAGEMENT
from tests.conftest import GLOBEX_MARKER, Node, RagTenants

pytestmark = [pytest.mark.model, pytest.mark.embedder]

MODEL = DEFAULT_MODEL_NAME
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def sanctum_of(reply: Any) -> dict[str, Any]:
    extra = reply.model_extra or {}
    return dict(extra.get("sanctum") or {})


def ask(client: OpenAI, question: str, sanctum: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 4),
        messages=[{"role": "user", "content": question}],
        extra_body={"sanctum": sanctum} if sanctum is not None else None,
        **kwargs,
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


# --- chats with a knowledge base -----------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "document"),
    [
        ("How much is the hotel limit per night for business trips?", "travel-policy.md"),
        ("Where in the warehouse is a hard hat mandatory?", "warehouse-safety.html"),
        ("What code is printed on the return labels?", "customer-returns.pdf"),
    ],
)
def test_sources_name_the_right_document(
    rag_node: Node, rag_tenants: RagTenants, question: str, document: str
) -> None:
    reply = ask(
        rag_node.openai(rag_tenants.acme), question, {"knowledge_bases": ["handbook"], "top_k": 3}
    )
    sources = sanctum_of(reply)["sources"]
    assert 1 <= len(sources) <= 3
    assert sources[0]["knowledge_base"] == "handbook"
    assert sources[0]["document"] == document
    assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)
    for s in sources:
        assert set(s) >= {"knowledge_base", "document", "chunk", "score", "text"}
        assert GLOBEX_MARKER not in s["text"]


def test_the_model_answers_from_the_sources(rag_node: Node, rag_tenants: RagTenants) -> None:
    """The context reaches the model: a fact only the knowledge base knows comes back."""
    reply = ask(
        rag_node.openai(rag_tenants.acme),
        "Who is the first aid officer at the Rotterdam warehouse?",
        {"knowledge_bases": ["handbook"], "top_k": 1},
        max_tokens=24,
    )
    assert sanctum_of(reply)["sources"][0]["document"] == "warehouse-safety.html"
    assert "Maja Lindqvist" in reply.choices[0].message.content


def test_streamed_chat_carries_the_sources_in_its_last_chunk(
    rag_node: Node, rag_tenants: RagTenants
) -> None:
    stream = ask(
        rag_node.openai(rag_tenants.acme),
        "Which password manager does the company use?",
        {"knowledge_bases": ["handbook"], "top_k": 2},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    sources = sanctum_of(finishing[0])["sources"]
    assert sources[0]["document"] == "security.txt"
    assert all(not sanctum_of(c).get("sources") for c in chunks if c is not finishing[0])


def test_context_is_trimmed_to_the_budget_and_never_overflows(
    rag_node: Node, rag_tenants: RagTenants
) -> None:
    """16 chunks do not fit beside room for a 1,500-token answer: some are left out, and
    the prompt plus the room kept for the answer stays within the context."""
    reply = ask(
        rag_node.openai(rag_tenants.acme),
        "Tell me about the company.",
        {"knowledge_bases": ["handbook"], "top_k": 16},
        max_tokens=1500,
        stop=["."],
    )
    sources = sanctum_of(reply)["sources"]
    assert 1 <= len(sources) < 16
    reserve = min(1500, DEFAULT_CONTEXT_SIZE // 2)
    assert reply.usage.prompt_tokens + reserve <= DEFAULT_CONTEXT_SIZE


def test_transcript_keeps_the_callers_messages_not_the_context(
    rag_node: Node, rag_tenants: RagTenants
) -> None:
    with rag_node.client(rag_tenants.acme) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
    client = rag_node.openai(rag_tenants.acme)
    headers = {"X-Sanctum-Session": sid}
    first = ask(
        client,
        "How long is the probation period?",
        {"knowledge_bases": ["handbook"], "top_k": 4},
        extra_headers=headers,
    )
    assert len(sanctum_of(first)["sources"]) == 4
    second = ask(client, "Thanks.", extra_headers=headers)
    assert "sources" not in sanctum_of(second)
    # Had the transcript kept the injected chunks, the second prompt would hold them.
    assert second.usage.prompt_tokens < first.usage.prompt_tokens / 2
    with rag_node.client(rag_tenants.acme) as c:
        assert c.delete(f"/sessions/{sid}").status_code == 200


# --- isolation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "names"),
    [
        ("acme", ["secrets"]),  # globex's
        ("acme", ["handbook", "secrets"]),
        ("acme", ["extra"]),  # allowed by its config, never loaded
        ("acme", ["nothing-here"]),
        ("globex", ["extra"]),  # acme may use a base of that name; globex may not
    ],
)
def test_naming_a_knowledge_base_that_is_not_yours_is_404(
    rag_node: Node, rag_tenants: RagTenants, tenant: str, names: list[str]
) -> None:
    with rag_node.client(getattr(rag_tenants, tenant)) as c:
        r = c.post(
            "/chat/completions",
            json={
                "model": MODEL,
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "What are the plans?"}],
                "sanctum": {"knowledge_bases": names},
            },
        )
    assert r.status_code == 404, r.text
    error = error_of(r)
    assert error["code"] == "knowledge_base_not_found"
    assert error["param"] == "sanctum.knowledge_bases"
    assert GLOBEX_MARKER not in r.text


def test_a_client_never_retrieves_another_clients_chunks(
    rag_node: Node, rag_tenants: RagTenants
) -> None:
    """Both have a handbook with a travel-policy.md; a question that globex's answers
    word for word still finds only acme's chunks for acme, at the largest top_k."""
    question = "At Globex, what are hotel rooms on business trips capped at per night?"
    acme = ask(
        rag_node.openai(rag_tenants.acme), question, {"knowledge_bases": ["handbook"], "top_k": 16}
    )
    acme_sources = sanctum_of(acme)["sources"]
    assert acme_sources
    assert all(GLOBEX_MARKER not in s["text"] for s in acme_sources)
    assert all(s["knowledge_base"] == "handbook" for s in acme_sources)
    globex = ask(rag_node.openai(rag_tenants.globex), question, {"knowledge_bases": ["handbook"]})
    globex_sources = sanctum_of(globex)["sources"]
    assert [s["document"] for s in globex_sources] == ["travel-policy.md"]
    assert GLOBEX_MARKER in globex_sources[0]["text"]
    acme_ids = {s["chunk_id"] for s in acme_sources}
    assert not acme_ids & {s["chunk_id"] for s in globex_sources}


# --- session documents -----------------------------------------------------------------------


def session_documents_on_node(node: Node) -> int:
    count: int = node.health()["session_documents"]
    return count


def test_session_documents_are_searched_and_vanish_at_teardown(
    rag_node: Node, rag_tenants: RagTenants
) -> None:
    acme = rag_tenants.acme
    fact = "The project codename is BLUEHERON. Its launch date is the 12th of October."
    before = session_documents_on_node(rag_node)
    with rag_node.client(acme) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        r = c.post(f"/sessions/{sid}/documents", json={"name": "notes.md", "text": fact})
        assert r.status_code == 201, r.text
        assert r.json()["chunks"] == 1
        assert session_documents_on_node(rag_node) == before + 1
    reply = ask(
        rag_node.openai(acme),
        "What is the project codename?",
        extra_headers={"X-Sanctum-Session": sid},
    )
    sources = sanctum_of(reply)["sources"]
    assert sources[0] == {**sources[0], "session": sid, "document": "notes.md", "text": fact}
    # another session of the same client does not see it
    other = ask(rag_node.openai(acme), "What is the project codename?")
    assert "sources" not in sanctum_of(other)
    with rag_node.client(acme) as c:
        assert c.delete(f"/sessions/{sid}").status_code == 200
        assert session_documents_on_node(rag_node) == before
        r = c.post(f"/sessions/{sid}/documents", json={"name": "more.md", "text": fact})
        assert r.status_code == 404


def test_session_documents_combine_with_a_knowledge_base(
    rag_node: Node, rag_tenants: RagTenants
) -> None:
    with rag_node.client(rag_tenants.acme) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        c.post(
            f"/sessions/{sid}/documents",
            json={"name": "memo.txt", "text": "Our team's hotel budget this year is 99 euros."},
        )
    reply = ask(
        rag_node.openai(rag_tenants.acme),
        "What is the hotel limit per night?",
        {"knowledge_bases": ["handbook"], "top_k": 4},
        extra_headers={"X-Sanctum-Session": sid},
    )
    kinds = {
        ("session" if "session" in s else "kb", s["document"]) for s in sanctum_of(reply)["sources"]
    }
    assert ("session", "memo.txt") in kinds
    assert ("kb", "travel-policy.md") in kinds
    with rag_node.client(rag_tenants.acme) as c:
        c.delete(f"/sessions/{sid}")


def test_session_document_bad_input(rag_node: Node, rag_tenants: RagTenants) -> None:
    with rag_node.client(rag_tenants.acme) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        url = f"/sessions/{sid}/documents"
        r = c.post(url, json={"name": "a.md", "text": "  \n "})
        assert r.status_code == 400 and error_of(r)["param"] == "text"
        r = c.post(url, json={"name": "a.md", "text": "word " * 60_000})  # 300 KB
        assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"
        r = c.post(url, json={"name": "", "text": "fine"})
        assert r.status_code == 422
        r = c.post(url, json={"text": "fine"})
        assert r.status_code == 422
        r = c.post("/sessions/sess_nope/documents", json={"name": "a.md", "text": "fine"})
        assert r.status_code == 404
        for i in range(32):  # the most a session may hold
            r = c.post(url, json={"name": f"n{i}.md", "text": f"Note {i}."})
            assert r.status_code == 201, r.text
        r = c.post(url, json={"name": "one-more.md", "text": "Too many."})
        assert r.status_code == 409 and error_of(r)["param"] == "name"
        r = c.post(url, json={"name": "n3.md", "text": "Replaced."})  # same name: replaces
        assert r.status_code == 201 and r.json()["documents"] == 32
    with rag_node.client(rag_tenants.globex) as c:  # someone else's session
        r = c.post(url, json={"name": "a.md", "text": "fine"})
        assert r.status_code == 404
    with rag_node.client(rag_tenants.acme) as c:
        assert c.delete(f"/sessions/{sid}").status_code == 200


@pytest.mark.parametrize(
    ("sanctum", "param"),
    [
        ({"knowledge_bases": ["handbook"], "top_k": 0}, "sanctum.top_k"),
        ({"knowledge_bases": ["handbook"], "top_k": 17}, "sanctum.top_k"),
        ({"knowledge_bases": ["handbook"], "top_k": "many"}, "sanctum.top_k"),
        ({"knowledge_bases": "handbook"}, "sanctum.knowledge_bases"),
    ],
)
def test_bad_retrieval_options_are_422(
    rag_node: Node, rag_tenants: RagTenants, sanctum: dict[str, Any], param: str
) -> None:
    with rag_node.client(rag_tenants.acme) as c:
        r = c.post(
            "/chat/completions",
            json={
                "model": MODEL,
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "Hi"}],
                "sanctum": sanctum,
            },
        )
    assert r.status_code == 422, r.text
    assert error_of(r)["param"] == param


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_through_the_sdk(rag_node: Node, rag_tenants: RagTenants) -> None:
    client = rag_node.openai(rag_tenants.acme)
    assert EMBEDDING_MODEL in [m.id for m in client.models.list().data]
    one = client.embeddings.create(model=EMBEDDING_MODEL, input="The cat sat on the mat.")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert one.usage.prompt_tokens > 3
    many = client.embeddings.create(
        model=EMBEDDING_MODEL,
        input=["A kitten is sleeping on a rug.", "Quarterly tax filing deadlines."],
        encoding_format="float",
    )
    a = np.array(one.data[0].embedding)
    b, c = (np.array(d.embedding) for d in many.data)
    assert abs(np.linalg.norm(a) - 1) < 1e-3
    assert float(a @ b) > float(a @ c) + 0.2
    # base64 (what the SDK asks for by default) and float agree
    raw = httpx.post(
        f"{rag_node.api}/v1/embeddings",
        json={
            "model": EMBEDDING_MODEL,
            "input": "The cat sat on the mat.",
            "encoding_format": "base64",
        },
        headers={"Authorization": f"Bearer {rag_tenants.acme.key}"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, a, atol=1e-6)


def test_embeddings_need_permission_and_good_input(rag_node: Node, rag_tenants: RagTenants) -> None:
    globex = rag_node.openai(rag_tenants.globex)
    assert EMBEDDING_MODEL not in [m.id for m in globex.models.list().data]
    with pytest.raises(PermissionDeniedError):
        globex.embeddings.create(model=EMBEDDING_MODEL, input="hello")
    with rag_node.client(rag_tenants.acme) as c:
        cases = [
            ({"model": "text-embedding-3-small", "input": "hi"}, 404),
            ({"model": EMBEDDING_MODEL, "input": ""}, 400),
            ({"model": EMBEDDING_MODEL, "input": []}, 400),
            ({"model": EMBEDDING_MODEL, "input": [[1, 2, 10**6]]}, 400),  # not its tokenizer's
            ({"model": EMBEDDING_MODEL, "input": "hi", "dimensions": 128}, 400),
            ({"model": EMBEDDING_MODEL, "input": "word " * 400}, 400),
            ({"model": EMBEDDING_MODEL, "input": ["x"] * 300}, 400),
            ({"model": EMBEDDING_MODEL}, 422),
        ]
        for body, status in cases:
            r = c.post("/embeddings", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"]


# --- the management listener -----------------------------------------------------------------


def test_health_reports_the_knowledge_bases(rag_node: Node) -> None:
    health = rag_node.health()
    kbs = {(kb["client"], kb["name"]): kb for kb in health["knowledge_bases"]}
    assert kbs[("acme", "handbook")]["documents"] == 14
    assert kbs[("acme", "handbook")]["chunks"] >= 14
    assert kbs[("globex", "handbook")] == {
        "client": "globex",
        "name": "handbook",
        "documents": 1,
        "chunks": 1,
    }
    assert ("acme", "extra") not in kbs


def test_management_requests_must_be_signed_by_the_control_plane(rag_node: Node) -> None:
    base = f"{rag_node.management}/internal/knowledge-bases"
    doc = {"documents": [{"name": "x.md", "content": base64.b64encode(b"text").decode()}]}
    target = "/internal/knowledge-bases/acme/handbook/documents"
    # no signature, on every route, before the body is even looked at
    for method, url, body in [
        ("GET", base, None),
        ("GET", f"{base}/acme/handbook", None),
        ("POST", f"{base}/acme/handbook/documents", doc),
        ("POST", f"{base}/acme/handbook/documents", "not json"),
        ("DELETE", f"{base}/acme/handbook", None),
        ("DELETE", f"{base}/acme/handbook/documents?name=x.md", None),
    ]:
        r = httpx.request(method, url, json=body)
        assert r.status_code == 401, (method, url, r.text)
        assert error_of(r)["code"] == "invalid_signature"
    # signed by another key, or by the control plane's config key (not for requests)
    for key in (generate_private_key(), rag_node.cp_key):
        assert httpx.get(base, auth=SignedRequestAuth(key, "node-1")).status_code == 401
    mgmt = rag_node.keyring.signer(MANAGEMENT)

    def signed(method: str, path: str, body: bytes = b"", aud: str = "node-1") -> dict:
        return {"Authorization": authorization(mgmt, method, path, body, audience=aud)[0]}

    # a valid signature for another request (another path, another body, another node)
    r = httpx.delete(
        f"{base}/acme/handbook", headers=signed("DELETE", "/internal/knowledge-bases/acme/extra")
    )
    assert r.status_code == 401
    r = httpx.post(
        f"{rag_node.management}{target}", json=doc, headers=signed("POST", target, b"{}")
    )
    assert r.status_code == 401
    r = httpx.delete(
        f"{base}/acme/handbook", headers=signed("DELETE", f"{target[:-10]}", aud="node-2")
    )
    assert r.status_code == 401 and "another node" in r.text
    # replayed
    header = signed("GET", "/internal/knowledge-bases")
    assert httpx.get(base, headers=header).status_code == 200
    assert httpx.get(base, headers=header).status_code == 401
    # signed, but malformed
    with rag_node.management_client() as m:
        url = "/internal/knowledge-bases/acme/handbook/documents"
        for body, status in [
            ({"documents": []}, 422),
            ({"documents": [{"name": "x.md", "content": "not base64!"}]}, 422),
            ({"documents": [{"name": "", "content": "dGV4dA=="}]}, 422),
            ({"documents": [{"name": "x.md"}]}, 422),
        ]:
            r = m.post(url, json=body)
            assert r.status_code == status, (body, r.text)
        assert m.post(url, content=b"{not json").status_code == 400
        assert m.get("/internal/knowledge-bases/not a name/x").status_code in (404, 422)
        assert m.get("/internal/knowledge-bases/acme/missing").status_code == 404
    # and the knowledge base is untouched
    with rag_node.management_client() as m:
        assert m.get("/internal/knowledge-bases/acme/handbook").json()["documents"]


def test_logs_hold_ids_and_counts_not_content(rag_node: Node, rag_tenants: RagTenants) -> None:
    question = "Which LOGQUESTION4471 rules apply to the fleet?"
    fact = "The LOGFACT9902 depot opens at noon."
    with rag_node.client(rag_tenants.acme) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        c.post(f"/sessions/{sid}/documents", json={"name": "LOGNAME5514.md", "text": fact})
    reply = ask(
        rag_node.openai(rag_tenants.acme),
        question,
        {"knowledge_bases": ["handbook"], "top_k": 2},
        extra_headers={"X-Sanctum-Session": sid},
    )
    texts = [s["text"] for s in sanctum_of(reply)["sources"]]
    with rag_node.client(rag_tenants.acme) as c:
        c.delete(f"/sessions/{sid}")
    log = "".join(rag_node.output)
    assert f"retrieval session={sid}" in log
    for content in ["LOGQUESTION4471", "LOGFACT9902", "LOGNAME5514", *texts]:
        assert content not in log
