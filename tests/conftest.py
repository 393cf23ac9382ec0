"""Fixtures shared by the whole suite: free ports, keys, and real data-plane processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import management
from shared.config import (
    ApiKeySpec,
    ClientLimits,
    ClientSpec,
    ConfigBundle,
    ModelSpec,
    file_sha256,
    new_api_key,
    sign_bundle,
)
from shared.keyring import Keyring, dev_keyring
from shared.keys import NODE, generate_private_key, load_public_key, write_key_pair
from shared.models import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    bundled_gguf_path,
)
from shared.signed_request import SignedRequestAuth, open_answer
from shared.trust import CONFIG, MANAGEMENT, TARGET_PURPOSES, TRUST_FILE, KeySet, TrustedKey
from shared.usage import USAGE_PATH, UsageRecord, open_usage_record

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that runs this checkout's code."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def model_spec() -> ModelSpec:
    return bundled_model_spec()


def bundled_model_spec() -> ModelSpec:
    """The pin of the bundled GGUF model, as tests and benchmarks push it to a node."""
    gguf = bundled_gguf_path()
    return ModelSpec(
        name=DEFAULT_MODEL_NAME,
        version=DEFAULT_MODEL_VERSION,
        sha256=file_sha256(str(gguf)),
        path=str(gguf),
        context_size=DEFAULT_CONTEXT_SIZE,
    )


def throwaway_trust() -> KeySet:
    """A trust set of fresh config and management keys, for releases nobody verifies."""
    return KeySet(
        keys=tuple(TrustedKey.of(generate_private_key().public_key(), p) for p in TARGET_PURPOSES)
    )


def release_fields(trust: KeySet | None = None, **over: Any) -> dict[str, Any]:
    """``issued_at``, ``expires_at`` (a day on) and ``trust`` of a release made now."""
    now = datetime.now(UTC)
    fields = {"issued_at": now, "expires_at": now + timedelta(days=1)}
    return {**fields, "trust": trust or throwaway_trust(), **over}


@dataclass
class Tenant:
    """A client of a test node, with its plain API key."""

    id: str
    key: str
    spec: ClientSpec


def make_tenant(client_id: str, models: tuple[str, ...], **kwargs: Any) -> Tenant:
    key, prefix, digest = new_api_key()
    spec = ClientSpec(
        id=client_id,
        name=client_id,
        api_keys=(ApiKeySpec(prefix=prefix, sha256=digest),),
        models=models,
        **kwargs,
    )
    return Tenant(client_id, key, spec)


@dataclass
class Node:
    """A real ``python -m data_plane serve`` process and its dev control-plane key."""

    data_dir: Path
    keys: Path
    api: str = ""
    management: str = ""
    metrics: str = ""  # the scrape URL, when SANCTUM_DP_METRICS__TOKEN_FILE is set
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    version: int = 0
    _pump: threading.Thread | None = None

    @property
    def keyring(self) -> Keyring:
        return dev_keyring(self.keys)

    @property
    def cp_key(self) -> Any:
        """The control plane's config key (signs bundles)."""
        return self.keyring.signer(CONFIG)

    def management_auth(self, audience: str = "node-1") -> SignedRequestAuth:
        return SignedRequestAuth(self.keyring.signer(MANAGEMENT), audience)

    def start(self, timeout: float = 120) -> None:
        api_port, mgmt_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "data_plane", "serve"],
            cwd=REPO,
            env=child_env(
                **{
                    "SANCTUM_DP_DATA_DIR": str(self.data_dir),
                    "SANCTUM_DP_NODE_ID": "node-1",
                    "SANCTUM_DP_TRUST_KEYS": str(self.keys / TRUST_FILE),
                    "SANCTUM_DP_NODE_PRIVATE_KEY": str(self.keys / f"{NODE}.key"),
                    "SANCTUM_DP_LISTEN__API_PORT": str(api_port),
                    "SANCTUM_DP_LISTEN__MANAGEMENT_PORT": str(mgmt_port),
                    **self.env,
                }
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if line.startswith("SANCTUM_DP_READY"):
                    parts = dict(p.split("=", 1) for p in line.split()[1:])
                    self.api, self.management = parts["api"], parts["management"]
                    self.metrics = parts.get("metrics", "")
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or not self.api:
            self.stop()
            raise RuntimeError("data plane did not start:\n" + "".join(self.output[-40:]))

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=10)  # the output holds every line the process wrote
        code = self.proc.returncode
        self.proc = None
        return code

    def bundle(self, models: list[ModelSpec], tenants: list[Tenant], **kwargs: Any) -> ConfigBundle:
        self.version = kwargs.pop("version", self.version + 1)
        now = datetime.now(UTC)
        return ConfigBundle(
            version=self.version,
            issued_at=kwargs.pop("issued_at", now),
            expires_at=kwargs.pop("expires_at", now + timedelta(days=1)),
            trust=kwargs.pop("trust", self.keyring.key_set(TARGET_PURPOSES)),
            node=kwargs.pop("node", "node-1"),
            models=tuple(models),
            clients=tuple(t.spec for t in tenants),
            **kwargs,
        )

    def put_config(self, token: str, auth: httpx.Auth | None = None) -> httpx.Response:
        return httpx.put(
            f"{self.management}{management.CONFIG_PATH}",
            content=token,
            headers={"Content-Type": management.JOSE},
            auth=auth or self.management_auth(),
            timeout=120,
        )

    def push(self, models: list[ModelSpec], tenants: list[Tenant]) -> httpx.Response:
        response = self.put_config(sign_bundle(self.bundle(models, tenants), self.cp_key))
        assert response.status_code == 200, response.text
        return response

    def client(self, tenant: Tenant, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.api}/v1",
            headers={"Authorization": f"Bearer {tenant.key}"},
            timeout=kwargs.pop("timeout", 120),
            **kwargs,
        )

    def openai(self, tenant: Tenant) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.api}/v1", api_key=tenant.key, max_retries=0)

    @property
    def node_public_key(self) -> Any:
        return load_public_key(self.keys / f"{NODE}.pub")

    def open_record(self, token: str) -> UsageRecord:
        """Verify a usage record against this node's public key (as the control plane will)."""
        return open_usage_record(token, {"node-1": self.node_public_key})

    def management_client(self, key: Any = None, audience: str = "node-1") -> httpx.Client:
        """A client for the management listener whose requests the control plane signed."""
        auth = SignedRequestAuth(key, audience) if key else self.management_auth(audience)
        return httpx.Client(base_url=self.management, auth=auth, timeout=60)

    def health(self) -> dict[str, Any]:
        """The node's health: a signed request, and the node's signed answer checked."""
        auth = self.management_auth()
        response = httpx.get(f"{self.management}{management.HEALTH_PATH}", auth=auth, timeout=30)
        assert response.status_code == 200, response.text
        assert auth.jti is not None
        return open_answer(
            response.content,
            self.node_public_key,
            nonce=auth.jti,
            audience=management.CONTROL_PLANE_AUDIENCE,
        )

    def usage(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Every unacknowledged record after ``after``, paging through the listing."""
        out: list[dict[str, Any]] = []
        with self.management_client() as m:
            while True:
                response = m.get(USAGE_PATH, params={"after": after, "limit": limit})
                assert response.status_code == 200, response.text
                page = response.json()
                out += page["records"]
                after = page["next"]
                if not page["more"]:
                    return out


def signed_health(
    management_url: str, keyring_dir: Path, audience: str, signer_public: Path
) -> dict[str, Any]:
    """A node's or gateway's health, asked as the control plane asks (signed with the
    management key of the keyring in ``keyring_dir``, for ``audience``) and checked
    against the target's public key file."""
    auth = SignedRequestAuth(Keyring(keyring_dir).signer(MANAGEMENT), audience)
    response = httpx.get(f"{management_url}{management.HEALTH_PATH}", auth=auth, timeout=60)
    assert response.status_code == 200, response.text
    return open_answer(
        response.content,
        load_public_key(signer_public),
        nonce=str(auth.jti),
        audience=management.CONTROL_PLANE_AUDIENCE,
    )


def new_node(tmp: Path, **env: str) -> Node:
    keys = tmp / "keys"
    dev_keyring(keys)
    if not (keys / f"{NODE}.key").exists():
        write_key_pair(keys, NODE)
    return Node(data_dir=tmp / "node", keys=keys, env=env)


@dataclass
class Tenants:
    alice: Tenant  # may use the model
    bob: Tenant  # may use the model too: a second, separate client
    carol: Tenant  # may use no model
    dave: Tenant  # at most 2 open sessions, 64 tokens a request


@pytest.fixture(scope="session")
def tenants() -> Tenants:
    return Tenants(
        alice=make_tenant("alice", (DEFAULT_MODEL_NAME,)),
        bob=make_tenant("bob", (DEFAULT_MODEL_NAME,)),
        carol=make_tenant("carol", ()),
        dave=make_tenant(
            "dave",
            (DEFAULT_MODEL_NAME,),
            limits=ClientLimits(max_sessions=2, max_tokens_per_request=64),
        ),
    )


@pytest.fixture(scope="session")
def node(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec, tenants: Tenants
) -> Iterator[Node]:
    """One running node with the model and the four tenants, shared by API tests."""
    n = new_node(tmp_path_factory.mktemp("node"))
    n.start()
    n.push([model_spec], [tenants.alice, tenants.bob, tenants.carol, tenants.dave])
    yield n
    n.stop()


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[Node]:
    """A node of the test's own (for config, restart and shutdown tests)."""
    n = new_node(tmp_path)
    yield n
    n.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    """The predicate's first truthy result within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return None


# --- retrieval -----------------------------------------------------------------------------

RAG_DATA = REPO / "tests" / "data" / "rag"
RAG_CORPUS = RAG_DATA / "corpus"


def ingest(node: Node, client_id: str, kb: str, files: dict[str, bytes]) -> dict[str, Any]:
    """Load ``files`` (name: bytes) into a knowledge base through the signed API."""
    import base64

    with node.management_client() as m:
        r = m.post(
            f"/internal/knowledge-bases/{client_id}/{kb}/documents",
            json={
                "documents": [
                    {"name": name, "content": base64.b64encode(data).decode()}
                    for name, data in files.items()
                ]
            },
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def corpus_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(RAG_CORPUS.iterdir())}


@dataclass
class RagTenants:
    acme: Tenant  # knowledge bases handbook (the test corpus) and extra; may embed
    globex: Tenant  # its own handbook and secrets; may not embed


# What only globex's knowledge bases say: acme must never see it.
GLOBEX_MARKER = "GLOBEXONLY7731"


@pytest.fixture(scope="session")
def rag_tenants() -> RagTenants:
    return RagTenants(
        acme=make_tenant(
            "acme", (DEFAULT_MODEL_NAME,), knowledge_bases=("handbook", "extra"), embeddings=True
        ),
        globex=make_tenant(
            "globex", (DEFAULT_MODEL_NAME,), knowledge_bases=("handbook", "secrets")
        ),
    )


@pytest.fixture(scope="session")
def rag_node(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec, rag_tenants: RagTenants
) -> Iterator[Node]:
    """A node with the model, two clients and their knowledge bases loaded: acme's
    handbook is the test corpus; globex has a handbook of its own (same document names,
    other facts) and a base named secrets."""
    n = new_node(tmp_path_factory.mktemp("rag-node"))
    n.start()
    n.push([model_spec], [rag_tenants.acme, rag_tenants.globex])
    ingest(n, "acme", "handbook", corpus_files())
    globex_travel = (
        "# Travel and expenses policy\n\n## Hotels\n\nAt Globex, hotel rooms on business trips "
        f"are capped at 95 euros per night, code {GLOBEX_MARKER}.\n"
    )
    ingest(n, "globex", "handbook", {"travel-policy.md": globex_travel.encode()})
    ingest(
        n,
        "globex",
        "secrets",
        {"plans.md": f"The merger with Initrode closes in May ({GLOBEX_MARKER}).".encode()},
    )
    yield n
    n.stop()
