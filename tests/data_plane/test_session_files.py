"""Session documents sent as files (parsed in the node's parser process), their limits,
and the RAM caps on session documents per client and per node."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node
from tests.pdf import make_pdf

pytestmark = [pytest.mark.model, pytest.mark.embedder]

MODEL = DEFAULT_MODEL_NAME
FACT = "The vault combination is 4-8-15. It changes every Tuesday."


@pytest.fixture(scope="module")
def files_node(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec
) -> Iterator[tuple[Node, Tenant, Tenant]]:
    """A node whose session documents may take 450 KB per client and 650 KB in all, and
    whose parser reads files of up to 100 KB and PDFs of up to three pages."""
    node = new_node(
        tmp_path_factory.mktemp("files"),
        SANCTUM_DP_RETRIEVAL__MAX_PDF_PAGES="3",
        SANCTUM_DP_RETRIEVAL__MAX_SESSION_FILE_BYTES="100000",
        SANCTUM_DP_RETRIEVAL__SESSION_DOCUMENTS_CLIENT_BYTES=str(450_000),
        SANCTUM_DP_RETRIEVAL__SESSION_DOCUMENTS_NODE_BYTES=str(650_000),
    )
    limits = ClientLimits(max_sessions=8)
    a, b = make_tenant("a", (MODEL,), limits=limits), make_tenant("b", (MODEL,), limits=limits)
    node.start()
    node.push([model_spec], [a, b])
    yield node, a, b
    node.stop()


def _file(name: str, data: bytes) -> dict[str, str]:
    return {"name": name, "content": base64.b64encode(data).decode()}


def _error(r: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = r.json()["error"]
    return error


def test_a_pdf_session_document_is_parsed_and_searched(
    files_node: tuple[Node, Tenant, Tenant],
) -> None:
    node, a, _ = files_node
    with node.client(a) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        added = c.post(f"/sessions/{sid}/documents", json=_file("vault.pdf", make_pdf(FACT)))
        assert added.status_code == 201, added.text
        html = b"<html><body><h1>Parking</h1><p>Visitors park in bay C.</p></body></html>"
        assert c.post(f"/sessions/{sid}/documents", json=_file("p.html", html)).status_code == 201
        reply = c.post(
            "/chat/completions",
            json={
                "model": MODEL,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "What is the vault combination?"}],
            },
            headers={"X-Sanctum-Session": sid},
        )
        assert reply.status_code == 200, reply.text
        sources = reply.json()["sanctum"]["sources"]
        assert sources[0]["document"] == "vault.pdf" and "4-8-15" in sources[0]["text"]
        assert c.delete(f"/sessions/{sid}").status_code == 200


def test_files_that_cant_be_used_get_clear_errors(
    files_node: tuple[Node, Tenant, Tenant],
) -> None:
    node, a, _ = files_node
    with node.client(a) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        url = f"/sessions/{sid}/documents"
        pages = make_pdf("\n".join(f"line {i}" for i in range(46 * 5)))  # five pages
        cases = [
            (_file("long.pdf", pages), 413, "document_too_large", "5 pages; at most 3"),
            (_file("x.docx", b"PK\x03\x04"), 400, "unsupported_file_type", "unsupported"),
            (_file("broken.pdf", b"%PDF-1.4 " + FACT.encode()), 422, "unreadable_document", ""),
            (_file("empty.txt", b"   \n"), 400, "empty_document", ""),
            (_file("big.txt", b"a" * 150_000), 413, "payload_too_large", "at most 100000"),
        ]
        for body, status, code, names in cases:
            r = c.post(url, json=body)
            assert r.status_code == status, (body["name"], r.text)
            assert _error(r)["code"] == code and names in _error(r)["message"]
            assert FACT not in r.text and "4-8-15" not in r.text
        both = c.post(url, json={"name": "a.txt", "text": "x", "content": "eA=="})
        assert both.status_code == 422
        not_base64 = c.post(url, json={"name": "a.txt", "content": "%%%"})
        assert not_base64.status_code == 422
        assert c.delete(f"/sessions/{sid}").status_code == 200


def test_session_documents_stay_under_their_ram_caps(
    files_node: tuple[Node, Tenant, Tenant],
) -> None:
    """A 40,000-character document counts about 300 KB (chunk texts, and its vectors
    twice: the search matrix holds a copy): client a fits one, not two, under its
    450 KB; b's one and a smaller second (141 KB) would take the node past its 650 KB."""
    node, a, b = files_node
    words = " ".join(f"Paragraph {i} is about harbour number {i}." for i in range(3000))
    big, small = {"name": "d", "text": words[:40_000]}, {"name": "e", "text": words[:20_000]}
    with node.client(a) as ca, node.client(b) as cb:
        a1, a2 = (ca.post("/sessions", json={"model": MODEL}).json()["id"] for _ in range(2))
        b1 = cb.post("/sessions", json={"model": MODEL}).json()["id"]
        assert ca.post(f"/sessions/{a1}/documents", json=big).status_code == 201
        # the same name replaces: the one it replaces is not counted twice
        assert ca.post(f"/sessions/{a1}/documents", json=big).status_code == 201
        mine = ca.post(f"/sessions/{a2}/documents", json=big)
        assert mine.status_code == 429 and _error(mine)["code"] == "session_memory_full"
        assert "this client's session documents" in _error(mine)["message"]
        assert cb.post(f"/sessions/{b1}/documents", json=big).status_code == 201
        node_full = cb.post(f"/sessions/{b1}/documents", json=small)
        assert node_full.status_code == 429
        assert "this node's session documents" in _error(node_full)["message"]
        # ending a session gives its RAM back
        assert ca.delete(f"/sessions/{a1}").status_code == 200
        assert ca.post(f"/sessions/{a2}/documents", json=big).status_code == 201
        for c, sid in ((ca, a2), (cb, b1)):
            assert c.delete(f"/sessions/{sid}").status_code == 200
