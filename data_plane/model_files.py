"""Model files on a node: where each pinned model's GGUF file is, and fetching it.

A pin names its file one of two ways (``shared.config.ModelSpec``): a ``path`` the
operator put on the node, or a ``source`` on the storage link (an artifact store: a
plain HTTP server, or a path on a mount) with the file's sha256 and size. The node keeps
a source's file as ``<models dir>/<sha256>.gguf`` and fetches it when it is missing.

What can't happen, and why:

- A file under its final name that was not checked whole. A fetch streams into a temp
  file in the same directory (``.<sha256>.<random>.part``), hashing and counting as it
  writes, and stops as soon as the source sends more than the pin's size. Only when the
  count and the sha256 are the pin's is the temp file fsynced and renamed into place
  (``os.replace``, atomic within a directory), then the directory fsynced. Any other
  ending deletes the temp file. A crash leaves at most a ``.part`` file, which the next
  start removes; never a partial ``<sha256>.gguf``.
- Two fetches of one file at once. A fetch holds its sha256's lock; the second caller
  waits and then finds the file placed (or, if the first failed, tries itself).
- A fetch on the event loop. :meth:`ModelFiles.ensure` blocks: it runs on a worker
  thread (a staged model's preparation, the start-up check of the saved config) or on
  the fetch's own thread (:meth:`ModelFiles.start`).
- A fetch that lasts as long as the store likes. Each read waits at most the timeout,
  and the whole fetch has a deadline, ``timeout + size / min rate``
  (:func:`fetch_deadline_seconds`): past it the fetch is abandoned, its temp file
  removed, and it fails (:class:`ModelFetchFailed`). A store that sends one byte a
  minute, or a link too slow for the file, can't keep a fetch, or anything waiting on
  it, going for longer.
- A config push waiting on a fetch. The apply path never fetches: it calls
  :meth:`ModelFiles.start`, which returns at once, raising :class:`ModelFetchPending`
  while the file is on its way (the push is refused with 503, the rollout retries) and,
  once, the error of a background fetch that failed. So a slow storage link never holds
  the runtime's apply lock, and a later push (a revoked key) is not kept waiting.

A placed file is still hashed against its pin before it is loaded (the config store's
``ModelFileCheck``, which remembers hashes per path, size and mtime): it may have been
changed since. Fetches in progress are in the node's health with their byte counts.
Nothing here touches client content.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.config import ModelSpec
from shared.keys import fsync_dir

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
PART_SUFFIX = ".part"


class ModelFetchFailed(Exception):
    """The file could not be fetched (source unreachable, an HTTP error, a timeout, the
    models directory not writable): trying again later may work."""


class ModelFileMismatch(Exception):
    """The source served a file that is not the pin's (its size or sha256): not placed."""


class ModelFetchPending(Exception):
    """The file is being fetched in the background: ask again once it is in place."""


def fetch_deadline_seconds(timeout_seconds: float, size: int, min_bytes_per_second: int) -> float:
    """How long a fetch of ``size`` bytes may take in all: the time to connect and get
    going (one timeout), plus the file at the slowest rate the node accepts."""
    return timeout_seconds + size / min_bytes_per_second


def model_file_path(spec: ModelSpec, models_dir: Path) -> str:
    """Where the node reads ``spec``'s file: its ``path``, or ``<models_dir>/<sha256>.gguf``."""
    if spec.source is None:
        assert spec.path is not None  # the contract names exactly one of the two
        return spec.path
    return str(models_dir / f"{spec.sha256}.gguf")


@dataclass
class _Fetch:
    name: str
    sha256: str
    size: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "bytes_done": self.done,
            "size": self.size,
            "seconds": int(time.monotonic() - self.started),  # signed health: no floats
        }


