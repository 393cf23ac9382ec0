"""``python -m data_plane.gateway serve|render-nginx``: run the agent from SANCTUM_GW_*."""

import argparse

from data_plane.gateway.server import main

parser = argparse.ArgumentParser(prog="python -m data_plane.gateway")
parser.add_argument("command", choices=["serve", "render-nginx"])
main(parser.parse_args().command)
