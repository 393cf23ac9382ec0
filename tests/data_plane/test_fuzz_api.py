"""Schema-based fuzzing of both listeners of a real node (schemathesis, bounded).

Every operation of the client API and of the management API gets requests generated
from its OpenAPI document (explicit examples, boundary values, then random data), sent
to a real ``data_plane serve`` with the real model. Two properties hold for all of
them: no 5xx, and no error answer (4xx) that repeats a string the request carried. A
successful answer may carry what the caller sent by design (the model's name, a
document's name, an echoed prompt), so the echo check is on errors, which clients log.

Generation is derandomized (the same requests on every run) and bounded per operation,
so this runs in ``make test`` in about a minute.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from data_plane.app import CLIENT_ROUTERS, MANAGEMENT_ROUTERS
from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node

pytestmark = [pytest.mark.model, pytest.mark.embedder]

MODEL = DEFAULT_MODEL_NAME
EXAMPLES = 20  # per operation
# Values the node knows and may name in any answer: not an echo when a request has them.
KNOWN = {MODEL, "all-MiniLM-L6-v2", "fuzz", "node-1", "docs"}
# Where a bad field is (an error names ``header.X-Sanctum-Session``): not an echo.
KNOWN |= {"header", "query", "body", "path", "cookie"}


def _openapi(routers: tuple[Any, ...]) -> dict[str, Any]:
    routes = [route for router in routers for route in router.routes]
    return get_openapi(title="Sanctum data plane", version="1", routes=routes)


def _names(document: Any) -> Iterator[str]:
    """Every field and parameter name the API defines, and every value of its enums
    (a role, a tool choice): an error may name those."""
    if isinstance(document, dict):
        yield from document.get("properties", {})
        yield from (str(v) for v in document.get("enum", ()))
        if isinstance(document.get("const"), str):
            yield document["const"]
        if "in" in document and "name" in document:
            yield document["name"]
        for value in document.values():
            yield from _names(value)
    elif isinstance(document, list):
        for value in document:
            yield from _names(value)


CLIENT_OPENAPI, MANAGEMENT_OPENAPI = _openapi(CLIENT_ROUTERS), _openapi(MANAGEMENT_ROUTERS)
KNOWN |= {*_names(CLIENT_OPENAPI), *_names(MANAGEMENT_OPENAPI)}
# ...and the error envelope's own words.
VOCABULARY = KNOWN | {"message", "invalid_request_error", "invalid_parameter", "error"}
client_api = schemathesis.openapi.from_dict(CLIENT_OPENAPI)
management_api = schemathesis.openapi.from_dict(MANAGEMENT_OPENAPI)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz_node(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec
) -> Iterator[tuple[Node, Tenant]]:
    node = new_node(tmp_path_factory.mktemp("fuzz"))
    tenant = make_tenant(
        "fuzz",
        (MODEL,),
        embeddings=True,
        knowledge_bases=("docs",),
        limits=ClientLimits(max_sessions=64, max_tokens_per_request=8),
    )
    node.start()
    node.push([model_spec], [tenant])
    yield node, tenant
    node.stop()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def assert_no_echo(case: Any, sent: dict[str, Any], response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    carried = [
        *_strings(sent.get("json")),
        *_strings(list((case.query or {}).values())),
        *_strings(list((case.path_parameters or {}).values())),
        *_strings([v for k, v in (case.headers or {}).items() if k.lower().startswith("x-")]),
    ]
    text = response.text
    for s in carried:
        # A sent string inside the API's own words ("messag" of "message") says nothing
        # the API does not say anyway: only the rest would be an echo.
        if len(s.strip()) >= 6 and not any(s in word for word in VOCABULARY):
            assert s not in text, f"{case.method} {case.path}: the error repeats a sent string"
            assert json.dumps(s)[1:-1] not in text, "the error repeats a sent string (escaped)"


def _send(case: Any, base: str, headers: dict[str, str], auth: Any = None) -> httpx.Response:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    body = case.body if isinstance(case.body, dict) else None
    model = body.get("model") if body is not None else None
    if isinstance(model, str) and len(model) < 6 and zlib.crc32(repr(body).encode()) % 4:
        body["model"] = MODEL  # most short names become the real one, to reach the engine
    kwargs = case.as_transport_kwargs(base_url=base, headers=headers)
    kwargs.pop("cookies", None)
    if "data" in kwargs:
        kwargs["content"] = kwargs.pop("data")
    with httpx.Client(timeout=120, auth=auth) as http:
        response = http.request(**kwargs)
    case.validate_response(response, checks=[not_a_server_error])
    assert_no_echo(case, kwargs, response)
    return response


@client_api.parametrize()
@FUZZ
def test_client_api(case: Any, fuzz_node: tuple[Node, Tenant]) -> None:
    node, tenant = fuzz_node
    _send(case, node.api, {"Authorization": f"Bearer {tenant.key}"})


@management_api.parametrize()
@FUZZ
def test_management_api(case: Any, fuzz_node: tuple[Node, Tenant]) -> None:
    """Signed with the control plane's management key for this node, so the routes behind
    the signature check are reached too (a bad signature is its own test, in
    test_receipts, test_rag_api and test_config_apply).
    ``PUT /internal/config`` gets random bodies: never a signed bundle, always refused."""
    node, _ = fuzz_node
    _send(case, node.management, {}, auth=node.management_auth())
