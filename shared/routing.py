"""How a gateway finds the node that holds a session, from the session id alone.

A node names each session it opens ``sess_<route>_<random>``: ``route`` is a tag of the
node's name (:func:`route_tag`), ``random`` 128 bits from the OS. Every gateway knows
the tags of the nodes it fronts, so a continued session (``X-Sanctum-Session``) goes
to its node through any gateway, with no state shared between gateways. The tag says
which node, nothing else; it is no secret, and it opens no door: a gateway routes by it
only among the nodes of the peer's own pool, and a node answers only for the sessions
it holds, of the client that opened them.
"""

from __future__ import annotations

import hashlib
import re
import secrets

ROUTE_LENGTH = 12  # hex characters: 48 bits, no two nodes of a fleet share one
ROUTE_TAG = f"[0-9a-f]{{{ROUTE_LENGTH}}}"
"""A route tag as a regular expression (Python's and nginx's PCRE alike)."""
SESSION_ID = re.compile(rf"^sess_(?P<route>{ROUTE_TAG})_[0-9a-f]{{32}}$")


def route_tag(node: str) -> str:
    """The tag of node ``node``'s sessions."""
    digest = hashlib.sha256(b"sanctum-session-route\x00" + node.encode("utf-8")).hexdigest()
    return digest[:ROUTE_LENGTH]


def new_session_id(node: str) -> str:
    """A fresh session id for a session held by ``node``."""
    return f"sess_{route_tag(node)}_{secrets.token_hex(16)}"
