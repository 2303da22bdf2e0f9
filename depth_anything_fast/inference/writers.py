"""Writing stored maps (encoded by `formats.codec`) atomically on background threads.

`LabelWriter` is the one writer of pseudo-labels: encode -> atomic write (a file, or a member of
a tar shard renamed into place when full) -> manifest line, on a `BackgroundWriter`'s threads.

Every file appears under its final name only through `os.replace` of a complete temporary file
in the same directory, so a process killed at any moment leaves either the old state or the full
new file, never a partial one under the final name. Temporary names carry the rank
(`.<name>.r<rank>.tmp`) so ranks never touch each other's temporaries and a rerun can remove its
own leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from depth_anything_fast.formats.codec import encode
from depth_anything_fast.formats.manifest import (
    ErrorLog,
    Manifest,
    ManifestRecord,
    checksum,
    manifest_name,
)
from depth_anything_fast.formats.paths import TAR_SEP

# Write errors that every later write would hit too (disk full, quota, read-only file system):
# the run stops at once instead of failing input after input.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputWriteError(OSError):
    """Outputs cannot be written at all any more (disk full, quota, read-only): run stopped."""


def is_fatal_write_error(exc: BaseException) -> bool:
    """Whether `exc` is a write error that every later write would hit too."""
    return isinstance(exc, OSError) and exc.errno in FATAL_WRITE_ERRNOS


def check_output_dir(path: str | os.PathLike[str], flag: str = "--output") -> None:
    """Raise ValueError when `path` cannot become an output directory (it or a parent is a
    file, or the nearest existing folder is not writable), without creating anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a directory")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a directory")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable")


def make_output_dir(path: str | os.PathLike[str], rank: int = 0, flag: str = "--output",
                    min_free: int = 0) -> Path:
    """Create `path` and prove it writable with a small probe file; ValueError naming the
    problem otherwise (also when fewer than `min_free` bytes are free on its disk)."""
    check_output_dir(path, flag)
    path = Path(path)
    probe = path / f".write-probe.r{rank}.tmp"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0")
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(path).free
    if free < min_free:
        raise ValueError(f"{flag} {path}: only {free / 1e6:.1f} MB free on its disk, "
                         f"not enough for one output ({min_free / 1e6:.1f} MB)")
    return path


def temp_path(final: Path, rank: int) -> Path:
    """Temporary name next to `final` owned by `rank`."""
    return final.with_name(f".{final.name}.r{rank}.tmp")


