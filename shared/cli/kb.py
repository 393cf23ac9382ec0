"""``sanctum kb``: load, list and delete a client's knowledge bases, through the control plane.

Talks to the control plane's REST API with an operator's API token (``Authorization:
Token ...``), never with a signing key: the control plane sends the files to every node
that serves the client, signed with its own key, and keeps their names, sizes, hashes and
chunk counts (never their content). The CLI reads files and sends their bytes and names;
the nodes parse them. A file that can't be used is named with its reason and skipped
while the rest loads; a node that can't be reached is named too. The exit status is
non-zero only when nothing usable was loaded or on a real error (the control plane
unreachable, the token refused, a node not reached).

Where the control plane and the token come from, first match wins:
  control plane: ``--control-plane URL``, ``$SANCTUM_CONTROL_PLANE_URL``, http://127.0.0.1:8100
  token:         ``--token TOKEN``, ``$SANCTUM_TOKEN`` (an admin operator's API token)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

DEFAULT_CONTROL_PLANE = "http://127.0.0.1:8100"
BATCH_FILES = 64
# Room for the multipart framing around each file (boundary, headers, its name field).
PART_OVERHEAD = 1024
TIMEOUT = 900  # the control plane answers once every node has embedded the batch
CREDENTIAL_HELP = (
    "an operator's API token: --token or $SANCTUM_TOKEN "
    "(python -m control_plane create_operator NAME --role admin --token)"
)


class KbError(Exception):
    """A real error: the control plane could not be used, or a node was not reached."""


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--control-plane",
        default=None,
        metavar="URL",
        help="the control plane's URL (default: $SANCTUM_CONTROL_PLANE_URL or "
        f"{DEFAULT_CONTROL_PLANE})",
    )
    common.add_argument(
        "--token",
        default=None,
        help="an admin operator's API token (default: $SANCTUM_TOKEN)",
    )

    kb = subparsers.add_parser(
        "kb", help="load, list and delete clients' knowledge bases (through the control plane)"
    )
    actions = kb.add_subparsers(dest="kb_action", required=True, metavar="ACTION")

    ingest = actions.add_parser(
        "ingest",
        parents=[common],
        help="load files or folders (.txt, .md, .html, .pdf) into a knowledge base "
        "(made if it does not exist)",
    )
    ingest.add_argument("--client", required=True, help="the client the knowledge base is for")
    ingest.add_argument("--kb", required=True, help="the knowledge base's name")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=run_ingest)

    listing = actions.add_parser("list", parents=[common], help="the clients' knowledge bases")
    listing.add_argument("--client", default=None, help="only this client's")
    listing.add_argument("--documents", action="store_true", help="list each document too")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)

    delete = actions.add_parser(
        "delete", parents=[common], help="delete a knowledge base, or one document of it"
    )
    delete.add_argument("--client", required=True)
    delete.add_argument("--kb", required=True)
    delete.add_argument("--document", default=None, help="delete only this document")
    delete.set_defaults(func=run_delete)


# --- talking to the control plane ----------------------------------------------------------


def api_url(args: argparse.Namespace) -> str:
    """The REST API's base: the control plane's URL with or without its ``/api``."""
    url = args.control_plane or os.environ.get("SANCTUM_CONTROL_PLANE_URL") or DEFAULT_CONTROL_PLANE
    return str(url).rstrip("/").removesuffix("/api") + "/api"


def connect(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("SANCTUM_TOKEN")
    if not token:
        raise KbError(f"no token: {CREDENTIAL_HELP}")
    return httpx.Client(
        base_url=api_url(args), headers={"Authorization": f"Token {token}"}, timeout=TIMEOUT
    )


def call(
    client: httpx.Client, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any
) -> Any:
    """One API request; its JSON answer, or KbError naming what went wrong. Statuses in
    ``ok`` (besides 2xx) are answers to read, not errors."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise KbError(
            f"can't reach the control plane at {client.base_url} "
            f"({type(exc).__name__}; --control-plane or $SANCTUM_CONTROL_PLANE_URL)"
        ) from None
    if response.status_code == 401:
        raise KbError(f"the control plane answered 401: {_message(response)} ({CREDENTIAL_HELP})")
    if response.status_code == 403:
        raise KbError(
            f"the control plane answered 403: {_message(response)} "
            "(loading and deleting needs an admin operator's token)"
        )
    if response.status_code >= 400 and response.status_code not in ok:
        raise KbError(f"the control plane answered {response.status_code}: {_message(response)}")
    if response.status_code == 204:
        return {}
    return response.json()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body, separators=(",", ":"))[:500]


