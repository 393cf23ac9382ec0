"""End to end, with real processes (gunicorn, a Celery worker and beat over a real
redis-server, a real data-plane node): trust between the processes.

1. An admin revokes a key in the Django admin and nobody rolls out: the node turns the
   key away by itself. The time from the click to the first 401 is printed (the
   benchmark ``python -m tests.bench revocation`` measures it over several rounds).
2. Key rotation: ``sanctum keys rotate`` for the config and the log key. The control
   plane sends the next config key to the node, activates it once the node holds it,
   and the old key is accepted during the overlap and refused after it. Audit bundles
   downloaded before and after verify with ``sanctum verify`` and the published key set,
   and so does the receipt the client held from before.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.config import ConfigBundle, sign_bundle
from shared.keyring import KEYRING_DIR, Keyring
from shared.keys import load_private_key
from shared.management import CONFIG_PATH, JOSE
from shared.models import DEFAULT_MODEL_NAME
from shared.signed_request import SignedRequestAuth
from shared.trust import CONFIG, LOG, MANAGEMENT
from tests.conftest import REPO, child_env, wait_until
from tests.control_plane.processes import ControlPlane
from tests.control_plane.test_e2e_rollout import Installation, _set_up_client

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


# --- the admin's click ------------------------------------------------------------------


class AdminConsole:
    """A signed-in admin in the Django admin, as a browser would be (session and CSRF)."""

    def __init__(self, cp: ControlPlane, username: str, password: str) -> None:
        self.base = cp.admin_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=60, follow_redirects=True)
        form = self.http.get("/login/")
        self.http.post(
            "/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": _csrf(form.text),
                "next": "/admin/",
            },
        ).raise_for_status()
        assert "sessionid" in self.http.cookies, "admin login failed"

    def action(self, changelist: str, action: str, pk: int) -> httpx.Response:
        """Select one row of a changelist and run an action on it (the admin's click)."""
        page = self.http.get(changelist)
        return self.http.post(
            changelist,
            data={
                "action": action,
                "_selected_action": str(pk),
                "csrfmiddlewaretoken": _csrf(page.text),
                "index": "0",
            },
        )

    def close(self) -> None:
        self.http.close()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def _models_status(api_url: str, key: str) -> int:
    return httpx.get(
        f"{api_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).status_code


@dataclass
class Revocation:
    accepted_after: float  # issue (API) to the node accepting the key, seconds
    refused_after: float  # the admin's click to the node's first 401, seconds


def revoke_in_the_admin(inst: Installation, admin: AdminConsole, client: str) -> Revocation:
    """Issue a key through the API, wait for the node to take it (nobody rolls out),
    revoke it in the admin, and time the first 401."""
    started = time.monotonic()
    issued = inst.api.post("/api-keys/", json={"client": client, "name": "revocable"})
    assert issued.status_code == 201, issued.text
    key, key_id = issued.json()["key"], issued.json()["id"]
    accepted = wait_until(
        lambda: _models_status(inst.node.api_url, key) == 200 and time.monotonic(),
        timeout=60,
        interval=0.05,
    )
    assert accepted, "the node never accepted the key"
    clicked = time.monotonic()
    answer = admin.action("/clients/apikey/", "revoke", key_id)
    assert answer.status_code == 200 and "Revoked 1 key" in answer.text, answer.text[-2000:]
    refused = wait_until(
        lambda: _models_status(inst.node.api_url, key) == 401 and time.monotonic(),
        timeout=60,
        interval=0.05,
    )
    assert refused, "the node still takes the revoked key"
    return Revocation(accepted - started, refused - clicked)


def admin_console(cp: ControlPlane) -> AdminConsole:
    password = cp.manage("create_operator", "alice", "--role", "admin")["SANCTUM_OPERATOR_PASSWORD"]
    return AdminConsole(cp, "alice", password)


@pytest.fixture
def installation(redis_server, control_plane_factory, tmp_path):
    cp = control_plane_factory(
        redis_server.url,
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="1",
        # Beat's health poll must not be what brings the change: make it rare.
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="600",
        SANCTUM_CP_ROLLOUT__ON_CHANGE="true",
    )
    inst = Installation(cp, tmp_path)
    yield inst
    inst.close()


def test_a_key_revoked_in_the_admin_is_refused_by_the_node_with_no_manual_step(installation):
    inst = installation
    assert inst.api.post("/clients/", json={"id": "acme", "name": "Acme"}).status_code == 201
    admin = admin_console(inst.cp)
    try:
        measured = revoke_in_the_admin(inst, admin, "acme")
    finally:
        admin.close()
    print(
        f"\nrevoke to 401: {measured.refused_after:.2f} s "
        f"(issue to accepted: {measured.accepted_after:.2f} s)"
    )
    releases = inst.api.get("/releases/").json()
    rows = releases["results"] if isinstance(releases, dict) else releases
    assert len(rows) >= 2  # the issue and the revocation, each released on its own
    status = inst.node_status()
    assert status["rollout"] == "in_sync", status


# --- key rotation -----------------------------------------------------------------------


def _sanctum(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _session_receipt(inst: Installation, key: str) -> str:
    """One session with one chat, torn down; the node-signed record the client is handed."""
    with httpx.Client(
        base_url=f"{inst.node.api_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as c:
        session = c.post("/sessions", json={"model": DEFAULT_MODEL_NAME})
        assert session.status_code in (200, 201), session.text
        sid = session.json()["id"]
        chat = c.post(
            "/chat/completions",
            json={
                "model": DEFAULT_MODEL_NAME,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 2,
            },
            headers={"X-Sanctum-Session": sid},
        )
        assert chat.status_code == 200, chat.text
        ended = c.delete(f"/sessions/{sid}")
        assert ended.status_code == 200, ended.text
        return str(ended.json()["usage_record"])


def _audit_bundle(inst: Installation, receipts: int, out: Path) -> Path:
    def logged() -> bool:
        page = inst.api.get("/audit/receipts/", params={"client": "acme"}).json()
        return int(page["count"]) >= receipts

    assert wait_until(logged, timeout=120), "the receipts were not collected"
    bundle = inst.api.get("/audit/bundle/", params={"client": "acme"})
    assert bundle.status_code == 200, bundle.text
    out.write_bytes(bundle.content)
    return out


def _push_signed_by(inst: Installation, key_file: Path, ring: Keyring) -> httpx.Response:
    """Push the node its own saved bundle far above its version (the control plane keeps
    releasing meanwhile), signed with ``key_file``: what whoever kept an old config key
    could try. The push itself is a proper management request (that key did not rotate)."""
    saved = (inst.node_dir / "state" / "config.jws").read_text().split(".")[1]
    document = json.loads(_b64(saved))
    floor = int((inst.node_dir / "state" / "config.floor").read_text())
    forged = ConfigBundle.model_validate({**document, "version": floor + 1000})
    token = sign_bundle(forged, load_private_key(key_file))
    return httpx.put(
        f"{inst.node.management_url}{CONFIG_PATH}",
        content=token,
        headers={"Content-Type": JOSE},
        auth=SignedRequestAuth(ring.signer(MANAGEMENT), inst.node.name),
        timeout=60,
    )


def _b64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.model
def test_keys_rotate_with_an_overlap_and_receipts_from_before_and_after_verify(
    redis_server, control_plane_factory, tmp_path
):
    overlap = 35
    cp = control_plane_factory(
        redis_server.url,
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="1",
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="2",
        SANCTUM_CP_KEYS__CHECK_SECONDS="1",
        SANCTUM_CP_KEYS__OVERLAP_SECONDS=str(overlap),
        SANCTUM_CP_LEDGER__COLLECT_INTERVAL_SECONDS="1",
    )
    inst = Installation(cp, tmp_path)
    try:
        key, _ = _set_up_client(inst.api)  # the pin and the key release by themselves

        def serving() -> bool:
            models = httpx.get(
                f"{inst.node.api_url}/v1/models",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            return models.status_code == 200 and bool(models.json()["data"])

        assert wait_until(serving, timeout=180), inst.node_status()
        held_before = tmp_path / "held-before.jws"
        held_before.write_text(_session_receipt(inst, key))
        before = _audit_bundle(inst, 1, tmp_path / "before.json")

        keyring_dir = cp.data_dir / "keys" / KEYRING_DIR
        ring = Keyring(keyring_dir)
        old = ring.active(CONFIG)
        kept = tmp_path / "old-config.key"  # what an ex-operator might have kept
        kept.write_bytes((keyring_dir / old.file).read_bytes())
        kept.chmod(0o600)
        old_log = ring.active(LOG).kid
        for purpose in (CONFIG, LOG):
            result = _sanctum("keys", "rotate", "--keyring", str(keyring_dir), "--purpose", purpose)
            assert result.returncode == 0, result.stdout + result.stderr
        new = next(e for e in ring.entries() if e.purpose == CONFIG and e.state == "next")

        # The control plane sends the next key to the node, then lets it sign.
        assert wait_until(lambda: ring.active(CONFIG).kid == new.kid, timeout=90), ring.entries()
        retiring = next(e for e in ring.entries() if e.kid == old.kid and e.purpose == CONFIG)
        assert retiring.state == "retiring" and retiring.not_after is not None
        in_sync = wait_until(
            lambda: (
                (s := inst.node_status())["rollout"] == "in_sync"
                and s["latest_release"]["status"] == "applied"
                and s
            ),
            timeout=60,
        )
        assert in_sync, inst.node_status()
        # The node says so itself, in its signed health (the next poll, every 2 s).
        trusted = wait_until(
            lambda: new.kid in inst.node_status()["state"]["health"]["trusted_kids"],
            timeout=30,
        )
        assert trusted, inst.node_status()["state"]

        # During the overlap the old key is still trusted...
        assert time.time() < retiring.not_after - 3, "the overlap ran out before the check"
        during = _push_signed_by(inst, kept, ring)
        assert during.status_code == 200, during.text
        # ...and after it, refused, though nobody told the node anything.
        assert wait_until(lambda: time.time() > retiring.not_after + 1, timeout=overlap + 30)
        after = _push_signed_by(inst, kept, ring)
        assert after.status_code == 401, after.text
        assert after.json()["error"]["code"] == "bad_signature"
        # The control plane goes on releasing to it, signed by the new key.
        assert wait_until(lambda: not (keyring_dir / old.file).exists(), timeout=30)
        assert wait_until(lambda: inst.node_status()["rollout"] == "in_sync", timeout=60)

        _session_receipt(inst, key)
        after_bundle = _audit_bundle(inst, 2, tmp_path / "after.json")
        published = tmp_path / "control-plane-keys.json"
        published.write_text(json.dumps(inst.api.get("/keys/").json()))
        assert (
            len([k for k in json.loads(published.read_text())["keys"] if k["purpose"] == LOG]) == 2
        )
        for bundle in (before, after_bundle):
            checked = _sanctum("verify", "--log-key", str(published), str(bundle))
            assert checked.returncode == 0, checked.stdout + checked.stderr
        held = _sanctum(
            "verify", "--log-key", str(published), "--receipt", str(held_before), str(after_bundle)
        )
        assert held.returncode == 0, held.stdout + held.stderr
        manifests = [
            json.loads(b.read_text())["log_key"]["jwk"]["x"] for b in (before, after_bundle)
        ]
        assert manifests[0] != manifests[1]  # the two bundles were signed by the two log keys
        assert old_log in {k["kid"] for k in json.loads(published.read_text())["keys"]}
    finally:
        inst.close()
