"""``sanctum keys``: a node's or gateway's own key pair, and the control plane's keyring.

- ``generate --role node|gateway --out DIR``: the pair a node signs usage records and
  health with, or a gateway its health; run it on that machine, register the ``.pub``.
- ``init``, ``rotate``, ``activate``, ``list``, ``publish`` ``--keyring DIR``: the
  control plane's keys, one per purpose (``shared.keyring``). Run them on the control
  plane's host, as the user it runs as: private keys never leave that directory. The
  running control plane notices a changed keyring by itself: it sends a next key to
  every node and gateway, makes it sign once all hold it, and retires the old one when
  the overlap ends (docs/operations.md, "Rotating keys").
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from shared.keyring import Keyring, KeyringError
from shared.keys import KeyFileError, key_id, load_private_key, write_key_pair
from shared.trust import PURPOSES, TRUST_FILE

TARGET_ROLES = ("node", "gateway")


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="key pairs of nodes and gateways; the keyring")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser(
        "generate",
        help="make this node's or gateway's own pair: ROLE.key (0600) and ROLE.pub",
        description="Make the key pair of the machine this runs on, a data-plane node or a "
        "gateway: ROLE.key (0600, never leaves it) and ROLE.pub (register it in the control "
        "plane). The role is required, so a node never gets another role's private key. The "
        "control plane's own keys are made on its host only, with `sanctum keys init`.",
    )
    gen.add_argument("--out", type=Path, required=True, help="directory for the key files")
    gen.add_argument(
        "--role",
        choices=TARGET_ROLES,
        required=True,
        help="node: signs its usage records and health answers (SANCTUM_DP_NODE_PRIVATE_KEY); "
        "gateway: signs its health answers (SANCTUM_GW_SIGNING_KEY)",
    )
    gen.add_argument("--force", action="store_true", help="replace existing key files")
    gen.set_defaults(func=generate)

    ring = argparse.ArgumentParser(add_help=False)
    ring.add_argument(
        "--keyring",
        type=Path,
        default=Path(os.environ.get("SANCTUM_CP_KEYRING", "")) or None,
        required=not os.environ.get("SANCTUM_CP_KEYRING"),
        help="the control plane's keyring directory (default: $SANCTUM_CP_KEYRING)",
    )
    init = sub.add_parser(
        "init",
        parents=[ring],
        help="make the control plane's keyring, on its host only: a key per purpose",
    )
    init.add_argument(
        "--adopt",
        type=Path,
        default=None,
        help="start every purpose with this existing key (upgrading from one key)",
    )
    init.set_defaults(func=run_init)
    rotate = sub.add_parser("rotate", parents=[ring], help="add the next key of a purpose")
    rotate.add_argument("--purpose", choices=PURPOSES, required=True)
    rotate.set_defaults(func=run_rotate)
    activate = sub.add_parser(
        "activate",
        parents=[ring],
        help="make the next key sign now (the control plane does this by itself once "
        "every target trusts it)",
    )
    activate.add_argument("--purpose", choices=PURPOSES, required=True)
    activate.add_argument(
        "--overlap", type=int, default=86_400, help="seconds the old key stays trusted"
    )
    activate.set_defaults(func=run_activate)
    listing = sub.add_parser("list", parents=[ring], help="the keyring's keys and states")
    listing.set_defaults(func=run_list)
    publish = sub.add_parser(
        "publish",
        parents=[ring],
        help=f"write the public key set (what nodes, gateways "
        f"and auditors trust) to a file, {TRUST_FILE} by default",
    )
    publish.add_argument("--out", type=Path, default=Path(TRUST_FILE))
    publish.set_defaults(func=run_publish)


def generate(args: argparse.Namespace) -> int:
    try:
        path = write_key_pair(args.out, args.role, overwrite=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}")
        return 1
    kid = key_id(load_private_key(path).public_key())
    print(f"{args.role}: {path} (+ {path.with_suffix('.pub').name}), kid {kid}")
    return 0


def _ring(args: argparse.Namespace) -> Keyring:
    return Keyring(args.keyring)


def _show(ring: Keyring) -> None:
    for e in sorted(ring.entries(), key=lambda e: (e.purpose, e.created_at)):
        until = ""
        if e.not_after:
            until = f" until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(e.not_after))}"
        print(f"{e.purpose:<10} {e.state:<8} {e.kid}{until}")


def _run(args: argparse.Namespace, step: str) -> int:
    ring = _ring(args)
    try:
        if step == "init":
            ring.init(adopt=args.adopt)
        elif step == "rotate":
            entry = ring.rotate(args.purpose)
            print(f"{args.purpose}: new key {entry.kid} ({entry.state})")
        elif step == "activate":
            entry = ring.activate(args.purpose, overlap_seconds=args.overlap)
            print(f"{args.purpose}: {entry.kid} signs from now on")
        elif step == "publish":
            keys = ring.publish(args.out)
            print(f"{len(keys.keys)} public keys written to {args.out}")
            return 0
        _show(ring)
    except (KeyringError, KeyFileError, FileExistsError) as exc:
        print(f"error: {exc}")
        return 1
    return 0


def run_init(args: argparse.Namespace) -> int:
    return _run(args, "init")


def run_rotate(args: argparse.Namespace) -> int:
    return _run(args, "rotate")


def run_activate(args: argparse.Namespace) -> int:
    return _run(args, "activate")


def run_list(args: argparse.Namespace) -> int:
    return _run(args, "list")


def run_publish(args: argparse.Namespace) -> int:
    return _run(args, "publish")
