"""``python -m tests.bench [NAME...]``: run the benchmarks (all of them by default)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )
    for name in names:
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"tests.bench.{name}").main()
    return 0


sys.exit(main(sys.argv[1:]))