class ModelFiles:
    """The node's models directory and the fetches into it."""

    def __init__(
        self, models_dir: Path, timeout_seconds: float, min_bytes_per_second: int = 1 << 20
    ) -> None:
        self.dir = models_dir
        self._timeout = timeout_seconds
        self._min_rate = min_bytes_per_second
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._fetches: dict[str, _Fetch] = {}
        # Background fetches (start): started and not finished, and the error of one
        # that failed, kept until the next start of that file reports it.
        self._background: set[str] = set()
        self._failed: dict[str, Exception] = {}
        self._closing = threading.Event()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Left by a fetch this process's predecessor did not finish; nothing fetches yet.
        for stale in self.dir.glob(f".*{PART_SUFFIX}"):
            stale.unlink(missing_ok=True)

    def path(self, spec: ModelSpec) -> str:
        return model_file_path(spec, self.dir)

    def fetches(self) -> list[dict[str, Any]]:
        """The fetches running now: model name, sha256, bytes done of size, seconds."""
        with self._guard:
            return [f.summary() for f in self._fetches.values()]

    def missing(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` names a source whose file is not in place (yet)."""
        return spec.source is not None and not Path(self.path(spec)).exists()

    def start(self, spec: ModelSpec, placed: Callable[[], None]) -> None:
        """Return at once if ``spec``'s file needs no fetch; otherwise make sure a fetch
        of it runs in the background and raise :class:`ModelFetchPending`.

        ``placed`` is called (on the fetch's thread) when that fetch places the file. The
        error of a background fetch that failed is raised once, by the next call for that
        file; the call after starts a new fetch.
        """
        if spec.source is None:
            return
        with self._guard:
            if spec.sha256 in self._background or spec.sha256 in self._fetches:
                raise ModelFetchPending(self._pending_message(spec))
            failed = self._failed.pop(spec.sha256, None)
            if failed is not None:
                raise failed
            if Path(self.path(spec)).exists():
                return
            self._background.add(spec.sha256)
        threading.Thread(
            target=self._fetch_in_background,
            args=(spec, placed),
            name=f"model-fetch-{spec.sha256[:12]}",
            daemon=True,
        ).start()
        raise ModelFetchPending(self._pending_message(spec))

    def _pending_message(self, spec: ModelSpec) -> str:
        fetch = self._fetches.get(spec.sha256)
        done = f"{fetch.done} of {fetch.size} bytes" if fetch else "starting"
        return (
            f"model {spec.name}: its file is being fetched from the storage link ({done}); "
            "this config applies once it is in place"
        )

    def _fetch_in_background(self, spec: ModelSpec, placed: Callable[[], None]) -> None:
        try:
            if self.ensure(spec):
                placed()
        except (ModelFetchFailed, ModelFileMismatch) as exc:
            logger.warning("model file fetch failed name=%s: %s", spec.name, exc)
            with self._guard:
                self._failed[spec.sha256] = exc
        except Exception as exc:  # a bug: report it as a failed fetch, not a lost thread
            logger.exception("model file fetch crashed name=%s", spec.name)
            with self._guard:
                self._failed[spec.sha256] = ModelFetchFailed(
                    f"model {spec.name}: the fetch failed ({type(exc).__name__})"
                )
        finally:
            with self._guard:
                self._background.discard(spec.sha256)

    def close(self) -> None:
        """Abandon the fetches running (their temp files are removed); none starts after."""
        self._closing.set()

    def ensure(self, spec: ModelSpec) -> bool:
        """Fetch ``spec``'s file if it names a source and the file is not in place yet.

        Blocks for as long as the fetch takes: call it on a worker thread. Returns True
        when this call placed the file (its sha256 was checked while it streamed).
        Raises :class:`ModelFileMismatch` or :class:`ModelFetchFailed`; either way
        nothing is placed.
        """
        if spec.source is None:
            return False
        target = Path(self.path(spec))
        with self._lock(spec.sha256):
            if target.exists():
                return False
            self._fetch(spec, target)
            return True

    def _lock(self, sha256: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sha256, threading.Lock())

    def _fetch(self, spec: ModelSpec, target: Path) -> None:
        assert spec.size is not None  # the contract requires it with a source
        fetch = _Fetch(spec.name, spec.sha256, spec.size)
        limit = fetch_deadline_seconds(self._timeout, spec.size, self._min_rate)
        deadline = fetch.started + limit
        with self._guard:
            self._fetches[spec.sha256] = fetch
        placed = False
        part = ""
        try:
            fd, part = tempfile.mkstemp(dir=self.dir, prefix=f".{spec.sha256}.", suffix=PART_SUFFIX)
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, contextlib.closing(self._blocks(spec)) as blocks:
                for block in blocks:
                    if self._closing.is_set():
                        raise ModelFetchFailed(f"model {spec.name}: the node is shutting down")
                    if time.monotonic() > deadline:
                        # A read waits at most the timeout, so this is reached at most one
                        # timeout late, however slowly the store trickles.
                        raise ModelFetchFailed(
                            f"model {spec.name}: the fetch ran past its deadline of "
                            f"{limit:.0f} s ({fetch.done} of {spec.size} bytes; "
                            "SANCTUM_DP_MODEL_FETCH_MIN_BYTES_PER_SECOND)"
                        )
                    fetch.done += len(block)
                    if fetch.done > spec.size:
                        raise ModelFileMismatch(
                            f"model {spec.name}: the source sent more than the pin's "
                            f"{spec.size} bytes"
                        )
                    digest.update(block)
                    out.write(block)
                if fetch.done != spec.size:
                    raise ModelFileMismatch(
                        f"model {spec.name}: the source sent {fetch.done} bytes, "
                        f"the pin says {spec.size}"
                    )
                if digest.hexdigest() != spec.sha256:
                    raise ModelFileMismatch(
                        f"model {spec.name}: the fetched file's sha256 is "
                        f"{digest.hexdigest()}, the pin says {spec.sha256}"
                    )
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, target)
            placed = True
            fsync_dir(self.dir)
        except OSError as exc:
            raise ModelFetchFailed(
                f"model {spec.name}: can't write to the models directory: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        finally:
            if part and not placed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
            with self._guard:
                self._fetches.pop(spec.sha256, None)
        logger.info(
            "model file fetched name=%s bytes=%d seconds=%.1f",
            spec.name,
            fetch.done,
            time.monotonic() - fetch.started,
        )

    def _blocks(self, spec: ModelSpec) -> Generator[bytes]:
        assert spec.source is not None and spec.size is not None
        if spec.source.startswith("/"):
            return _file_blocks(spec.name, spec.source, spec.size)
        return self._http_blocks(spec.name, spec.source, spec.size)

    def _http_blocks(self, name: str, url: str, size: int) -> Generator[bytes]:
        # No redirects (the store is on the storage link; a redirect could lead off it),
        # no proxies from the environment, no content decoding: the bytes are the file.
        try:
            with (
                httpx.Client(
                    timeout=httpx.Timeout(self._timeout), follow_redirects=False, trust_env=False
                ) as client,
                client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response,
            ):
                if response.status_code != 200:
                    raise ModelFetchFailed(
                        f"model {name}: the source answered HTTP {response.status_code}"
                    )
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) != size:
                    raise ModelFileMismatch(
                        f"model {name}: the source serves {int(length)} bytes, the pin says {size}"
                    )
                # Blocks as they arrive (a size would buffer until it is reached, and a
                # trickling store would never let the deadline be checked).
                yield from response.iter_raw()
        except httpx.HTTPError as exc:
            raise ModelFetchFailed(
                f"model {name}: fetching from the source failed ({type(exc).__name__})"
            ) from None


def _file_blocks(name: str, source: str, size: int) -> Generator[bytes]:
    try:
        with open(source, "rb") as fh:
            actual = os.fstat(fh.fileno()).st_size
            if actual != size:
                raise ModelFileMismatch(
                    f"model {name}: the source file is {actual} bytes, the pin says {size}"
                )
            while block := fh.read(CHUNK_BYTES):
                yield block
    except OSError as exc:
        raise ModelFetchFailed(
            f"model {name}: can't read the source: {exc.strerror or type(exc).__name__}"
        ) from None
