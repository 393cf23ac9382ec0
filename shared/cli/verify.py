"""``sanctum verify``: check receipts, the ledger and tree heads offline.

- ``sanctum verify BUNDLE``: every node signature, every inclusion proof against the
  signed tree head, the tree head's signature and the manifest's signature.
- ``sanctum verify --receipt HELD BUNDLE``: the same, and that the node-signed record
  the client got when its session ended (HELD: a file holding that compact JWS) is in
  the bundle, unchanged.
- ``sanctum verify --consistency OLD NEW``: the tree head in NEW (a consistency file from
  the control plane) extends the one saved in OLD (a checkpoint, or a bundle or
  consistency file holding one).
- ``sanctum verify --statement FILE --nonce N [--proof FILE] [--releases FILE]
  [--expect-model SHA256]... [--receipt HELD]``: a node's statement of what it runs
  (``shared.attestation``): signed by the key it names, for your nonce, recent; with
  ``--proof`` the same claims are logged in the ledger under a signed tree head; with
  ``--releases`` its release is one the control plane allows; each expected model file
  is loaded; a held receipt was signed by that node under that release and config.
- ``sanctum verify --commitment HELD --request REQ.json --answer ANS.json --nonce NONCE
  [--turn K] (--node-key KEY | BUNDLE)``: the held record commits, at turn K (default
  0), to the request body REQ.json sent and the answer ANS.json received (the response
  JSON, a JSON array of its streamed chunks, or the saved ``data:`` lines of the
  stream), under the nonce (its base64url text, or ``@FILE`` holding it). The record is
  checked against the node's public key (``--node-key``: PEM or JWK), or, given a
  BUNDLE, as ``--receipt`` checks it, in the ledger (``shared.commitment``).

``--log-key FILE`` pins the control plane's log key: its published key set
(``control-plane-keys.json``, every log key it has signed with, so tree heads signed
before and after a rotation verify), a PEM public key, an Ed25519 JWK JSON file, or a
signed-note verifier key ``name+keyid+base64``; a private key file is refused. Without
it the key the file carries is used, and the output says so. Exit status: 0 when every check holds,
1 when one fails (each failure is printed, naming the receipt and the check), 2 when a
file can't be read or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.attestation import DEFAULT_MAX_AGE_SECONDS, verify_statement
from shared.checkpoint import CheckpointError, parse_verifier_key
from shared.commitment import CommitmentError, verify_commitment
from shared.keys import KeyFileError, key_id, load_public_key
from shared.ledger import (
    BundleReport,
    ConsistencyReport,
    PublicJwk,
    Report,
    verify_bundle,
    verify_consistency_files,
    verify_held_receipt,
)
from shared.trust import LOG, KeySet
from shared.usage import UsageRecord, UsageRecordError, open_usage_record, peek_usage_record

DESCRIPTION = """\
  sanctum verify BUNDLE                  node signatures, inclusion proofs, tree head
                                         and manifest signatures of an audit bundle
  sanctum verify --receipt HELD BUNDLE   the same, and that the usage record you were
                                         handed at the end of a session is in it
  sanctum verify --consistency OLD NEW   the tree head in NEW extends the one in OLD
  sanctum verify --statement FILE --nonce N [--proof FILE] [--releases FILE]
                 [--expect-model SHA256]... [--receipt HELD]
                                         a node's signed statement of what it runs
  sanctum verify --commitment HELD --request REQ.json --answer ANS.json --nonce NONCE
                 [--turn K] (--node-key KEY | BUNDLE)
                                         the held record commits to that request and
                                         answer (turn K of its session, default 0)

