"""Entry point of ``sanctum``: builds the parser from the subcommand modules.

A subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order ``sanctum --help`` lists them in.
SUBCOMMAND_MODULES = (
    "shared.cli.keys",
    "shared.cli.up",
    "shared.cli.demo",
    "shared.cli.kb",
    "shared.cli.enrol",
    "shared.cli.doctor",
    "shared.cli.verify",
    "shared.cli.release_manifest",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sanctum", description="Sanctum: private LLM inference with verifiable receipts."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
