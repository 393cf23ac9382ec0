"""``sanctum kb``: load, list and delete a client's knowledge bases on a data-plane node.

Talks to the node's management listener, each request signed with the control plane's
key (``shared.signed_request``). The CLI reads files and sends their bytes and names;
the node parses them (this module imports neither the data plane nor Qdrant). A file
the node cannot use is named with its reason and skipped while the rest ingests; the
exit status is non-zero only when nothing usable was loaded or on a real error.

Where the node and the key come from, first match wins:
  node: ``--node URL``, ``$SANCTUM_MANAGEMENT_URL``, http://127.0.0.1:8001
  key:  ``--key PATH``, ``$SANCTUM_CONTROL_PLANE_KEY``, DATA_DIR/keys/control-plane.key
        where DATA_DIR is ``--data-dir``, ``$SANCTUM_DATA_DIR`` or ``sanctum up``'s default
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from shared.cli.up import default_data_dir
from shared.keys import CONTROL_PLANE, KeyFileError, load_private_key
from shared.signed_request import SignedRequestAuth

DEFAULT_NODE = "http://127.0.0.1:8001"
BATCH_BYTES = 4 * 1_048_576  # file bytes per ingest request (base64 adds a third)
BATCH_FILES = 64
TIMEOUT = 600  # a large batch is embedded before the node answers


class KbError(Exception):
    """A real error: the node or the key could not be used."""


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--node",
        default=None,
        help=f"the node's management URL (default: $SANCTUM_MANAGEMENT_URL or {DEFAULT_NODE})",
    )
    common.add_argument(
        "--key",
        type=Path,
        default=None,
        help="the control plane's private key (default: $SANCTUM_CONTROL_PLANE_KEY or "
        "DATA_DIR/keys/control-plane.key)",
    )
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="a `sanctum up` data directory to take the key from "
        "(default: $SANCTUM_DATA_DIR or up's default)",
    )

    kb = subparsers.add_parser("kb", help="load, list and delete clients' knowledge bases")
    actions = kb.add_subparsers(dest="kb_action", required=True, metavar="ACTION")

    ingest = actions.add_parser(
        "ingest",
        parents=[common],
        help="load files or folders (.txt, .md, .html, .pdf) into a knowledge base",
    )
    ingest.add_argument("--client", required=True, help="the client the knowledge base is for")
    ingest.add_argument("--kb", required=True, help="the knowledge base's name")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=run_ingest)

    listing = actions.add_parser("list", parents=[common], help="the node's knowledge bases")
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


# --- talking to the node -----------------------------------------------------------------


def node_url(args: argparse.Namespace) -> str:
    url = args.node or os.environ.get("SANCTUM_MANAGEMENT_URL") or DEFAULT_NODE
    return str(url).rstrip("/")


def key_path(args: argparse.Namespace) -> Path:
    if args.key:
        return Path(args.key)
    if os.environ.get("SANCTUM_CONTROL_PLANE_KEY"):
        return Path(os.environ["SANCTUM_CONTROL_PLANE_KEY"])
    return (args.data_dir or default_data_dir()) / "keys" / f"{CONTROL_PLANE}.key"


def connect(args: argparse.Namespace) -> httpx.Client:
    path = key_path(args)
    try:
        key = load_private_key(path)
    except KeyFileError as exc:
        raise KbError(
            f"{exc} (the control plane's key: --key, $SANCTUM_CONTROL_PLANE_KEY or --data-dir)"
        ) from None
    return httpx.Client(base_url=node_url(args), auth=SignedRequestAuth(key), timeout=TIMEOUT)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One signed request; its JSON answer, or KbError naming what went wrong."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise KbError(
            f"can't reach the node's management listener at {client.base_url} "
            f"({type(exc).__name__}; --node or $SANCTUM_MANAGEMENT_URL)"
        ) from None
    if response.status_code == 401:
        raise KbError(
            f"the node answered 401: {_message(response)} (sign with the control plane's key "
            "that the node trusts: --key, $SANCTUM_CONTROL_PLANE_KEY or --data-dir)"
        )
    if response.status_code >= 400:
        raise KbError(f"the node answered {response.status_code}: {_message(response)}")
    body: dict[str, Any] = response.json()
    return body


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase


def fail(exc: KbError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


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


def _batches(files: list[Candidate], limit: int) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    size = 0
    for file in files:
        if batch and (size + file.size > limit or len(batch) >= BATCH_FILES):
            yield batch
            batch, size = [], 0
        batch.append(file)
        size += file.size
    if batch:
        yield batch


def _chunks(n: int) -> str:
    return f"{n} chunk" if n == 1 else f"{n} chunks"


def _line(status: str, name: str, detail: str = "") -> str:
    return f"{status:<10} {name}{detail}"


def run_ingest(args: argparse.Namespace) -> int:
    try:
        client = connect(args)
        with client:
            return _ingest(args, client)
    except KbError as exc:
        return fail(exc)


def _ingest(args: argparse.Namespace, client: httpx.Client) -> int:
    limits = call(client, "GET", "/internal/knowledge-bases")["ingest"]
    file_types = {t.lower() for t in limits["file_types"]}
    max_bytes = int(limits["max_document_bytes"])
    batch_limit = min(BATCH_BYTES, int(limits["max_request_bytes"]) // 2)

    found, missing = collect(args.paths)
    counts = {"ingested": 0, "unchanged": 0, "skipped": 0}
    chunks = 0

    def report(status: str, name: str, detail: str = "") -> None:
        counts[status if status in counts else "skipped"] += 1
        tqdm.write(_line(status, name, detail), file=sys.stdout)

    for name, reason in missing:
        report("skipped", name, f": {reason}")
    send: list[Candidate] = []
    names: dict[str, Path] = {}
    for file in found:
        suffix = Path(file.name).suffix.lower()
        if suffix not in file_types:
            shown = suffix or "no extension"
            report("skipped", file.name, f": unsupported file type ({shown})")
        elif file.size > max_bytes:
            report("skipped", file.name, f": too large ({file.size} bytes; at most {max_bytes})")
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
        for batch in _batches(send, batch_limit):
            documents = []
            for file in batch:
                try:
                    data = file.path.read_bytes()
                except OSError as exc:
                    report("skipped", file.name, f": unreadable ({type(exc).__name__})")
                    bar.update(file.size)
                    continue
                documents.append(
                    {"name": file.name, "content": base64.b64encode(data).decode("ascii")}
                )
            if not documents:
                continue
            answer = call(
                client,
                "POST",
                f"/internal/knowledge-bases/{args.client}/{args.kb}/documents",
                json={"documents": documents},
            )
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
    if counts["ingested"] + counts["unchanged"] == 0:
        print("error: nothing usable was loaded", file=sys.stderr)
        return 1
    return 0


# --- list and delete ---------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    try:
        with connect(args) as client:
            params = {"client": args.client} if args.client else {}
            kbs = call(client, "GET", "/internal/knowledge-bases", params=params)["knowledge_bases"]
            if args.documents:
                for kb in kbs:
                    detail = call(
                        client, "GET", f"/internal/knowledge-bases/{kb['client']}/{kb['name']}"
                    )
                    kb["documents_list"] = detail["documents"]
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
                print(f"    {doc['name']}  ({_chunks(doc['chunks'])}, {doc['bytes']} bytes)")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    target = f"/internal/knowledge-bases/{args.client}/{args.kb}"
    try:
        with connect(args) as client:
            if args.document:
                params = {"name": args.document}
                doc = call(client, "DELETE", f"{target}/documents", params=params)["deleted"]
                where = f"{args.client}/{args.kb}"
                print(f"deleted {doc['name']} ({_chunks(doc['chunks'])}) from {where}")
            else:
                answer = call(client, "DELETE", target)
                print(
                    f"deleted {args.client}/{args.kb} "
                    f"({answer['documents']} documents, {_chunks(answer['chunks'])})"
                )
    except KbError as exc:
        return fail(exc)
    return 0
