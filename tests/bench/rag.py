"""Retrieval benchmark: ingestion, retrieval latency, and what retrieval adds to a chat.

Runs a node's runtime in this process (the real embedder, Qdrant local mode, the bundled
model, the same services the HTTP routes call), each comparison side by side in one run:

- ingestion: chunks/s of the ingest use case (parse, chunk, embed, write to Qdrant)
  against plain ``SentenceTransformer.encode`` of the very same chunk texts, with the
  same model object and threads (target: at least 0.8 of it);
- retrieval latency over a knowledge base of 10,000 chunks: query embedding plus search,
  and the search alone, p50/p95;
- time to first token of a one-shot chat with retrieval (top_k 4) against the same chat
  without it. Two baselines: the bare question (the difference includes reading the
  injected sources, which is the model's work), and the very prompt retrieval built,
  sent without retrieval (the difference is retrieval's own cost: embedding, search,
  assembly; target: at most 30 ms p50).

``python -m tests.bench rag``; a few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from data_plane.protocol import ChatCompletionRequest
from data_plane.rag.chunking import Chunk
from data_plane.rag.parsing import parse_document
from data_plane.rag.store import DocumentRecord, document_id
from data_plane.runtime import Runtime
from data_plane.services.inference import InferenceService
from data_plane.services.knowledge_bases import IngestFile, KnowledgeBaseService
from data_plane.services.retrieval import RetrievalService
from data_plane.settings import ListenSettings, Settings
from shared.config import (
    ApiKeySpec,
    ClientSpec,
    ConfigBundle,
    ModelSpec,
    file_sha256,
    new_api_key,
    sign_bundle,
)
from shared.keyring import dev_keyring
from shared.models import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    bundled_gguf_path,
)
from shared.trust import CONFIG, TARGET_PURPOSES, TRUST_FILE
from tests.bench import write_section
from tests.conftest import release_fields

CORPUS = Path(__file__).resolve().parents[1] / "data" / "rag" / "corpus"
INGEST_COPIES = 8  # the test corpus, eight times over (distinct documents): ~260 chunks
INGEST_ROUNDS = 2
BIG_KB_CHUNKS = 10_000
LATENCY_QUERIES = 200
TTFT_ROUNDS = 15
QUESTIONS = [
    "How much is the hotel limit per night for business trips?",
    "How long is the probation period?",
    "Which VPN do I use when working from home?",
    "How many trucks does the company have?",
    "What code is printed on the return labels?",
]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def build_runtime(tmp: Path) -> tuple[Runtime, ClientSpec]:
    keys = tmp / "keys"
    ring = dev_keyring(keys)
    key = ring.signer(CONFIG)
    settings = Settings(
        data_dir=tmp / "node",
        trust_keys=keys / TRUST_FILE,
        listen=ListenSettings(),
    )
    runtime = Runtime(settings)
    await runtime.start()
    gguf = bundled_gguf_path()
    _, prefix, digest = new_api_key()
    client = ClientSpec(
        id="bench",
        api_keys=(ApiKeySpec(prefix=prefix, sha256=digest),),
        models=(DEFAULT_MODEL_NAME,),
        knowledge_bases=("corpus", "big"),
    )
    bundle = ConfigBundle(
        version=1,
        **release_fields(ring.key_set(TARGET_PURPOSES)),
        node=settings.node_id,
        models=(
            ModelSpec(
                name=DEFAULT_MODEL_NAME,
                version=DEFAULT_MODEL_VERSION,
                sha256=file_sha256(str(gguf)),
                path=str(gguf),
                context_size=DEFAULT_CONTEXT_SIZE,
            ),
        ),
        clients=(client,),
    )
    await runtime.apply_config(sign_bundle(bundle, key))
    return runtime, client


def corpus_copies(copies: int, tag: str) -> list[IngestFile]:
    files = []
    for n in range(copies):
        for path in sorted(CORPUS.iterdir()):
            data = path.read_bytes()
            if path.suffix != ".pdf":  # distinct content, so nothing is "unchanged"
                data += f"\n\nRevision {tag}-{n}.\n".encode()
            files.append(IngestFile(name=f"{tag}{n}/{path.name}", data=data))
    return files


async def bench_ingestion(runtime: Runtime) -> tuple[str, float]:
    assert runtime.retrieval is not None
    service = KnowledgeBaseService(runtime)
    embedder, chunker = runtime.retrieval.embedder, runtime.retrieval.chunker
    pipeline: list[float] = []
    plain: list[float] = []
    chunks = 0
    for round_ in range(INGEST_ROUNDS):
        files = corpus_copies(INGEST_COPIES, f"r{round_}")
        texts = [c.text for f in files for c in chunker.split(parse_document(f.name, f.data))]
        chunks = len(texts)

        def encode_plain(texts: list[str] = texts) -> None:
            # on the embedder's thread, with the torch threads ingestion gets
            embedder.set_threads(embedder.threads)
            embedder.model.encode(
                texts,
                batch_size=embedder.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )

        started = time.perf_counter()
        await embedder.run(encode_plain)
        plain.append(chunks / (time.perf_counter() - started))
        started = time.perf_counter()
        outcomes = await service.ingest("bench", f"ingest{round_}", files)
        pipeline.append(chunks / (time.perf_counter() - started))
        assert sum(o.chunks for o in outcomes) == chunks
    ratio = max(pipeline) / max(plain)
    table = (
        f"{chunks} chunks ({len(corpus_copies(INGEST_COPIES, 'x'))} documents), best of "
        f"{INGEST_ROUNDS}, alternating:\n\n"
        "| | chunks/s |\n|---|---|\n"
        f"| plain `SentenceTransformer.encode` | {max(plain):.1f} |\n"
        f"| ingest (parse, chunk, embed, write to Qdrant) | {max(pipeline):.1f} |\n"
        f"| ratio (target >= 0.8) | **{ratio:.2f}** |\n"
    )
    return table, ratio


async def big_knowledge_base(runtime: Runtime) -> None:
    """10,000 short, distinct chunks in 100 documents of the knowledge base ``big``."""
    assert runtime.retrieval is not None
    store, embedder = runtime.retrieval.store, runtime.retrieval.embedder
    subjects = ["invoice", "truck", "badge", "laptop", "pallet", "refund", "route", "shift"]
    verbs = ["is checked", "is renewed", "is approved", "is archived", "is replaced"]
    for d in range(BIG_KB_CHUNKS // 100):
        chunks = [
            Chunk(
                index=i,
                text=f"Rule {d}.{i}: each {subjects[(d + i) % 8]} of depot {d % 17} "
                f"{verbs[i % 5]} every {i % 11 + 1} weeks by team {i % 23}.",
                tokens=0,
            )
            for i in range(100)
        ]
        vectors = await embedder.embed([c.text for c in chunks])
        name = f"rules-{d}.md"
        record = DocumentRecord(
            client_id="bench",
            knowledge_base="big",
            document=name,
            document_id=document_id("bench", "big", name),
            sha256=str(d),
            chunker="bench",
            chunks=len(chunks),
            bytes=0,
            updated_at="-",
        )
        await store.put_document(record, chunks, vectors)


async def bench_latency(runtime: Runtime, client: ClientSpec) -> str:
    assert runtime.retrieval is not None
    service = RetrievalService(runtime)
    session = await InferenceService(runtime).open_session(client, DEFAULT_MODEL_NAME, None)
    store, embedder = runtime.retrieval.store, runtime.retrieval.embedder
    total: list[float] = []
    search: list[float] = []
    for i in range(LATENCY_QUERIES):
        question = f"{QUESTIONS[i % len(QUESTIONS)]} (depot {i % 17})"
        started = time.perf_counter()
        await service.retrieve(client, session, ["big"], question, 4)
        total.append(time.perf_counter() - started)
        vector = await embedder.embed_query(question)
        started = time.perf_counter()
        await store.search(client.id, ["big"], vector, 4)
        search.append(time.perf_counter() - started)
    await runtime.sessions.end(session, "teardown")
    [big] = [kb for kb in await store.knowledge_bases("bench") if kb.name == "big"]
    return (
        f"{big.chunks} chunks in one knowledge base, {LATENCY_QUERIES} queries, top_k 4, "
        "Qdrant local mode:\n\n"
        "| | p50 | p95 |\n|---|---|---|\n"
        f"| retrieval (embed the query, search) | {ms(statistics.median(total))} "
        f"| {ms(percentile(total, 95))} |\n"
        f"| search alone | {ms(statistics.median(search))} | {ms(percentile(search, 95))} |\n"
    )


async def ttft(
    inference: InferenceService, client: ClientSpec, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    req = ChatCompletionRequest.model_validate(
        {"model": DEFAULT_MODEL_NAME, "max_tokens": 1, "temperature": 0, **body}
    )
    started = time.perf_counter()
    turn = await inference.start_chat(client, req, None)
    first = None
    async for _ in turn.chunks():
        first = first or time.perf_counter()
    await inference.finish(turn)
    return (first or time.perf_counter()) - started, turn.extra


async def bench_ttft(runtime: Runtime, client: ClientSpec, kb: str) -> tuple[str, float]:
    inference = InferenceService(runtime)
    retrieval = RetrievalService(runtime)
    inference.context_assemblers.append(retrieval.assemble)
    plain = InferenceService(runtime)  # the same model, no assembler
    bare: list[float] = []
    with_rag: list[float] = []
    same_prompt: list[float] = []
    step: list[float] = []
    sources = 0
    await ttft(plain, client, {"messages": [{"role": "user", "content": "Warm up."}]})
    for i in range(TTFT_ROUNDS):
        question = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        bare.append((await ttft(plain, client, {"messages": question}))[0])
        seconds, extra = await ttft(
            inference, client, {"messages": question, "sanctum": {"knowledge_bases": [kb]}}
        )
        with_rag.append(seconds)
        sources = len(extra.get("sources", []))
        # the prompt retrieval built, sent as is without retrieval
        session = await inference.open_session(client, DEFAULT_MODEL_NAME, None, one_shot=True)
        req = ChatCompletionRequest.model_validate(
            {
                "model": DEFAULT_MODEL_NAME,
                "messages": question,
                "sanctum": {"knowledge_bases": [kb]},
            }
        )
        started = time.perf_counter()
        built, _ = await retrieval.assemble(client, session, req, question, session.engine)
        step.append(time.perf_counter() - started)
        await runtime.sessions.end(session, "one_shot")
        same_prompt.append((await ttft(plain, client, {"messages": built}))[0])
    p50 = statistics.median
    added = p50(with_rag) - p50(same_prompt)
    table = (
        f"knowledge base `{kb}`, top_k 4 ({sources} sources injected), one-shot chats, "
        f"{TTFT_ROUNDS} rounds each, alternating:\n\n"
        "| time to first token | p50 | p95 |\n|---|---|---|\n"
        f"| bare question, no retrieval | {ms(p50(bare))} | {ms(percentile(bare, 95))} |\n"
        f"| the prompt retrieval builds, sent without retrieval | {ms(p50(same_prompt))} "
        f"| {ms(percentile(same_prompt, 95))} |\n"
        f"| with retrieval | {ms(p50(with_rag))} | {ms(percentile(with_rag, 95))} |\n"
        f"| **added by retrieval itself**: with retrieval - the same prompt without "
        f"(target <= 30 ms p50) | **{ms(added)}** | |\n"
        f"| the retrieval step alone (embed the query, search, fit the sources), timed "
        f"directly | {ms(p50(step))} | {ms(percentile(step, 95))} |\n"
        f"| added over the bare question (includes the model reading the sources) "
        f"| {ms(p50(with_rag) - p50(bare))} | |\n"
    )
    return table, added


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (5 min: {five:.1f})"


async def run() -> str:
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="sanctum-bench-rag-") as tmp:
        runtime, client = await build_runtime(Path(tmp))
        try:
            started = time.monotonic()
            ingestion, _ = await bench_ingestion(runtime)
            service = KnowledgeBaseService(runtime)
            await service.ingest(
                "bench",
                "corpus",
                [IngestFile(p.name, p.read_bytes()) for p in sorted(CORPUS.iterdir())],
            )
            ttft_small, _ = await bench_ttft(runtime, client, "corpus")
            await big_knowledge_base(runtime)
            latency = await bench_latency(runtime, client)
            ttft_big, _ = await bench_ttft(runtime, client, "big")
            print(f"rag benchmark took {time.monotonic() - started:.0f} s", flush=True)
        finally:
            await runtime.stop()
    return (
        "### Ingestion\n\n" + ingestion + "\n### Retrieval latency\n\n" + latency
        + "\n### Time to first token\n\n" + ttft_small + "\n" + ttft_big
        + "\nThe embedder ingests on one torch thread (`SANCTUM_DP_RETRIEVAL__EMBEDDER_THREADS`) "
        "and embeds a chat's query on every core (`..._EMBEDDER_QUERY_THREADS`); llama.cpp has "
        "the cores it is configured with. Load average at the start: "
        f"{load_before}, at the end: {load()}; on a loaded machine the differences of "
        "two times to first token are noise, and the directly timed retrieval step is the "
        "figure to read.\n"
    )  # fmt: skip


def main() -> None:
    body = asyncio.run(run())
    print(body)
    write_section("rag", "## Retrieval (RAG)\n\n" + body)
