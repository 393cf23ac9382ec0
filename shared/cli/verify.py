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

DESCRIPTION = """\
  sanctum verify BUNDLE                  node signatures, inclusion proofs, tree head
                                         and manifest signatures of an audit bundle
  sanctum verify --receipt HELD BUNDLE   the same, and that the usage record you were
                                         handed at the end of a session is in it
  sanctum verify --consistency OLD NEW   the tree head in NEW extends the one in OLD
  sanctum verify --statement FILE --nonce N [--proof FILE] [--releases FILE]
                 [--expect-model SHA256]... [--receipt HELD]
                                         a node's signed statement of what it runs

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
        "files", nargs="*", metavar="FILE", help="BUNDLE, or OLD NEW with --consistency"
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
    statement.add_argument("--nonce", help="the nonce you sent with that request")
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
    if args.files or args.consistency or not args.nonce:
        print(
            "error: sanctum verify --statement FILE --nonce N takes no other FILE", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        key = load_log_key(args.log_key)[1] if args.log_key else None
        token = _read(args.statement, "statement").decode("ascii", errors="replace")
        held = (
            _read(args.receipt, "held receipt").decode("ascii", errors="replace")
            if args.receipt is not None
            else None
        )
        report = verify_statement(
            token,
            nonce=args.nonce,
            proof=_read(args.proof, "statement proof") if args.proof else None,
            releases=_read(args.releases, "allowed releases") if args.releases else None,
            log_key=key,
            expect_models=args.expect_model,
            receipt=held,
            max_age_seconds=args.max_age,
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


def run(args: argparse.Namespace) -> int:
    """Run the verification the arguments ask for; return the exit status."""
    if args.statement is not None:
        return _run_statement(args)
    files = [Path(f) for f in args.files]
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
