"""The pseudo-labelling engine: list -> shard -> skip finished -> load -> predict -> write.

Pipeline (one process per rank):
  * the data loader (DALI or PIL, threads) decodes and resizes with aspect-ratio bucketing,
    making batches on the model's device (on CUDA the resize runs there), and a prefetch thread
    keeps up to `prefetch` batches ready;
  * the main thread only launches work: autocast forward, optional resize to the original
    size, and a non-blocking device->host copy with a CUDA event;
  * writer threads wait on that event, encode (16-bit PNG / .npy / tar member), write atomically
    and append the manifest line, so the device never waits for encoding or disk.

Resume: every rank reads all manifests in the output directory, keeps the records whose output
still exists with the recorded size (or checksum with `verify_checksum=True`) and skips those
inputs. Sharding (`items[rank::world_size]` of the sorted input list) happens before that
filtering so all ranks agree on it however far each has got.

Counts in the `Summary`: `succeeded` = written in this run, `skipped` = already finished before
this run, `failed` = inputs that could not be decoded, predicted or written (listed with the
reason in `errors.jsonl` / `errors.rank{r}.jsonl`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from depth_anything_fast.formats.codec import FORMATS, encode, output_suffix, stored_spec
from depth_anything_fast.formats.manifest import (
    ErrorLog,
    Manifest,
    ManifestRecord,
    checksum,
    errors_name,
    finished_records,
    manifest_name,
)
from depth_anything_fast.inference.predictor import Predictor, load_model, metric_max_depth
from depth_anything_fast.inference.writers import (
    BackgroundWriter,
    TarShardWriter,
    atomic_write,
    remove_stale_temporaries,
)

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
# options that change the stored values or names: a resumed run must use the same ones
_RESUME_KEYS = ("weights", "input_size", "resize", "format", "original_size")

EXIT_OK, EXIT_FAILURES, EXIT_INTERRUPTED = 0, 1, 130


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

    @property
    def images_per_s(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some inputs failed, 130 interrupted (the CLI's exit status)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.failed else EXIT_OK

    def line(self, who: str | None = None) -> str:
        """One-line report; `who` prefixes it (default "rank r/w: " under several ranks)."""
        if who is None:
            who = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        state = "interrupted, " if self.interrupted else ""
        return (
            f"{who}{state}{self.succeeded} succeeded, {self.skipped} skipped (already done), "
            f"{self.failed} failed of {self.total} in {self.elapsed_s:.1f}s "
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
    device: str | None = None
    rank: int | None = None  # default: $RANK (torchrun) or 0
    world_size: int | None = None  # default: $WORLD_SIZE or 1
    verify_checksum: bool = False
    shard_size: int = 1000  # members per tar shard (format webdataset)
    prefetch: int = 2  # batches decoded ahead of the model
    progress: bool = False
    handle_signals: bool = True  # first SIGINT/SIGTERM stops cleanly (main thread only)


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment, (0, 1, 0) without it."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} for WORLD_SIZE={world}")
    return rank, world, local


def default_threads(device: torch.device) -> tuple[int, int]:
    """(decode threads, encode/write threads) for a rank. On CUDA both must keep pace with the
    GPU: its share of this machine's cores (at most 16) decodes and half of it encodes (a 16-bit
    PNG of a 518x784 map costs about as much as decoding a 3 MP JPEG); on the CPU 2 and 2,
    leaving the cores to the model."""
    if device.type != "cuda":
        return 2, 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    share = max(2, min(16, (cores or 2) // max(1, local_ranks)))
    return share, max(2, share // 2)


def combine_summaries(summary: Summary) -> Summary:
    """Sum of the ranks' summaries (elapsed = the slowest rank), via the initialised default
    process group; every rank gets the total."""
    import torch.distributed as dist

    counts = torch.tensor(
        [summary.total, summary.succeeded, summary.skipped, summary.failed, summary.interrupted],
        dtype=torch.float64,
    )
    elapsed = torch.tensor([summary.elapsed_s], dtype=torch.float64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    total, succeeded, skipped, failed, interrupted = (int(v) for v in counts.tolist())
    return Summary(
        total, succeeded, skipped, failed, interrupted > 0, float(elapsed), 0, summary.world_size
    )


def _listing_root(src: str, paths: list[str]) -> str:
    """Absolute directory that output names are made relative to: `src` itself for a directory;
    for a glob its fixed leading folders (names keep the folders the pattern walked), when every
    match lies under them; else the deepest folder holding all `paths`. An existing file (list
    file, image) is never read as a glob, even with `[`, `*` or `?` in its name."""
    if os.path.isdir(src):
        return os.path.abspath(src)
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(dirs) if dirs else os.path.abspath(".")
    if glob.has_magic(src) and not os.path.exists(src):
        static = []
        for part in Path(src).parts:
            if glob.has_magic(part):
                break
            static.append(part)
        prefix = os.path.abspath(os.path.join(*static) if static else ".")
        # a pattern matching list files or shards names images elsewhere
        if os.path.commonpath([prefix, common]) == prefix:
            return prefix
    return common


def output_names(src: str, paths: list[str], suffix: str) -> list[str]:
    """Output name (relative, POSIX) of each input: its path relative to the source root (the
    member name for `shard.tar::member` inputs) with the extension replaced by `suffix`.

    Inputs whose names would collide (a.jpg and a.png in one folder) keep their extension:
    `a.jpg.png`, `a.png.png`. Raises ValueError if names still collide (same member in two
    shards) or a name would leave the output directory (a tar member `../x.jpg`).
    """
    from depth_anything_fast.formats.paths import TAR_SEP

    files = [p for p in paths if TAR_SEP not in p]
    root = _listing_root(src, files) if files else ""
    rel = [
        p.split(TAR_SEP, 1)[1]
        if TAR_SEP in p
        else Path(os.path.relpath(os.path.abspath(p), root)).as_posix()
        for p in paths
    ]
    for path, name in zip(paths, rel, strict=True):
        parts = Path(name).parts
        # a tar member named "../x.jpg" or "/x.jpg" would be written outside the output directory
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"{path}: its output name {name!r} leaves the output directory")
    stems = [os.path.splitext(r)[0] for r in rel]
    counts = Counter(stems)
    names = [
        (stem if counts[stem] == 1 else r) + suffix for stem, r in zip(stems, rel, strict=True)
    ]
    check_unique_names(names)
    return names


def check_unique_names(names: list[str]) -> None:
    """Raise ValueError naming the output names that several inputs map to (one would
    silently overwrite the other)."""
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise ValueError(f"several inputs map to the output names {duplicates[:5]}; rename them")


def _check_run_config(output_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to mix outputs of different settings in one directory; record them otherwise."""
    path = output_dir / RUN_CONFIG
    if path.exists():
        previous = json.loads(path.read_text())
        changed = {
            k: (previous.get(k), config[k]) for k in _RESUME_KEYS if previous.get(k) != config[k]
        }
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{output_dir} holds outputs made with other settings ({detail}); "
                "use another --output directory or the original settings"
            )
        return
    atomic_write(path, (json.dumps(config, indent=1) + "\n").encode(), rank=int(os.getpid()))


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


