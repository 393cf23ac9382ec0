"""Running the gateway's tools (``wg``, ``ip``, ``nginx``, the firewall script).

Argument lists, never a shell. Secrets go in on stdin only, and a command that was fed a
secret never has its output quoted back: ``wg`` echoes the line it could not parse,
which would put a key in a log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
_MAX_DETAIL = 400


class CommandFailed(RuntimeError):
    """A tool exited non-zero or timed out. ``detail`` is safe to log and return."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    secret_input: bool = False,
    check: bool = True,
) -> Result:
    """Run ``argv``; raise :class:`CommandFailed` on a non-zero exit when ``check``."""
    what = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
        )
    except OSError as exc:
        raise CommandFailed(what, f"can't run it ({type(exc).__name__})") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(what, f"no answer within {timeout:.0f}s") from None
    result = Result(
        proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    )
    if check and result.returncode != 0:
        if secret_input:
            detail = f"exit status {result.returncode} (its output is withheld: it was fed keys)"
        else:
            text = (result.stderr or result.stdout).strip().replace("\n", " | ")
            detail = f"exit status {result.returncode}: {text[-_MAX_DETAIL:]}"
        raise CommandFailed(what, detail)
    return result
