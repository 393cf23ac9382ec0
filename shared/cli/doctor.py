"""``sanctum doctor``: check this data-plane node as an operator would.

One line per check (``ok``, ``warn`` or ``FAIL``, the reason, what to do), exit status 1
if any check fails: the GPU and llama.cpp's offload, the applied config's model files
and GPU layers, memory, swap, core dumps, the node's key files, its listeners and
firewall, the clock (docs/operations.md, "sanctum doctor"). The checks are the data
plane's (``data_plane.doctor``), run as ``python -m data_plane doctor``: this package
imports neither plane.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

SERVICE_USER = "sanctum-dp"  # infra/systemd/sanctum-data-plane.service
UNIT = "sanctum-data-plane.service"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, shared by ``sanctum doctor`` and ``python -m data_plane doctor``."""
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="the node's settings, as its unit reads them (/etc/sanctum/data-plane.env); "
        "without it, the SANCTUM_DP_* variables of this environment",
    )
    parser.add_argument(
        "--user",
        default=None,
        help=f"the node's user, who must own its keys (default: {SERVICE_USER} when run as "
        "root and that user exists, else the user running this)",
    )
    parser.add_argument("--unit", default=UNIT, help="the node's systemd unit")
    # Where the kernel's files are: a test points these at a node it broke on purpose.
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    parser.add_argument("--dev", type=Path, default=Path("/dev"), help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this data-plane node: GPU, models, memory, swap, core dumps, keys, ...",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def argv_of(args: argparse.Namespace) -> list[str]:
    """The options again, for the data plane's process."""
    argv = ["--unit", args.unit, "--proc", str(args.proc), "--dev", str(args.dev)]
    if args.env_file is not None:
        argv += ["--env-file", str(args.env_file)]
    if args.user is not None:
        argv += ["--user", args.user]
    return argv


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("data_plane") is None:
        print("error: sanctum doctor runs on a data-plane node (install .[data-plane])")
        return 2
    return subprocess.call([sys.executable, "-m", "data_plane", "doctor", *argv_of(args)])