class _StopFlag:
    """Set by the first SIGINT/SIGTERM; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self, install: bool) -> None:
        self.is_set = False
        self._previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.is_set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.is_set = True
        logger.warning("stopping after the current batch (signal %d); again to abort", signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
            (`depth_anything_fast.formats.images.list_images`).
        output: output directory. Layout: `<relative input path without ext>.png` (16-bit,
            codes 0..65535 = manifest min..max; metric models: min 0, max = max_depth for every
            map) or `.npy` (float32), or for format "webdataset" `shard-r<rank>-<index>.tar`
            with members named like the files; `manifest.jsonl` / `manifest.rank{r}.jsonl`,
            `errors.jsonl` / `errors.rank{r}.jsonl`, `run_config.json`, and `spec.json` (the
            `LabelledSpec` that reads the maps back as training targets: kind "disparity", or
            "depth" for a metric model).
        **options: fields of `Options`.

    Returns:
        This rank's `Summary`. Stored maps have the network resolution (the resize rule's
        (h, w), multiples of 14) unless `original_size=True`.
    """
    from depth_anything_fast.data import inference_loader
    from depth_anything_fast.formats.images import list_images
    from depth_anything_fast.formats.spec import SPEC_FILE
    from depth_anything_fast.models.transforms import resize_prediction

    opts = Options(**options)
    if opts.format not in FORMATS:
        raise ValueError(f"unknown format {opts.format!r}; expected one of {FORMATS}")
    env_rank, env_world, local_rank = distributed_rank()
    rank = env_rank if opts.rank is None else opts.rank
    world = env_world if opts.world_size is None else opts.world_size
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world_size {world}")
    device = opts.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{local_rank % torch.cuda.device_count()}"

    src = os.fspath(input)
    output_dir = Path(output)
    model = load_model(weights_or_model)  # before any output is touched: fail fast
    # outputs written inside the source tree are not inputs of a rerun
    out_abs = os.path.abspath(output_dir) + os.sep
    paths = sorted(p for p in list_images(src) if not os.path.abspath(p).startswith(out_abs))
    if not paths:
        raise FileNotFoundError(f"no images found in {src}")
    names = output_names(src, paths, output_suffix(opts.format))
    output_dir.mkdir(parents=True, exist_ok=True)
    weights_id = type(weights_or_model).__name__
    if isinstance(weights_or_model, (str, os.PathLike)):
        from depth_anything_fast.models.hub import parse_hub_id

        spec = os.fspath(weights_or_model)  # a Hub repo id as written, a local path absolute
        weights_id = spec if parse_hub_id(spec) else os.path.abspath(spec)
    run_config = {
        "weights": weights_id,
        **{k: v for k, v in asdict(opts).items() if k in _RESUME_KEYS},
    }
    _check_run_config(output_dir, run_config)
    # how data.LabelledSource (training) and evaluate read the outputs back
    depth_range = metric_max_depth(model)
    atomic_write(output_dir / SPEC_FILE, stored_spec(opts.format, depth_range).dumps().encode(), rank)

    mine = list(zip(paths, names, strict=True))[rank::world]

    remove_stale_temporaries(output_dir, rank)
    finished = finished_records(output_dir, verify_checksum=opts.verify_checksum)
    # an output's name without its shard: the same item whatever tar shard holds it
    done = {record.member or key for key, record in finished.items()}
    todo = [(p, n) for p, n in mine if n not in done]
    skipped = len(mine) - len(todo)
    name_of = dict(todo)

    predictor = Predictor(
        model,
        batch_size=opts.batch_size,
        precision=opts.precision,
        compile=opts.compile,
        input_size=opts.input_size,
        resize=opts.resize,
        device=device,
    )
    manifest = Manifest(output_dir / manifest_name(rank, world))
    errors = ErrorLog(output_dir / errors_name(rank, world))
    succeeded = 0
    count_lock = threading.Lock()

    def on_done(record: ManifestRecord) -> None:
        nonlocal succeeded
        manifest.add(record)
        with count_lock:
            succeeded += 1

    def on_write_error(path: str, reason: str) -> None:
        errors.add(path, reason, "write")

    use_tar = opts.format == "webdataset"
    decode_threads, write_threads = default_threads(predictor.device)
    if opts.num_workers is not None:
        decode_threads = opts.num_workers
    if opts.writer_threads is not None:
        write_threads = opts.writer_threads
    writer = BackgroundWriter(write_threads, on_done, on_write_error)
    tar_lock = threading.Lock()
    tar = TarShardWriter(
        output_dir, f"shard-r{rank}", on_done, rank=rank, max_members=opts.shard_size
    )

    def make_job(
        path: str, disparity: torch.Tensor, ready: torch.cuda.Event | None
    ) -> Callable[[], ManifestRecord | None]:
        def job() -> ManifestRecord | None:
            if ready is not None:
                ready.synchronize()
            encoded = encode(disparity.numpy(), opts.format, depth_range)
            record = ManifestRecord(
                # absolute: the manifest is read back (data.sources) from any working directory
                input=os.path.abspath(path),
                output=name_of[path],
                shape=list(encoded.shape),
                min=encoded.min,
                max=encoded.max,
                checksum=checksum(encoded.data),
                bytes=len(encoded.data),
                format=opts.format,
            )
            if use_tar:
                with tar_lock:
                    tar.add(name_of[path], encoded.data, record)  # reported when the shard closes
                return None
            atomic_write(output_dir / name_of[path], encoded.data, rank)
            return record

        return job

    pin = predictor.device.type == "cuda"  # outputs come back through pinned host memory

    stop = _StopFlag(opts.handle_signals)
    progress = None
    if opts.progress:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), unit="img", dynamic_ncols=True, disable=rank != 0)
    start = time.perf_counter()
    prefetcher = None
    try:
        if todo:
            loader = inference_loader(
                [p for p, _ in todo],
                batch_size=opts.batch_size,
                input_size=opts.input_size,
                resize=opts.resize,
                shard_id=0,  # sharded above, before skipping finished items
                num_shards=1,
                backend=opts.backend,
                device=predictor.device,  # on CUDA, DALI decodes JPEGs on the GPU
                num_threads=decode_threads,
                prefetch=opts.prefetch,
                on_error=lambda path, reason: errors.add(path, reason, "decode"),
            )
            # The loader's generator (reading, probing, submitting) would otherwise run on this
            # thread between forward passes; on its own thread it overlaps with the model.
            prefetcher = _Prefetcher(loader, opts.prefetch)
        for batch in prefetcher or ():
            if stop.is_set:
                break
            disparity = predictor.predict_tensor(batch["image"])
            items = [
                resize_prediction(disparity[row : row + 1], tuple(size))[0]
                if opts.original_size
                else disparity[row]
                for row, size in enumerate(batch["sizes"])
            ]
            ready = None
            if pin:
                # Copies back into pinned memory are queued behind the forward pass; the writer
                # threads wait on the event, so this thread goes on to launch the next batch.
                hosts = [torch.empty(t.shape, dtype=torch.float32, pin_memory=True) for t in items]
                for host, item in zip(hosts, items, strict=True):
                    host.copy_(item, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
                items = hosts
            for path, item in zip(batch["paths"], items, strict=True):
                writer.submit(path, make_job(path, item, ready))
            if progress is not None:
                progress.update(len(batch["paths"]))
    finally:
        if prefetcher is not None:
            prefetcher.close()
        writer.close()
        if use_tar:
            tar.flush()
        manifest.close()
        errors.close()
        stop.restore()
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - start
    return Summary(
        total=len(mine),
        succeeded=succeeded,
        skipped=skipped,
        failed=errors.count,
        interrupted=stop.is_set,
        elapsed_s=elapsed,
        rank=rank,
        world_size=world,
    )
