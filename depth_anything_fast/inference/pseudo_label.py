"""The pseudo-labelling engine: list -> shard -> skip finished -> load -> predict -> write.

Pipeline (one process per rank):
  * the data loader (DALI or PIL, threads) decodes and resizes with aspect-ratio bucketing,
    making batches on the model's device (on CUDA the resize runs there), and a prefetch thread
    keeps up to `prefetch` batches ready;
  * the main thread only launches work: autocast forward, optional resize to the original
    size, and a non-blocking device->host copy with a CUDA event;
  * writer threads wait on that event, encode (16-bit PNG / .npy / tar member), write atomically
    and append the manifest line, so the device never waits for encoding or disk.

Resume (`inference.resume`): every rank reads all manifests in the output directory, keeps the
records whose output still exists with the recorded size (or checksum with
`verify_checksum=True`) and skips those inputs. Sharding (`items[rank::world_size]` of the
sorted input list) happens before that filtering so all ranks agree on it however far each has
got. `run_config.json` holds the weights' sha256 and the settings that change the outputs: a
rerun with other weights (also new weights copied over the old file) or settings is refused
unless `overwrite`. A lock file per rank refuses a second run writing the same rank's outputs at
the same time.

Faults: the output folder is checked (a folder, writable, room for an output) before the model
runs; a disk that fills up or turns read-only stops the run at once with the reason in the
`Summary`, leaving complete outputs, their manifest lines and no temporary file.

Counts in the `Summary`: `succeeded` = written in this run, `skipped` = already finished before
this run, `failed` = inputs that could not be decoded, predicted or written, and listed files
that do not exist (each with the reason in `errors.jsonl` / `errors.rank{r}.jsonl`),
`unsupported` = files of the input folder that are not supported images (listed there too, not
failures); `error` = why the run stopped early (outputs could not be written).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from depth_anything_fast.data import inference_loader
from depth_anything_fast.formats.codec import FORMATS, output_suffix, stored_spec
from depth_anything_fast.formats.images import IMAGE_EXTENSIONS, find_images
from depth_anything_fast.formats.manifest import ErrorLog, errors_name
from depth_anything_fast.formats.names import output_names
from depth_anything_fast.formats.paths import TAR_SEP
from depth_anything_fast.formats.spec import SPEC_FILE
from depth_anything_fast.inference.predictor import Predictor, load_model, metric_max_depth
from depth_anything_fast.inference.resume import check_resumable, run_config, unfinished
from depth_anything_fast.inference.writers import (
    LabelWriter,
    atomic_write,
    check_output_dir,
    is_fatal_write_error,
    make_output_dir,
    remove_stale_temporaries,
)
from depth_anything_fast.runtime import StopSignals, launch_env
from depth_anything_fast.transforms import resize_prediction

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_OUTPUT_ERROR, EXIT_INTERRUPTED = 0, 1, 3, 130


@dataclass
class Summary:
    """Outcome of one `pseudo_label` call on one rank."""

    total: int  # inputs in this rank's shard
    succeeded: int
    skipped: int
    failed: int
    interrupted: bool
    elapsed_s: float
    rank: int = 0
    world_size: int = 1
    unsupported: int = 0  # files of the input folder that are not supported images
    error: str | None = None  # why the run stopped early (outputs could not be written)

    @property
    def images_per_s(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some inputs failed, 3 stopped by an output error (disk full,
        read-only), 130 interrupted (the CLI's exit status)."""
        if self.error:
            return EXIT_OUTPUT_ERROR
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.failed else EXIT_OK

    def line(self, who: str | None = None) -> str:
        """One-line report; `who` prefixes it (default "rank r/w: " under several ranks)."""
        if who is None:
            who = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        state = f"stopped ({self.error}), " if self.error else (
            "interrupted, " if self.interrupted else "")
        other = f", {self.unsupported} unsupported files skipped" if self.unsupported else ""
        return (
            f"{who}{state}{self.succeeded} succeeded, {self.skipped} skipped (already done), "
            f"{self.failed} failed of {self.total}{other} in {self.elapsed_s:.1f}s "
            f"({self.images_per_s:.2f} images/s)"
        )