Exit status 0 when every check holds, 1 when one fails, 2 on unreadable input."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _InputError(Exception):
    """A file given on the command line can't be read."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sanctum verify``."""
    parser = subparsers.add_parser(
        "verify",
        help="verify an audit bundle, a held receipt, or two tree heads offline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="BUNDLE, or OLD NEW with --consistency (optional with --commitment)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--consistency",
        action="store_true",
        help="check that the tree head in NEW extends the one saved in OLD",
    )
    mode.add_argument(
        "--receipt",
        metavar="HELD",
        type=Path,
        help="a client-held node-signed usage record (compact JWS) that must be in BUNDLE",
    )
    mode.add_argument(
        "--commitment",
        metavar="HELD",
        type=Path,
        help="a held usage record (compact JWS) whose content commitment to check",
    )
    commitment = parser.add_argument_group("content commitments (with --commitment)")
    commitment.add_argument(
        "--request", metavar="REQ", type=Path, help="the request body sent (JSON)"
    )
    commitment.add_argument(
        "--answer",
        metavar="ANS",
        type=Path,
        help="the answer: the response JSON, a JSON array of its chunks, or the stream",
    )
    commitment.add_argument(
        "--nonce",
        help="the nonce you sent (base64url), or @FILE holding it: the commitment's, or "
        "the one sent with the statement's request (with --statement)",
    )
    commitment.add_argument(
        "--turn", type=int, default=0, help="the turn (the session's request number, from 0)"
    )
    commitment.add_argument(
        "--node-key",
        metavar="KEY",
        type=Path,
        help="the node's public key (PEM or JWK); else the BUNDLE's node keys",
    )
    parser.add_argument(
        "--log-key",
        metavar="FILE",
        type=Path,
        help="the control plane's published key set, or its log public key (PEM, JWK "
        "or note verifier key)",
    )
    parser.add_argument("--origin", help="the log's expected origin (checkpoint first line)")
    statement = parser.add_argument_group("node statements")
    statement.add_argument(
        "--statement",
        metavar="FILE",
        type=Path,
        help="a node statement (the compact JWS GET /v1/attestation answered)",
    )
    statement.add_argument(
        "--proof", metavar="FILE", type=Path, help="the statement proof file (control plane)"
    )
    statement.add_argument(
        "--releases",
        metavar="FILE",
        type=Path,
        help="the allowed-releases file (control plane, signed by its log key)",
    )
    statement.add_argument(
        "--expect-model",
        metavar="SHA256",
        action="append",
        default=[],
        help="a model file hash the node must have loaded (repeatable)",
    )
    statement.add_argument(
        "--max-age",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_MAX_AGE_SECONDS,
        help=f"refuse a statement issued longer ago (default {DEFAULT_MAX_AGE_SECONDS})",
    )
    parser.set_defaults(func=run)


