"""Document parsing in a process of its own, bounded in time and memory.

PDF and HTML parsing is pure Python (pypdf, BeautifulSoup). In a thread of the node it
would hold the GIL against the event loop and the engine's scheduler, and a file crafted
to be slow (a huge content stream, a deep page tree) would run for as long as it likes:
a thread can't be stopped. So the node parses in a child process, one file at a time,
queued per client and taken round robin (``data_plane.fair_queue``). A file that takes
longer than its timeout gets the child killed and replaced, and the file refused; the
child's address space is capped, so a decompression bomb fails there, not in the node.

The wire, over the child's stdin and stdout (pipes: RAM only, never a file):
    request:  u32 header length, header (JSON: ``name``, ``max_pages``, ``max_text_bytes``),
              u64 data length, the file's bytes
    answer:   u32 length, JSON: ``{"text": ...}`` or ``{"kind": ..., "reason": ...}``
The node reads answers as JSON, never with pickle: a child subverted by a hostile file
can lie about a document, but it can't run code in the node. The child's stderr goes
nowhere, and it configures no logging: nothing it does reaches a log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import subprocess
import sys
from typing import IO, Any

from data_plane.fair_queue import NODE_WORK, FairExecutor
from data_plane.rag.parsing import DocumentRejected

logger = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        data = stream.read(n)
        if not data:
            raise EOFError
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


class _Child:
    """One running parser process."""

    def __init__(self, memory_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "data_plane.rag.parser_process", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            bufsize=0,  # unbuffered: select() then sees every byte the child wrote
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        # The child says it is ready once its imports are done and its limits set.
        try:
            ready = self._answer(timeout=120)
        except (TimeoutError, EOFError, OSError, ValueError):
            ready = None
        if ready != {"ready": True}:
            self.kill()
            raise RuntimeError("the document parser did not start")

    def _answer(self, timeout: float) -> Any:
        import select

        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        (size,) = _U32.unpack(_read_exact(self.stdout, 4))
        return json.loads(_read_exact(self.stdout, size))

    def parse(self, name: str, data: bytes, max_pages: int, max_text: int, timeout: float) -> Any:
        header = json.dumps(
            {"name": name, "max_pages": max_pages, "max_text_bytes": max_text}
        ).encode()
        self.stdin.write(_U32.pack(len(header)) + header + _U64.pack(len(data)))
        self.stdin.write(data)
        self.stdin.flush()
        return self._answer(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class DocumentParser:
    """Text out of a file's bytes, in a child process (see the module's docstring)."""

    def __init__(
        self,
        *,
        memory_bytes: int,
        max_pages: int,
        max_queued_per_client: int = 8,
        max_queued: int = 64,
    ) -> None:
        self.memory_bytes = memory_bytes
        self.max_pages = max_pages
        self._queue = FairExecutor(
            "document parser",
            workers=1,
            max_per_client=max_queued_per_client,
            max_total=max_queued,
        )
        self._child: _Child | None = None

    async def start(self) -> None:
        """Start the child now, so the first file does not wait for its imports."""
        await self._queue.run(NODE_WORK, self._ensure)

    def close(self) -> None:
        self._queue.close()
        if self._child is not None:
            self._child.kill()
            self._child = None

    def waiting(self) -> dict[str, int]:
        return self._queue.waiting()

    async def parse(
        self, name: str, data: bytes, *, client: str, timeout: float, max_text_bytes: int
    ) -> str:
        """The normalised text of file ``name``, parsed in ``client``'s turn.

        Raises DocumentRejected (with a reason that never quotes the file), or QueueFull
        when the client's queue is full.
        """
        return await self._queue.run(client, self._parse, name, data, timeout, max_text_bytes)

    def _ensure(self) -> _Child:
        if self._child is None or self._child.proc.poll() is not None:
            self._child = _Child(self.memory_bytes)
        return self._child

    def _parse(self, name: str, data: bytes, timeout: float, max_text_bytes: int) -> str:
        try:
            child = self._ensure()
        except RuntimeError:
            raise DocumentRejected("unreadable", "the document parser is not available") from None
        try:
            answer = child.parse(name, data, self.max_pages, max_text_bytes, timeout)
        except TimeoutError:
            self._replace(child, "timeout")
            raise DocumentRejected(
                "too_slow", f"parsing took longer than {timeout:g} seconds"
            ) from None
        except (EOFError, OSError, ValueError):
            self._replace(child, "crashed")
            raise DocumentRejected("unreadable", "the parser could not read this file") from None
        if "text" in answer:
            return str(answer["text"])
        raise DocumentRejected(str(answer.get("kind", "unreadable")), str(answer.get("reason")))

    def _replace(self, child: _Child, why: str) -> None:
        child.kill()
        self._child = None
        logger.info("document parser replaced reason=%s", why)


# --- the child ---------------------------------------------------------------------------


def _limit_memory(extra: int) -> None:
    """Cap the address space at what the imports took plus ``extra`` bytes."""
    import resource

    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    cap = pages * os.sysconf("SC_PAGE_SIZE") + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _serve(memory_bytes: int) -> None:
    # Parsing is bulk work: the node's own threads (the engine's decode steps above all)
    # go first when the cores are busy.
    os.nice(10)
    # Nothing the parsers log or warn may reach a terminal or a log: their messages can
    # quote the file.
    logging.disable(logging.CRITICAL)
    import warnings

    warnings.simplefilter("ignore")
    import bs4  # noqa: F401  (imported before the memory cap)
    import pypdf  # noqa: F401

    from data_plane.rag.parsing import parse_document

    _limit_memory(memory_bytes)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def answer(payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        stdout.write(_U32.pack(len(body)) + body)
        stdout.flush()

    answer({"ready": True})
    while True:
        try:
            (size,) = _U32.unpack(_read_exact(stdin, 4))
            header = json.loads(_read_exact(stdin, size))
            (length,) = _U64.unpack(_read_exact(stdin, 8))
            data = _read_exact(stdin, length)
        except EOFError:
            return  # the node closed the pipe
        try:
            text = parse_document(header["name"], data, max_pages=header["max_pages"])
            size_of = len(text.encode("utf-8"))
            if size_of > header["max_text_bytes"]:
                raise DocumentRejected(
                    "too_large",
                    f"its text is {size_of} bytes; at most {header['max_text_bytes']}",
                )
            answer({"text": text})
        except DocumentRejected as exc:
            answer({"kind": exc.kind, "reason": exc.reason})
        except MemoryError:
            answer({"kind": "too_large", "reason": "parsing it needs more memory than allowed"})
        except Exception:
            answer({"kind": "unreadable", "reason": "not readable as its file type"})
        del data


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
