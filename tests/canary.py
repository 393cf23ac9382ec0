"""The canary scanner: does a marker appear anywhere it must not?

It looks for the marker as bytes and in each of its three base64 alignments (content
wrapped in a signed document would be base64url-encoded), in every file under the given
roots (binary files included) and in captured process output.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path


def new_marker() -> str:
    return f"CANARY{uuid.uuid4().hex.upper()}"


def encodings(marker: str) -> list[str]:
    """The marker and the base64/base64url text that any encoding of it must contain."""
    raw = marker.encode()
    forms = {marker}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        # keep only the characters whose 6 bits all come from the marker's bytes
        first = -(-8 * pad // 6)
        last = (8 * (pad + len(raw)) - 6) // 6
        core = encoded[first : last + 1]
        forms.add(core)
        forms.add(core.replace("+", "-").replace("/", "_"))
    return sorted(forms)


def files_containing(marker: str, roots: list[Path]) -> list[str]:
    existing = [str(r) for r in roots if r.exists()]
    if not existing:
        return []
    args = ["grep", "-rlaF", "--no-messages"]
    for form in encodings(marker):
        args += ["-e", form]
    result = subprocess.run([*args, *existing], capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"grep failed with {result.returncode}")
    return [line for line in result.stdout.splitlines() if line]


def texts_containing(marker: str, texts: dict[str, str]) -> list[str]:
    forms = encodings(marker)
    return [name for name, text in texts.items() if any(f in text for f in forms)]
