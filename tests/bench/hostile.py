"""What one client's expensive requests cost another: the other client's small chat
alone, and while each hostile request (tests/data_plane/hostile_requests.py) is in
flight, on one real node with the bundled model.

The small chat is alice's: four tokens, in a session with a document of its own (so its
query goes through the embedder). For each hostile request, ``ROUNDS`` times: alice's
chat alone, then mallory's request with alice's chat sent 50 ms after it. Target
(issue 11): under 1 s beside every one of them.

``python -m tests.bench hostile``; about two minutes.
"""

from __future__ import annotations

import time

from tests.bench import write_section
from tests.bench._node import median, running_node
from tests.data_plane.hostile_requests import HOSTILE, PARSE_TIMEOUT
from tests.data_plane.test_hostile import beside, start_bystander, tenants

ROUNDS = 3


def main() -> None:
    mallory, alice = tenants()
    rows = []
    alone_all: list[float] = []
    with running_node([mallory, alice], **PARSE_TIMEOUT) as node:
        bystander = start_bystander(node, mallory, alice)
        for _ in range(3):  # warm-up
            bystander.chat()
        for hostile in HOSTILE:
            alone, during, statuses = [], [], set()
            for _ in range(ROUNDS):
                started = time.monotonic()
                assert bystander.chat().status_code == 200
                alone.append(time.monotonic() - started)
                answer, theirs, took, _ = beside(bystander, hostile)
                assert theirs.status_code == 200
                during.append(took)
                statuses.add(answer.status_code)
            alone_all += alone
            rows.append(
                f"| {hostile.name} | {', '.join(map(str, sorted(statuses)))} | "
                f"{median(alone):.3f} s | {median(during):.3f} s | {max(during):.3f} s |"
            )
    worst = max(float(r.rsplit("|", 2)[-2].strip(" s")) for r in rows)
    body = f"""
## Hostile requests: another client's small chat beside each

Mallory sends each expensive but well-formed request; alice's four-token chat (in a
session with a document, so its query goes through the embedder too) is sent 50 ms
later, while mallory's is in flight. {ROUNDS} rounds each, alternating with alice's chat
alone (medians shown). `tests/bench/hostile.py`; the requests are in
`tests/data_plane/hostile_requests.py`.

| mallory's request | mallory got | alice alone | alice beside it | worst beside it |
|---|---|---:|---:|---:|
{chr(10).join(rows)}

Alice alone over all rounds: median {median(alone_all):.3f} s. Worst beside any hostile
request: **{worst:.3f} s** (target: under 1 s). Before the limits and the fair queues,
the 25,000-message request held the node for about 8 s (issue 11).
"""
    print(body)
    write_section("hostile", body)