@dataclass
class Options:
    """Options of `pseudo_label` (see the `pseudo-label` command for their meaning)."""

    batch_size: int = 8
    precision: str = "auto"
    compile: bool = False
    input_size: int = 518
    resize: str = "keep-aspect"
    format: str = "png16"
    original_size: bool = False
    # None: `default_threads` (decode threads, encode/write threads)
    num_workers: int | None = None  # loader decode threads
    writer_threads: int | None = None
    backend: str = "auto"  # loader backend: auto | dali | pil
    runtime: str = "auto"  # what runs the model (`inference.runtimes`)
    device: str | None = None
    rank: int | None = None  # default: $RANK (torchrun) or 0
    world_size: int | None = None  # default: $WORLD_SIZE or 1
    verify_checksum: bool = False
    shard_size: int = 1000  # members per tar shard (format webdataset)
    prefetch: int = 2  # batches decoded ahead of the model
    progress: bool = False
    handle_signals: bool = True  # first SIGINT/SIGTERM stops cleanly (main thread only)
    # start afresh in an output folder made with other weights or settings (single process)
    overwrite: bool = False
    # architecture hints for checkpoints that do not say (`DepthAnything.from_pretrained`)
    version: str | None = None
    metric: bool | None = None
    max_depth: float | None = None


