"""``python -m data_plane serve``: run a data-plane node from SANCTUM_DP_* settings."""

import argparse

from data_plane.server import main

parser = argparse.ArgumentParser(prog="python -m data_plane")
parser.add_argument("command", choices=["serve"])
parser.parse_args()
main()
