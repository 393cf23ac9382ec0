"""``python -m data_plane serve``: run a data-plane node from SANCTUM_DP_* settings.
``python -m data_plane doctor``: check the node (``sanctum doctor`` runs this)."""

import argparse
import sys

parser = argparse.ArgumentParser(prog="python -m data_plane")
parser.add_argument("command", choices=["serve", "doctor"])
args, rest = parser.parse_known_args()
if args.command == "doctor":
    from data_plane.doctor import main as doctor

    sys.exit(doctor(rest))
if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")

from data_plane.server import main  # noqa: E402  (only the node needs the server stack)

main()