def default_threads(device: torch.device) -> tuple[int, int]:
    """(decode threads, encode/write threads) for a rank. On CUDA both must keep pace with the
    GPU: its share of this machine's cores (at most 16) decodes and half of it encodes (a 16-bit
    PNG of a 518x784 map costs about as much as decoding a 3 MP JPEG); on the CPU 2 and 2,
    leaving the cores to the model."""
    if device.type != "cuda":
        return 2, 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = launch_env().local_world_size
    share = max(2, min(16, (cores or 2) // max(1, local_ranks)))
    return share, max(2, share // 2)


def combine_summaries(summary: Summary) -> Summary:
    """Sum of the ranks' summaries (elapsed = the slowest rank), via the initialised default
    process group; every rank gets the total."""
    import torch.distributed as dist

    counts = torch.tensor(
        [summary.total, summary.succeeded, summary.skipped, summary.failed, summary.interrupted,
         summary.unsupported, summary.error is not None],
        dtype=torch.float64,
    )
    elapsed = torch.tensor([summary.elapsed_s], dtype=torch.float64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    total, succeeded, skipped, failed, interrupted, unsupported, errors = (
        int(v) for v in counts.tolist())
    error = f"{errors} ranks could not write their outputs" if errors else None
    return Summary(total, succeeded, skipped, failed, interrupted > 0, float(elapsed), 0,
                   summary.world_size, unsupported, error)


class _OutputLock:
    """An exclusive lock on `<output>/.lock.r<rank>` (released when the process ends, also by
    a kill): a second run into the same folder and rank is refused instead of repeating the
    work and the manifest lines."""

    def __init__(self, output_dir: Path, rank: int) -> None:
        self.path = output_dir / f".lock.r{rank}"
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"another pseudo-label run (pid {holder}) is writing rank {rank}'s outputs into "
                f"{output_dir}: wait for it to finish, or use another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Prefetcher:
    """Iterates `source` on a thread, up to `depth` items ahead; re-raises its exceptions."""

    _END = object()

    def __init__(self, source: Iterable[Any], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(source,), name="daf-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable[Any]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer thread
            self._put(exc)
            return
        self._put(self._END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def pseudo_label(
    weights_or_model: str | os.PathLike[str] | torch.nn.Module | None,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    **options: Any,
) -> Summary:
    """Predict and store the disparity (metric models: depth in metres) of every image under
    `input` into `output`.

    Args:
        weights_or_model: checkpoint path (any format `DepthAnything.from_pretrained` reads) or a
            model. None raises ValueError saying where to get official checkpoints.
        input: directory (recursive), list file, glob or webdataset .tar shards
            (`depth_anything_fast.formats.images.find_images`).
        output: output directory. Layout: `<relative input path without ext>.png` (16-bit,
            codes 0..65535 = manifest min..max; metric models: min 0, max = max_depth for every
            map) or `.npy` (float32), or for format "webdataset" `shard-r<rank>-<index>.tar`
            with members named like the files; `manifest.jsonl` / `manifest.rank{r}.jsonl`,
            `errors.jsonl` / `errors.rank{r}.jsonl` (absolute input paths: inputs that failed,
            listed files that are missing, and files of the input folder that are not supported
            images), `run_config.json` (the weights' sha256 and the settings a rerun must
            match), and `spec.json` (the `LabelledSpec` that reads the maps back as training
            targets: kind "disparity", or "depth" for a metric model).
        **options: fields of `Options`.

    Returns:
        This rank's `Summary`. Stored maps have the network resolution (the resize rule's
        (h, w), multiples of 14) unless `original_size=True`. A disk that fills up (or turns
        read-only) stops the run at once: `Summary.error` says so, no temporary file is left.

    Raises:
        ValueError: bad options, an output folder that cannot be written or is in use by
            another run, or that holds labels of other weights or settings.
        FileNotFoundError: no images in `input`.
    """
    opts = Options(**options)
    if opts.format not in FORMATS:
        raise ValueError(f"unknown format {opts.format!r}; expected one of {FORMATS}")
    rank, world, device = _placement(opts)
    src = os.fspath(input)
    output_dir = Path(output)
    check_output_dir(output_dir)  # before the model is loaded or anything is written
    model = load_model(weights_or_model, version=opts.version, metric=opts.metric,
                       max_depth=opts.max_depth)
    paths, missing, unsupported = _list_inputs(src, output_dir)
    names = output_names(src, paths, output_suffix(opts.format))
    make_output_dir(output_dir, rank, min_free=_map_bytes(opts))
    lock = _OutputLock(output_dir, rank)
    try:
        check_resumable(output_dir, run_config(weights_or_model, model, vars(opts)), opts.overwrite)
        # how data.LabelledSource (training) and evaluate read the outputs back
        depth_range = metric_max_depth(model)
        atomic_write(output_dir / SPEC_FILE, stored_spec(opts.format, depth_range).dumps().encode(),
                     rank)
        remove_stale_temporaries(output_dir, rank)
        mine = list(zip(paths, names, strict=True))[rank::world]
        listing = (missing, unsupported) if rank == 0 else ([], [])  # recorded once
        return _label(model, mine, output_dir, opts, rank, world, device, depth_range, listing)
    finally:
        lock.release()


def _placement(opts: Options) -> tuple[int, int, str | None]:
    """(rank, world size, device) of this process: the options, else torchrun's environment
    (a CUDA device per local rank when CUDA is available)."""
    env = launch_env()
    rank = env.rank if opts.rank is None else opts.rank
    world = env.world_size if opts.world_size is None else opts.world_size
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world_size {world}")
    if opts.overwrite and world > 1:
        raise ValueError("--overwrite runs in a single process (ranks would remove each "
                         "other's records); clear the folder or use a new --output instead")
    device = opts.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{env.local_rank % torch.cuda.device_count()}"
    return rank, world, device


def _list_inputs(src: str, output_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(images, listed files that do not exist, files of an input folder that are not
    supported images); outputs written inside the input tree are not inputs of a rerun."""
    out_abs = os.path.abspath(output_dir) + os.sep

    def outside(path: str) -> bool:
        return not os.path.abspath(path).startswith(out_abs)

    listing = find_images(src)  # one walk of a folder: its images and its other files
    listed = [p for p in listing.images if outside(p)]
    # a walked folder's files exist; a list file's rows may not
    missing = [] if os.path.isdir(src) else [
        p for p in listed if TAR_SEP not in p and not os.path.isfile(p)]
    unsupported = [p for p in listing.others if outside(p)]
    paths = sorted(set(listed) - set(missing))
    if not paths:
        gone = f" ({len(missing)} listed files do not exist)" if missing else ""
        raise FileNotFoundError(f"no images found in {src}{gone}")
    return paths, sorted(missing), sorted(unsupported)


def _map_bytes(opts: Options) -> int:
    """About the size of one stored map at the network resolution (4:3 images)."""
    per_pixel = 4 if opts.format == "npy" else 2
    return int(opts.input_size * opts.input_size * 4 / 3 * per_pixel)


def _todo(mine: list[tuple[str, str]], output_dir: Path,
          opts: Options) -> list[tuple[str, str]]:
    """The pairs of `mine` whose output the manifests do not record as finished; warns when
    the disk looks too small for them."""
    todo = unfinished(mine, output_dir, opts.verify_checksum)
    need, free = len(todo) * _map_bytes(opts), shutil.disk_usage(output_dir).free
    if need > free:
        logger.warning("%s: %.0f MB free, the %d outputs to write need about %.0f MB: the run "
                       "will stop when the disk is full", output_dir, free / 1e6, len(todo),
                       need / 1e6)
    return todo


def _label(
    model: torch.nn.Module,
    mine: list[tuple[str, str]],
    output_dir: Path,
    opts: Options,
    rank: int,
    world: int,
    device: str | None,
    depth_range: float | None,
    listing: tuple[list[str], list[str]],
) -> Summary:
    """Predict and write this rank's share `mine` of (input, output name) pairs."""
    todo = _todo(mine, output_dir, opts)
    predictor = Predictor(model, batch_size=opts.batch_size, precision=opts.precision,
                          compile=opts.compile, input_size=opts.input_size, resize=opts.resize,
                          device=device, runtime=opts.runtime)
    errors = ErrorLog(output_dir / errors_name(rank, world))
    decode_threads, write_threads = default_threads(predictor.device)
    writer = LabelWriter(
        output_dir, format=opts.format, depth_range=depth_range, errors=errors, rank=rank,
        world_size=world, shard_size=opts.shard_size,
        threads=opts.writer_threads if opts.writer_threads is not None else write_threads,
    )  # fmt: skip
    missing, unsupported = listing
    start = time.perf_counter()
    stop = StopSignals(install=opts.handle_signals, what="after the current batch")
    try:
        for path in missing:
            errors.add(path, "file not found (listed in the input)", "list")
        for path in unsupported:
            errors.add(path, f"not a supported image type; supported: {' '.join(IMAGE_EXTENSIONS)}",
                       "list", count=False)
        with stop:
            _predict_and_write(predictor, todo, writer, opts, errors, stop, decode_threads)
    except OSError as exc:  # the errors file could not be written
        if not is_fatal_write_error(exc):
            raise
        writer.fatal = exc
    finally:
        fatal = writer.close()
        errors.close()
    error = None
    if fatal is not None:
        remove_stale_temporaries(output_dir, rank)
        error = (f"cannot write to {output_dir}: {fatal.strerror or fatal}; the outputs written "
                 "are complete and a rerun resumes")
    return Summary(
        total=len(mine) + len(missing),
        succeeded=writer.succeeded,
        skipped=len(mine) - len(todo),
        failed=errors.count,
        interrupted=stop.requested,
        elapsed_s=time.perf_counter() - start,
        rank=rank,
        world_size=world,
        unsupported=len(unsupported),
        error=error,
    )


def _predict_and_write(
    predictor: Predictor,
    todo: list[tuple[str, str]],
    writer: LabelWriter,
    opts: Options,
    errors: ErrorLog,
    stop: StopSignals,
    decode_threads: int,
) -> None:
    """The loop: load -> predict -> hand each map with its output name to the writer, until
    done, stopped or the writer meets a fatal write error."""
    progress = None
    if opts.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), unit="img", dynamic_ncols=True,
                        disable=writer.rank != 0)  # fmt: skip
    prefetcher = None
    try:
        if todo:
            prefetcher = _prefetched_batches(predictor, todo, opts, errors, decode_threads)
        for batch in prefetcher or ():
            if stop.requested or writer.stopped:
                break
            maps, ready = _maps_on_host(predictor, batch, opts.original_size)
            for path, name, item in zip(batch["paths"], batch["names"], maps, strict=True):
                writer.submit(path, name, item, ready)
            if progress is not None:
                progress.update(len(batch["paths"]))
    finally:
        if prefetcher is not None:
            prefetcher.close()
        if progress is not None:
            progress.close()


def _prefetched_batches(predictor: Predictor, todo: list[tuple[str, str]], opts: Options,
                        errors: ErrorLog, decode_threads: int) -> _Prefetcher:
    """The inference loader's batches of the (path, output name) pairs `todo` on
    `predictor.device` (each batch with its "names"), iterated on a thread
    of their own: the loader's generator (reading, probing, submitting) would otherwise run on
    this thread between forward passes; there it overlaps with the model."""
    loader = inference_loader(
        [path for path, _ in todo],
        names=[name for _, name in todo],
        batch_size=opts.batch_size,
        input_size=opts.input_size,
        resize=opts.resize,
        shard_id=0,  # sharded by the caller, before skipping finished items
        num_shards=1,
        backend=opts.backend,
        device=predictor.device,  # on CUDA, DALI decodes JPEGs on the GPU
        num_threads=opts.num_workers if opts.num_workers is not None else decode_threads,
        prefetch=opts.prefetch,
        on_error=lambda path, reason: errors.add(path, reason, "decode"),
    )
    return _Prefetcher(loader, opts.prefetch)


def _maps_on_host(
    predictor: Predictor, batch: dict[str, Any], original_size: bool
) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Launch the forward pass of a loader `batch` -> (one float32 map per image: (h, w) at
    the network resolution, or (H0, W0) with `original_size`; the event set once they are on
    the host, or None when they are CPU tensors already)."""
    disparity = predictor.predict_tensor(batch["image"])
    maps = [
        resize_prediction(disparity[row : row + 1], tuple(size))[0] if original_size
        else disparity[row]
        for row, size in enumerate(batch["sizes"])
    ]
    if predictor.device.type != "cuda":
        return maps, None
    # Copies back into pinned memory are queued behind the forward pass; the writer threads
    # wait on the event, so this thread goes on to launch the next batch.
    hosts = [torch.empty(t.shape, dtype=torch.float32, pin_memory=True) for t in maps]
    for host, item in zip(hosts, maps, strict=True):
        host.copy_(item, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return hosts, ready