def fail(exc: KbError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def find_kb(client: httpx.Client, client_id: str, name: str) -> dict[str, Any] | None:
    found = call(client, "GET", "/knowledge-bases/", params={"client": client_id, "name": name})
    results: list[dict[str, Any]] = found["results"]
    return results[0] if results else None


def node_failures(answer: dict[str, Any]) -> list[str]:
    """One line per node that did not answer, as the control plane reported it."""
    return [
        f"{n['node']}: {n.get('error') or n['status']}"
        for n in answer.get("nodes", [])
        if n.get("status") != "ok"
    ]


# --- ingest ------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str  # the document's name in the knowledge base
    path: Path
    size: int


def collect(paths: list[Path]) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Files under ``paths`` (hidden ones left out) and the paths that are not there.

    A file given by itself is named by its file name; a file in a folder by its path
    relative to that folder.
    """
    found: list[Candidate] = []
    missing: list[tuple[str, str]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(_walk(path)):
                found.append(Candidate(file.relative_to(path).as_posix(), file, _size(file)))
        elif path.is_file():
            found.append(Candidate(path.name, path, _size(path)))
        else:
            missing.append((str(path), "no such file or folder"))
    return found, missing


def _walk(folder: Path) -> Iterator[Path]:
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _batches(files: list[Candidate], limit: int, max_files: int) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    size = 0
    for file in files:
        cost = file.size + PART_OVERHEAD + len(file.name.encode())
        if batch and (size + cost > limit or len(batch) >= max_files):
            yield batch
            batch, size = [], 0
        batch.append(file)
        size += cost
    if batch:
        yield batch


def _chunks(n: int) -> str:
    return f"{n} chunk" if n == 1 else f"{n} chunks"


def _line(status: str, name: str, detail: str = "") -> str:
    return f"{status:<10} {name}{detail}"


def run_ingest(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            return _ingest(args, client)
    except KbError as exc:
        return fail(exc)


def _ingest(args: argparse.Namespace, client: httpx.Client) -> int:
    kb = find_kb(client, args.client, args.kb)
    if kb is None:
        kb = call(
            client, "POST", "/knowledge-bases/", json={"client": args.client, "name": args.kb}
        )
        print(f"created knowledge base {args.client}/{args.kb}", file=sys.stderr)
    limits = call(client, "GET", "/knowledge-bases/limits/", params={"client": args.client})
    known_types = limits.get("file_types")
    file_types = {t.lower() for t in known_types} if known_types is not None else None
    max_request = int(limits["max_request_bytes"])
    max_files = max(1, min(BATCH_FILES, int(limits.get("max_files") or BATCH_FILES)))
    max_document = limits.get("max_document_bytes")
    # One file must fit one upload with its framing.
    most = max_request - PART_OVERHEAD - 4096
    if max_document is not None:
        most = min(most, int(max_document))

    found, missing = collect(args.paths)
    counts = {"ingested": 0, "unchanged": 0, "skipped": 0}
    chunks = 0
    unreached: dict[str, str] = {}

    def report(status: str, name: str, detail: str = "") -> None:
        counts[status if status in counts else "skipped"] += 1
        tqdm.write(_line(status, name, detail), file=sys.stdout)

    for name, reason in missing:
        report("skipped", name, f": {reason}")
    send: list[Candidate] = []
    names: dict[str, Path] = {}
    for file in found:
        suffix = Path(file.name).suffix.lower()
        if file_types is not None and suffix not in file_types:
            shown = suffix or "no extension"
            report("skipped", file.name, f": unsupported file type ({shown})")
        elif file.size > most:
            report("skipped", file.name, f": too large ({file.size} bytes; at most {most})")
        elif file.name in names:
            report("skipped", file.name, f": same name as {names[file.name]}")
        else:
            names[file.name] = file.path
            send.append(file)

    with tqdm(
        total=sum(f.size for f in send),
        unit="B",
        unit_scale=True,
        desc=f"{args.client}/{args.kb}",
        disable=args.no_progress or not send,
        file=sys.stderr,
    ) as bar:
        for batch in _batches(send, max_request - 4096, max_files):
            # One "file" part per document, and a "name" part each, in the same order: a
            # part's file name loses its folders on the way, the name keeps them.
            parts: list[tuple[str, tuple[str, bytes]]] = []
            sent: list[str] = []
            for file in batch:
                try:
                    data = file.path.read_bytes()
                except OSError as exc:
                    report("skipped", file.name, f": unreadable ({type(exc).__name__})")
                    bar.update(file.size)
                    continue
                parts.append(("file", (Path(file.name).name, data)))
                sent.append(file.name)
            if not parts:
                continue
            answer = call(
                client,
                "POST",
                f"/knowledge-bases/{kb['id']}/documents/",
                ok=(502,),
                files=parts,
                data={"name": sent},
            )
            for line in node_failures(answer):
                node, _, error = line.partition(": ")
                unreached.setdefault(node, error)
            for result in answer["results"]:
                status, n = result["status"], int(result.get("chunks", 0))
                if status == "ingested":
                    chunks += n
                    report(status, result["name"], f" ({_chunks(n)})")
                elif status == "unchanged":
                    report(status, result["name"])
                else:
                    report("skipped", result["name"], f": {result.get('reason', 'not usable')}")
            bar.update(sum(f.size for f in batch))

    print(
        f"{args.client}/{args.kb}: {counts['ingested']} ingested ({_chunks(chunks)}), "
        f"{counts['unchanged']} unchanged, {counts['skipped']} skipped"
    )
    for node, error in unreached.items():
        print(
            f"error: node {node} not reached ({error}); load again when it is back", file=sys.stderr
        )
    if counts["ingested"] + counts["unchanged"] == 0:
        print("error: nothing usable was loaded", file=sys.stderr)
        return 1
    return 1 if unreached else 0


# --- list and delete ---------------------------------------------------------------------


def _all_knowledge_bases(client: httpx.Client, client_id: str | None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 1000, "offset": 0}
    if client_id:
        params["client"] = client_id
    found: list[dict[str, Any]] = []
    while True:
        page = call(client, "GET", "/knowledge-bases/", params=params)
        found += page["results"]
        if not page.get("next"):
            return found
        params["offset"] += len(page["results"])


def run_list(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            kbs = [
                {
                    "client": kb["client"],
                    "name": kb["name"],
                    "documents": kb["document_count"],
                    "chunks": kb["chunk_count"],
                    "bytes": kb["byte_count"],
                    "id": kb["id"],
                }
                for kb in _all_knowledge_bases(client, args.client)
            ]
            if args.documents:
                for kb in kbs:
                    detail = call(client, "GET", f"/knowledge-bases/{kb['id']}/")
                    kb["documents_list"] = [
                        {
                            "name": d["name"],
                            "bytes": d["bytes"],
                            "chunks": d["chunks"],
                            "sha256": d["sha256"],
                            "loaded_at": d["loaded_at"],
                            "nodes": {c["node"]: c["status"] for c in d["copies"]},
                        }
                        for d in detail["documents"]
                    ]
    except KbError as exc:
        return fail(exc)
    if args.json:
        print(json.dumps(kbs, indent=2))
        return 0
    if not kbs:
        print("no knowledge bases")
        return 0
    rows = [("CLIENT", "KNOWLEDGE BASE", "DOCUMENTS", "CHUNKS")]
    rows += [(kb["client"], kb["name"], str(kb["documents"]), str(kb["chunks"])) for kb in kbs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i and args.documents:
            for doc in kbs[i - 1]["documents_list"]:
                nodes = ", ".join(f"{node}: {status}" for node, status in doc["nodes"].items())
                print(
                    f"    {doc['name']}  ({_chunks(doc['chunks'])}, {doc['bytes']} bytes; {nodes})"
                )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    where = f"{args.client}/{args.kb}"
    try:
        with connect(args) as client:
            kb = find_kb(client, args.client, args.kb)
            if kb is None:
                raise KbError(f"the control plane has no knowledge base {where} (404)")
            if args.document:
                found = call(
                    client,
                    "GET",
                    "/knowledge-documents/",
                    params={"knowledge_base": kb["id"], "name": args.document},
                )["results"]
                if not found:
                    raise KbError(f"{where} has no document {args.document} (404)")
                doc = found[0]
                answer = call(client, "DELETE", f"/knowledge-documents/{doc['id']}/", ok=(502,))
                done = f"deleted {doc['name']} ({_chunks(doc['chunks'])}) from {where}"
            else:
                answer = call(client, "DELETE", f"/knowledge-bases/{kb['id']}/", ok=(502,))
                done = (
                    f"deleted {where} ({kb['document_count']} documents, "
                    f"{_chunks(kb['chunk_count'])})"
                )
            failures = node_failures(answer)
            if failures:
                raise KbError(
                    f"not deleted on {len(failures)} node(s) ({'; '.join(failures)}); "
                    "it stays in the catalog: delete again when they are back"
                )
            print(done)
    except KbError as exc:
        return fail(exc)
    return 0
