"""``sanctum release-manifest``: the manifest of this environment's release and its digest.

Prints the release digest (``shared.software``); ``--out FILE`` also writes the manifest
(canonical JSON and a newline) for the control plane (``python -m control_plane
allow_release --manifest FILE``, or ``POST /api/software-releases/``). ``--verify`` reads
every installed file and checks it against its distribution's RECORD, and, with
``--against FILE``, this environment against a manifest written before: exit status 1 on
any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.software import manifest_bytes, release_digest, release_manifest, verify_installed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release-manifest",
        help="print this environment's release digest; write its manifest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=None, help="write the manifest here")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every installed file against its RECORD hash (slow)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="with --verify: also compare this environment with the manifest in this file",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = release_manifest()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(manifest_bytes(manifest))
    print(release_digest(manifest))
    if not args.verify:
        return 0
    expected = None
    if args.against is not None:
        expected = json.loads(args.against.read_bytes())
    problems = verify_installed(expected)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"{len(problems)} problem(s)" if problems else "every installed file matches",
        file=sys.stderr,
    )
    return 1 if problems else 0