def atomic_write(final: Path, data: bytes, rank: int = 0) -> None:
    """Write `data` to `final` through a temporary file and `os.replace`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, rank)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a partial hidden file
        raise


def remove_stale_temporaries(root: Path, rank: int) -> int:
    """Delete temporaries of `rank` left under `root` by a killed run; returns how many."""
    suffix = f".r{rank}.tmp"
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(suffix):
                os.remove(os.path.join(dirpath, name))
                removed += 1
    return removed


class BackgroundWriter:
    """Runs encode+write jobs on a thread pool with bounded backlog.

    `submit` blocks while `max_pending` jobs are queued, so a slow disk throttles the producer
    instead of filling memory. `on_done(record)` / `on_error(input, reason)` are called from the
    worker threads when a job finishes. A fatal write error (`is_fatal_write_error`: disk full,
    read-only) is not an input's failure: it is kept in `fatal`, and later jobs are dropped.
    """

    def __init__(
        self,
        num_threads: int,
        on_done: Callable[[ManifestRecord], None],
        on_error: Callable[[str, str], None],
        max_pending: int | None = None,
    ) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix="daf-writer")
        self._slots = threading.BoundedSemaphore(max_pending or 4 * num_threads)
        self._on_done = on_done
        self._on_error = on_error
        self.fatal: OSError | None = None

    def submit(self, input_path: str, job: Callable[[], ManifestRecord | None]) -> None:
        self._slots.acquire()
        if self.fatal is not None:
            self._slots.release()
            return
        self._pool.submit(self._run, input_path, job)

    def _run(self, input_path: str, job: Callable[[], ManifestRecord | None]) -> None:
        try:
            if self.fatal is not None:
                return
            record = job()
            if record is not None:
                self._on_done(record)
        except Exception as exc:  # reported per input; one bad map must not stop the run
            self._fail(input_path, exc)
        finally:
            self._slots.release()

    def _fail(self, input_path: str, exc: Exception) -> None:
        if not is_fatal_write_error(exc):
            try:
                self._on_error(input_path, f"{type(exc).__name__}: {exc}")
                return
            except OSError as err:  # the error list itself cannot be written
                exc = err
        if self.fatal is None:
            self.fatal = exc  # type: ignore[assignment]

    def close(self) -> None:
        """Wait for every submitted job."""
        self._pool.shutdown(wait=True)


class TarShardWriter:
    """Writes members into tar shards `<prefix>-<index:06d>.tar`, each renamed into place when full.

    Records of a shard's members are handed to `on_done` only after its rename, so a killed
    process loses (and later redoes) at most the open shard. Not thread-safe: use it from one
    thread (e.g. a `BackgroundWriter` with one thread).
    """

    def __init__(
        self,
        output_dir: Path,
        prefix: str,
        on_done: Callable[[ManifestRecord], None],
        *,
        rank: int = 0,
        max_members: int = 1000,
    ) -> None:
        self.output_dir = output_dir
        self.prefix = prefix
        self.rank = rank
        self.max_members = max_members
        self._on_done = on_done
        existing = sorted(output_dir.glob(f"{prefix}-*.tar"))
        self._next_index = 1 + max((_shard_index(p) for p in existing), default=-1)
        self._tar: tarfile.TarFile | None = None
        self._final: Path | None = None
        self._pending: list[ManifestRecord] = []

    def add(self, member: str, data: bytes, record: ManifestRecord) -> None:
        """Append `data` as `member`; `record.output` becomes `<shard>.tar::<member>`."""
        if self._tar is None:
            self._final = self.output_dir / f"{self.prefix}-{self._next_index:06d}.tar"
            self._next_index += 1
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # stays open across add() calls; closed in flush()
            self._tar = tarfile.open(temp_path(self._final, self.rank), "w")  # noqa: SIM115
        assert self._final is not None
        info = tarfile.TarInfo(member)
        info.size = len(data)
        info.mtime = int(time.time())
        self._tar.addfile(info, io.BytesIO(data))
        record.output = f"{self._final.name}{TAR_SEP}{member}"
        self._pending.append(record)
        if len(self._pending) >= self.max_members:
            self.flush()

    def discard(self) -> None:
        """Drop the open shard (after a fatal write error): its temporary file is removed and
        its members are not reported (a rerun writes them again)."""
        if self._tar is None:
            return
        assert self._final is not None
        with contextlib.suppress(OSError):
            self._tar.close()
        temp_path(self._final, self.rank).unlink(missing_ok=True)
        self._tar, self._final, self._pending = None, None, []

    def flush(self) -> None:
        """Close the open shard, rename it into place and report its members."""
        if self._tar is None:
            return
        assert self._final is not None
        self._tar.close()
        os.replace(temp_path(self._final, self.rank), self._final)
        for record in self._pending:
            self._on_done(record)
        self._tar, self._final, self._pending = None, None, []


def _shard_index(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


class LabelWriter:
    """Stores predicted maps as pseudo-labels: encodes each (`formats.codec.encode`: png16, npy,
    webdataset), writes it atomically under its output name (a file, or a member of this rank's
    tar shards `shard-r<rank>-<index>.tar`) and appends its line to this rank's manifest
    (`formats.manifest.manifest_name`), on `threads` background threads. Failed writes go to `errors` (stage "write"); a write error every later
    write would hit too (disk full, read-only) stops the writing: `close` returns it.
    `succeeded` counts the outputs written and recorded.
    """

    def __init__(self, output_dir: Path, *, format: str, depth_range: float | None,
                 errors: ErrorLog, rank: int, world_size: int, threads: int,
                 shard_size: int) -> None:  # fmt: skip
        self.output_dir, self.format, self.depth_range = output_dir, format, depth_range
        self.rank = rank
        self.manifest = Manifest(output_dir / manifest_name(rank, world_size))
        self.succeeded = 0
        self.fatal: OSError | None = None
        self._count_lock, self._tar_lock = threading.Lock(), threading.Lock()
        self._pool = BackgroundWriter(threads, self._record,
                                      lambda path, reason: errors.add(path, reason, "write"))
        self._tar = (TarShardWriter(output_dir, f"shard-r{rank}", self._record, rank=rank,
                                    max_members=shard_size)
                     if format == "webdataset" else None)  # fmt: skip

    @property
    def stopped(self) -> bool:
        """A fatal write error happened: nothing more will be written."""
        return self.fatal is not None or self._pool.fatal is not None

    def submit(self, path: str, name: str, disparity: torch.Tensor,
               ready: torch.cuda.Event | None) -> None:  # fmt: skip
        """Queue the map of input `path` (float32 `(h, w)` on the host; `ready` is set once it is
        there) to be stored as `name`; blocks while the writer threads are behind."""
        self._pool.submit(path, lambda: self._write(path, name, disparity, ready))

    def _write(self, path: str, name: str, disparity: torch.Tensor,
               ready: torch.cuda.Event | None) -> ManifestRecord | None:  # fmt: skip
        if ready is not None:
            ready.synchronize()
        encoded = encode(disparity.numpy(), self.format, self.depth_range)
        record = ManifestRecord(
            # absolute: the manifest is read back (data.sources) from any working directory
            input=os.path.abspath(path), output=name, shape=list(encoded.shape),
            min=encoded.min, max=encoded.max, checksum=checksum(encoded.data),
            bytes=len(encoded.data), format=self.format,
        )
        if self._tar is not None:
            with self._tar_lock:
                self._tar.add(name, encoded.data, record)  # recorded when the shard closes
            return None
        atomic_write(self.output_dir / name, encoded.data, self.rank)
        return record

    def _record(self, record: ManifestRecord) -> None:
        self.manifest.add(record)
        with self._count_lock:
            self.succeeded += 1

    def close(self) -> OSError | None:
        """Wait for every write; close the open tar shard (dropped after a fatal error).
        Returns the fatal write error, if any."""
        try:
            self._pool.close()
            self.fatal = self.fatal or self._pool.fatal
            if self._tar is not None:
                try:
                    if self.fatal is None:
                        self._tar.flush()
                except OSError as exc:
                    if not is_fatal_write_error(exc):
                        raise
                    self.fatal = exc
                self._tar.discard()
        finally:
            self.manifest.close()
        return self.fatal
