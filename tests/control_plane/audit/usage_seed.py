"""Seed an installation with a fortnight of signed, logged receipts, for the charts'
screenshots: ``python -m control_plane shell -c "from tests.control_plane.audit.usage_seed
import seed; seed()"``.

Records are signed with a node key made here and logged with ``ledger.append`` as
collection would log them after verifying them; ids and counts only, deterministic
(seeded random), dated relative to today so they fall in the charts' last 14 days; each
record holds its turns' times to first token, as a node signs them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

CLIENTS = {"acme": 1.0, "bank": 2.2, "clinic": 0.6}
# node: (typical one-shot seconds, spread; median time to first token in ms, and the
# chance a turn waits in the queue behind another client's, which makes the tail)
NODES = {
    "node-a": (1.2, 0.4, 90, 0.03),
    "node-b": (2.0, 0.9, 160, 0.08),
    "node-c": (3.5, 1.5, 320, 0.15),
}


def turn_times(rng: random.Random, turns: int, median_ms: float, queued: float) -> tuple[int, ...]:
    """Times to first token of a session's turns: log-normal around the node's median
    (a long prompt or a cold first turn costs more), a few queued behind other work."""
    times = []
    for turn in range(min(turns, 256)):
        ms = rng.lognormvariate(0, 0.35) * median_ms * (1.6 if turn == 0 else 1.0)
        if rng.random() < queued:
            ms += rng.uniform(200, 1200)
        times.append(max(1, round(ms)))
    return tuple(times)


def seed(days: int = 14) -> int:
    """Log the records; return how many."""
    from control_plane.audit.ledger import Verified, append
    from control_plane.clients.models import Client
    from shared.keys import generate_private_key, key_id, public_pem
    from shared.usage import UsageRecord, format_timestamp, new_record_id, sign_usage_record

    rng = random.Random(7)
    keys = {node: generate_private_key() for node in NODES}
    for slug in CLIENTS:
        if not Client.objects.filter(slug=slug).exists():
            client = Client(slug=slug, name=slug.title())
            client.full_clean()
            client.save()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    verified = []
    for day in range(days):
        midnight = today - timedelta(days=days - 1 - day)
        weekday_load = 0.5 if midnight.weekday() >= 5 else 1.0
        for client, weight in CLIENTS.items():
            for _ in range(max(1, round(rng.gauss(10, 3) * weight * weekday_load))):
                node = rng.choice(list(NODES))
                typical, spread, median_ms, queued = NODES[node]
                one_shot = rng.random() < 0.7
                seconds = max(0.2, rng.gauss(typical, spread)) if one_shot else rng.uniform(60, 900)
                ended = midnight + timedelta(seconds=rng.uniform(3600, 22 * 3600))
                requests = 1 if one_shot else rng.randint(2, 12)
                record = UsageRecord(
                    record_id=new_record_id(),
                    session_id=f"sess_{new_record_id().replace('-', '')}",
                    client_id=client,
                    node_id=node,
                    model="smollm2-135m-instruct",
                    model_version="q4_1",
                    model_sha256="ab" * 32,
                    started_at=format_timestamp(ended - timedelta(seconds=seconds)),
                    ended_at=format_timestamp(ended),
                    ended_by="one_shot" if one_shot else "teardown",
                    request_count=requests,
                    prompt_tokens=requests * rng.randint(80, 600),
                    completion_tokens=requests * rng.randint(20, 300),
                    first_token_ms=turn_times(rng, requests, median_ms, queued),
                )
                public = keys[node].public_key()
                verified.append(
                    Verified(
                        jws=sign_usage_record(record, keys[node]),
                        record=record,
                        node_key_id=key_id(public),
                        node_key_pem=public_pem(public).decode(),
                    )
                )
    verified.sort(key=lambda v: v.record.ended_at)
    return len(append(verified).appended)