def load_log_key(path: Path, checked: Path | None = None) -> tuple[str | None, Ed25519PublicKey]:
    """Read a pinned log key: a key set, PEM, JWK JSON, or ``name+keyid+base64`` (which
    names it too). From a key set, the log key the file to check (``checked``) names,
    if the set holds it; else the set's first log key (and the check fails)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _InputError(f"can't read log key {path}: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace").strip()
    try:
        if text.startswith("-----BEGIN"):
            return None, load_public_key(path)
        if text.startswith("{") and '"keys"' in text:
            return None, _from_key_set(KeySet.parse(text, source=str(path)), checked)
        if text.startswith("{"):
            return None, PublicJwk.model_validate(json.loads(text)).public_key()
        return parse_verifier_key(text)
    except (KeyFileError, CheckpointError, ValueError) as exc:
        raise _InputError(f"log key {path} is not an Ed25519 public key: {exc}") from None


def _from_key_set(keys: KeySet, checked: Path | None) -> Ed25519PublicKey:
    published = keys.public_keys(LOG, now=0)
    if not published:
        raise ValueError("the key set holds no log key")
    try:
        carried = checked.read_bytes() if checked is not None else b"{}"
        jwk = json.loads(carried).get("log_key", {}).get("jwk", {})
        named = PublicJwk.model_validate(jwk).public_key()
    except (OSError, ValueError, AttributeError):
        return published[0]
    return next((k for k in published if key_id(k) == key_id(named)), published[0])


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _InputError(f"can't read {what} {path}: {exc.strerror}") from None


def _print_report(report: Report, headline: str) -> int:
    for line in report.passed:
        print(f"  ok    {line}")
    for warning in report.warnings:
        print(f"  note  {warning}")
    if report.ok:
        print(f"OK: {headline}")
        return EXIT_OK
    for failure in report.failures:
        print(f"  FAIL  {failure}", file=sys.stderr)
    count = len(report.failures)
    print(f"FAILED: {count} check{'s' if count != 1 else ''} did not hold", file=sys.stderr)
    return EXIT_FAILED


def _bundle_headline(report: BundleReport, path: Path) -> str:
    period = f"{report.since or 'the beginning'} to {report.until or 'now'}"
    return (
        f"{path}: {report.receipt_count} receipt(s) of client {report.client_id} "
        f"({period}) in log {report.origin} at tree size {report.tree_size}"
    )


def _consistency_headline(report: ConsistencyReport) -> str:
    return f"log {report.origin} grew from {report.old_size} to {report.new_size} consistently"


def _run_statement(args: argparse.Namespace) -> int:
    if args.files or args.consistency or args.commitment or not args.nonce:
        print(
            "error: sanctum verify --statement FILE --nonce N takes no other FILE", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        nonce = _nonce(args.nonce)
        # From a key set, the log key the proof file names (a rotated key verifies too).
        key = load_log_key(args.log_key, args.proof)[1] if args.log_key else None
        token = _read(args.statement, "statement").decode("ascii", errors="replace")
        held = (
            _read(args.receipt, "held receipt").decode("ascii", errors="replace")
            if args.receipt is not None
            else None
        )
        report = verify_statement(
            token,
            nonce=nonce,
            proof=_read(args.proof, "statement proof") if args.proof else None,
            releases=_read(args.releases, "allowed releases") if args.releases else None,
            log_key=key,
            expect_models=args.expect_model,
            receipt=held,
            max_age_seconds=args.max_age,
            origin=args.origin,
        )
    except _InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    said = report.statement
    headline = (
        f"node {said.node_id} runs release {said.release_digest[:16]}... with "
        f"{len(said.models)} model(s)"
        + (f"; logged at index {report.log_index}" if report.log_index is not None else "")
        if said is not None
        else "statement"
    )
    return _print_report(report, headline)


def _json_file(path: Path, what: str) -> object:
    try:
        return json.loads(_read(path, what))
    except ValueError:
        raise _InputError(f"{what} {path} is not JSON") from None


def _answer_file(path: Path) -> object:
    """The answer: a JSON object or array, or a saved stream of ``data:`` lines."""
    data = _read(path, "answer")
    if not data.lstrip().startswith(b"data:"):
        return _json_file(path, "answer")
    chunks = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            try:
                chunks.append(json.loads(line[5:]))
            except ValueError:
                raise _InputError(f"answer {path} has a data: line that is not JSON") from None
    return chunks


def _nonce(text: str | None) -> str:
    if not text:
        raise _InputError("--commitment and --statement need --nonce")
    if text.startswith("@"):
        return _read(Path(text[1:]), "nonce file").decode("ascii", errors="replace").strip()
    return text


def _node_key(path: Path) -> Ed25519PublicKey:
    try:
        text = _read(path, "node key").decode("utf-8", errors="replace").strip()
        if text.startswith("{"):
            return PublicJwk.model_validate(json.loads(text)).public_key()
        return load_public_key(path)
    except (KeyFileError, ValueError) as exc:
        raise _InputError(f"node key {path} is not an Ed25519 public key: {exc}") from None


def _check_commitment(args: argparse.Namespace, files: list[Path]) -> int:
    """``--commitment``: the held record's commitment at ``--turn`` opens to the files."""
    if args.request is None or args.answer is None:
        raise _InputError("--commitment needs --request and --answer")
    if (args.node_key is None) == (len(files) == 0) or len(files) > 1:
        raise _InputError("--commitment needs either --node-key or one BUNDLE")
    held = _read(args.commitment, "held receipt").decode("ascii", errors="replace").strip()
    request, answer = _json_file(args.request, "request"), _answer_file(args.answer)
    nonce = _nonce(args.nonce)
    if not isinstance(request, dict):
        raise _InputError(f"request {args.request} is not a JSON object")
    if not isinstance(answer, (dict, list)):
        raise _InputError(f"answer {args.answer} is not a JSON object or array")
    try:
        if args.node_key is not None:
            node_id = str(peek_usage_record(held).get("node_id"))
            record = open_usage_record(held, {node_id: _node_key(args.node_key)})
            print(f"  ok    held receipt {args.commitment} is signed by node {node_id}")
        else:
            name, key = load_log_key(args.log_key, files[0]) if args.log_key else (None, None)
            bundle = _read(files[0], "bundle")
            report = verify_held_receipt(
                held, bundle, log_key=key, log_key_name=name, origin=args.origin
            )
            if not report.ok:
                return _print_report(report, "")
            for line in report.passed:
                print(f"  ok    {line}")
            record = UsageRecord.model_validate(peek_usage_record(held))  # verified above
        verify_commitment(record, args.turn, nonce, request, answer)
    except (UsageRecordError, CommitmentError) as exc:
        print(f"  FAIL  {exc}", file=sys.stderr)
        print("FAILED: the commitment does not hold", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"OK: turn {args.turn} of session {record.session_id} (record {record.record_id}) "
        f"commits to {args.request} and {args.answer}"
    )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run the verification the arguments ask for; return the exit status."""
    if args.statement is not None:
        return _run_statement(args)
    files = [Path(f) for f in args.files]
    if args.commitment is not None:
        try:
            return _check_commitment(args, files)
        except _InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    want = 2 if args.consistency else 1
    if len(files) != want:
        usage = "--consistency OLD NEW" if args.consistency else "BUNDLE"
        print(f"error: sanctum verify takes {usage}", file=sys.stderr)
        return EXIT_USAGE
    try:
        name, key = load_log_key(args.log_key, files[-1]) if args.log_key else (None, None)
        if args.consistency:
            report_c = verify_consistency_files(
                _read(files[0], "OLD"),
                _read(files[1], "NEW"),
                log_key=key,
                log_key_name=name,
                origin=args.origin,
            )
            return _print_report(report_c, _consistency_headline(report_c))
        bundle = _read(files[0], "bundle")
        if args.receipt is not None:
            held = _read(args.receipt, "held receipt").decode("ascii", errors="replace")
            report = verify_held_receipt(
                held, bundle, log_key=key, log_key_name=name, origin=args.origin
            )
            headline = (
                f"held receipt {args.receipt} is in the ledger at log index "
                f"{report.held_log_index}; " + _bundle_headline(report, files[0])
            )
        else:
            report = verify_bundle(bundle, log_key=key, log_key_name=name, origin=args.origin)
            headline = _bundle_headline(report, files[0])
        return _print_report(report, headline)
    except _InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
