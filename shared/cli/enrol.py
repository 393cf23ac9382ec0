"""``sanctum enrol``: get this node's or gateway's TLS certificates from the control plane.

Run on the node or gateway host with the enrolment token an admin made for it (Django
admin or ``POST /api/enrolment-tokens/``). In order:

1. The token names the management CA by its SHA-256 fingerprint. The CLI fetches the CA
   certificates (``GET /api/enrol/ca/``) and stops, having sent nothing secret, unless
   the management CA is the one the token names.
2. It makes the TLS private key here (``management.key``, 0600; a gateway also makes
   ``ingress.key`` for nginx), or reuses one left by an earlier attempt. No private key
   ever leaves the host: the control plane gets a CSR.
3. It sends the token and the CSR(s) (``POST /api/enrol/``); the token is then used up.
4. It checks what comes back (issued by the pinned CA, for this key, naming this host)
   and only then writes the certificates beside the keys.

The control plane's URL must be ``https://`` (verified with the system's CAs or
``--ca-file``) unless it is on this machine (loopback), so the token does not cross a
network in clear. Renewals need no action here: they arrive in signed releases.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.keys import KeyFileError, write_atomically
from shared.listeners import is_loopback
from shared.pki import (
    CertificateError,
    EnrolmentToken,
    check_issued,
    ensure_tls_key,
    fingerprint,
    make_csr,
)

TIMEOUT = 30


class EnrolError(Exception):
    """Enrolment did not happen; the message says why and nothing was written."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "enrol",
        help="get this node's or gateway's TLS certificates with an enrolment token",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", choices=["node", "gateway"])
    parser.add_argument("--url", required=True, help="the control plane's URL")
    parser.add_argument(
        "--token", default=None, help="the enrolment token (default: $SANCTUM_ENROL_TOKEN)"
    )
    parser.add_argument("--name", required=True, help="this node's id or gateway's name")
    parser.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="where the keys and certificates go (a node's SANCTUM_DP_TLS_DIR, default "
        "data_dir/tls; a gateway's state_dir/tls)",
    )
    parser.add_argument(
        "--ca-file", default=None, help="CA bundle that signs the control plane's HTTPS"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("SANCTUM_ENROL_TOKEN")
    try:
        if not token:
            raise EnrolError("no token: --token or $SANCTUM_ENROL_TOKEN")
        written = enrol(
            args.url, token, args.role, args.name, args.dir, verify=args.ca_file or True
        )
    except (EnrolError, CertificateError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def _local(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise EnrolError(f"control plane unreachable: {type(exc).__name__}") from None
    if response.status_code not in (200, 201):
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.reason_phrase
        raise EnrolError(f"control plane refused: HTTP {response.status_code}: {detail}")
    body: dict[str, Any] = response.json()
    return body


def enrol(
    url: str,
    token_text: str,
    role: str,
    name: str,
    directory: Path,
    *,
    verify: Any = True,
    transport: httpx.BaseTransport | None = None,
) -> list[Path]:
    """Enrol; returns the files written (the keys are made first, the certificates last)."""
    token = EnrolmentToken.parse(token_text)
    if urlsplit(url).scheme != "https" and not _local(url):
        raise EnrolError("the control plane's URL must be https:// (or on this machine)")
    base = url.rstrip("/") + "/api/"
    with httpx.Client(base_url=base, verify=verify, timeout=TIMEOUT, transport=transport) as client:
        cas = _call(client, "GET", "enrol/ca/")
        ca_pem = str(cas.get("management_ca") or "")
        if not ca_pem or fingerprint(ca_pem) != token.ca_fingerprint:
            raise EnrolError(
                "the control plane's management CA is not the one the token names: "
                "refusing to enrol (wrong URL, or someone in between)"
            )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ensure_tls_key(directory / "management.key")
        body: dict[str, str] = {"token": str(token), "csr": make_csr(key, name)}
        ingress_key = None
        if role == "gateway":
            ingress_key = ensure_tls_key(directory / "ingress.key")
            body["ingress_csr"] = make_csr(ingress_key, name)
        answer = _call(client, "POST", "enrol/", json=body)
    if fingerprint(str(answer.get("ca") or ca_pem)) != token.ca_fingerprint:
        raise EnrolError("the answer's CA is not the pinned one")
    check_issued(str(answer.get("certificate")), ca_pem, key, name)
    files = {
        directory / "management-ca.crt": ca_pem,
        directory / "management.crt": str(answer["certificate"]),
    }
    if ingress_key is not None:
        ingress_ca = str(answer.get("ingress_ca") or "")
        check_issued(str(answer.get("ingress_certificate")), ingress_ca, ingress_key, name)
        files[directory / "ingress-ca.crt"] = ingress_ca
        files[directory / "ingress.crt"] = str(answer["ingress_certificate"])
    for path, pem in files.items():
        write_atomically(path, pem.encode("ascii"), 0o644)
    return [directory / "management.key", *files]
