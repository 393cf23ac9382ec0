"""``sanctum keys generate``: Ed25519 key pairs for the control plane and a node."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.keys import KEY_ROLES, key_id, load_private_key, write_key_pair


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage Ed25519 key pairs")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="write ROLE.key (0600) and ROLE.pub for each role")
    gen.add_argument("--out", type=Path, required=True, help="directory for the key files")
    gen.add_argument(
        "--role",
        choices=KEY_ROLES,
        action="append",
        help="which pair to make (repeatable; default: all of them)",
    )
    gen.add_argument("--force", action="store_true", help="replace existing key files")
    gen.set_defaults(func=generate)


def generate(args: argparse.Namespace) -> int:
    for role in args.role or KEY_ROLES:
        try:
            path = write_key_pair(args.out, role, overwrite=args.force)
        except FileExistsError as exc:
            print(f"error: {exc}")
            return 1
        kid = key_id(load_private_key(path).public_key())
        print(f"{role}: {path} (+ {path.with_suffix('.pub').name}), kid {kid}")
    return 0
