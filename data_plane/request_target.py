"""The target of a request exactly as its signer saw it: the raw path and query.

A signed management request binds ``METHOD path?query`` as the client sent it, before
any percent-decoding (``shared.signed_request``); the node's and the gateway's
listeners both check it against this.
"""

from __future__ import annotations

from starlette.requests import Request


def request_target(request: Request) -> str:
    target: bytes = request.scope.get("raw_path") or request.url.path.encode("ascii")
    query: bytes = request.scope.get("query_string", b"")
    if query:
        target += b"?" + query
    return target.decode("ascii", "replace")
