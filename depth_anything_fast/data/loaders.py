"""Batched loaders over labelled, unlabelled and inference inputs, on DALI or PIL.

Each loader is an iterable of dict batches; one `for` loop is one epoch (the epoch counter then
advances, or set it with `set_epoch`). Per sample the host reads the bytes, checks them
(`decode.probe`), draws the geometry/perturbation from `sample_rng(seed, epoch, index)` and, for
labelled data, loads and crops the target; a thread pool does this ahead of the pixel backend.
The backend (DALI graph or PIL thread pool) decodes, resamples and normalises, with `prefetch`
batches in flight. Unusable files are skipped and reported through `on_error(path, reason)` and
logging; a missing ground-truth file raises `FileNotFoundError` naming it.

Sharding: training loaders shuffle with a generator shared by all ranks, pad the permutation to a
multiple of `num_shards` (repeating a few samples, as `DistributedSampler` does) and take every
`num_shards`-th index, so ranks see disjoint index positions and the same number of batches;
`inference_loader` takes `paths[shard_id::num_shards]` without padding. After each batch,
`position` says how far into the shard's order the batches went; `set_epoch(epoch, position)`
resumes there (training resume) without decoding anything before it.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from depth_anything_fast.formats.images import Source, list_images
from depth_anything_fast.formats.paths import read_bytes

from .augment import StrongParams, sample_strong
from .decode import ErrorCallback, probe, report_error
from .geometry import CropBox, crop_nearest, full_box, network_size, sample_crop, sample_rng
from .jobs import ImageJob
from .sources import LabelledSource, load_depth, load_target

PIPELINES = ("auto", "dali", "pil")
TARGETS = ("disparity", "depth")


@dataclass
class _Prepared:
    job: ImageJob
    extra: dict[str, Any] = field(default_factory=dict)
    # Position in the epoch's shard order, and the position just after its batch.
    position: int = -1
    batch_end: int = -1


def resolve_pipeline(backend: str, prefer_dali: bool = True) -> str:
    """The image pipeline a loader's `backend` option selects: "auto" -> "dali" when DALI is
    importable and `prefer_dali`, else "pil"; checks explicit choices."""
    from .dali_pipelines import dali_available

    if backend not in PIPELINES:
        raise ValueError(f"backend must be one of {PIPELINES}, got {backend!r}")
    if backend == "auto":
        return "dali" if prefer_dali and dali_available() else "pil"
    if backend == "dali" and not dali_available():
        raise ImportError(
            "backend='dali' needs NVIDIA DALI, which is not installed: pip install "
            "'depth_anything_fast[dali]' (CUDA 13 driver, or no GPU) or "
            "'depth_anything_fast[dali-cuda12]' (CUDA 12 driver); backend='pil' needs nothing"
        )
    return backend


def _ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[int], _Prepared | None], items: Iterable[int],
    window: int,
) -> Iterator[_Prepared]:
    """fn over items in a pool, results in input order, at most `window` pending; drops None."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            result = pending.popleft().result()
            if result is not None:
                yield result
    while pending:
        result = pending.popleft().result()
        if result is not None:
            yield result


class _Loader:
    """Shared machinery; subclasses define the items, `_prepare`, `_assemble` and batching.

    `strong`: every job carries a `StrongParams`, and the backend returns the strongly
    perturbed view as views[1].
    """

    # Training views are resized by the backend (DALI: fast, its own cubic filter). Inference
    # batches (`exact_resample`) must equal the official preprocessing: DALI only decodes them,
    # and on a CUDA device PIL does too; the official filter then resamples on the device.
    exact_resample = False

    def __init__(
        self, *, n_items: int, batch_size: int, shard_id: int, num_shards: int, seed: int,
        backend: str, device: str | torch.device | None, num_threads: int, shuffle: bool,
        drop_last: bool, pad_shards: bool, prefetch: int, on_error: ErrorCallback | None,
        strong: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            raise ValueError(f"need 0 <= shard_id < num_shards, got {shard_id}, {num_shards}")
        if num_threads < 1 or prefetch < 1:
            raise ValueError(f"num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
        if n_items == 0:
            raise ValueError("the source has no samples")
        self.n_items = n_items
        self.batch_size = batch_size
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # "auto" takes DALI where it gains: its own resize, or decoding on the GPU
        self.backend = resolve_pipeline(
            backend, prefer_dali=not self.exact_resample or self.device.type == "cuda"
        )
        self.num_threads = num_threads
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pad_shards = pad_shards
        self.prefetch = prefetch
        self.on_error = on_error
        self.strong = strong
        self.epoch = 0
        self._start = 0
        self.position = 0
        self._runner = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch used by the next iteration (reshuffles and redraws the augmentations), begun at
        shard position `start`: a `position` read after a batch of that epoch resumes right
        after it, with the same batches as an uninterrupted epoch and without decoding the
        earlier ones."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = epoch
        self._start = start

    def shard_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices (int64) this shard visits in `epoch`, in order."""
        n = self.n_items
        order = (
            np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(n)
            if self.shuffle else np.arange(n)
        )
        if self.pad_shards and self.num_shards > 1:
            order = np.resize(order, math.ceil(n / self.num_shards) * self.num_shards)
        return order[self.shard_id :: self.num_shards]

    def __len__(self) -> int:
        """Batches per epoch when no file is skipped."""
        n = len(self.shard_indices(0))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _make_runner(self):
        if self.backend == "dali":
            from .dali_pipelines import DaliRunner

            return DaliRunner(
                batch_size=self.batch_size, num_threads=self.num_threads, device=self.device,
                strong=self.strong, prefetch=self.prefetch, on_error=self.on_error,
                resample=not self.exact_resample,
            )
        from .pil_pipelines import PilRunner

        return PilRunner(
            num_threads=self.num_threads, device=self.device, prefetch=self.prefetch,
            on_error=self.on_error,
            resample_on_device=self.exact_resample and self.device.type == "cuda",
        )

    def _skip(self, path: str, reason: str) -> None:
        report_error(path, reason, self.on_error)

    def _read_probe(self, path: str) -> tuple[bytes, tuple[int, int]] | None:
        try:
            data = read_bytes(path)
        except OSError as exc:
            self._skip(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        size, reason = probe(data)
        if reason is not None:
            self._skip(path, reason)
            return None
        return data, size

    def _sample_geometry(
        self, h: int, w: int, crop_size: int, index: int, epoch: int
    ) -> tuple[CropBox, StrongParams | None]:
        """Crop box of an (h, w) image and, for loaders with a strong view, its perturbation,
        both from `sample_rng(seed, epoch, index)` (crop first, so the strong view never
        changes the crop)."""
        rng = sample_rng(self.seed, epoch, index)
        box = sample_crop(h, w, crop_size, rng)
        return box, sample_strong(rng) if self.strong else None

    def _prepare(self, index: int, epoch: int) -> _Prepared | None:
        raise NotImplementedError

    def _assemble(self, views: list[torch.Tensor], batch: list[_Prepared]) -> dict[str, Any]:
        raise NotImplementedError

    def _batches(self, prepared: Iterator[_Prepared]) -> Iterator[list[_Prepared]]:
        batch: list[_Prepared] = []
        for p in prepared:
            batch.append(p)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One epoch of batches. `position` (int) is, after each batch, the number of shard
        positions of this epoch (`shard_indices`) that the batches so far have consumed."""
        epoch, start = self.epoch, self._start
        self.epoch, self._start = epoch + 1, 0
        self.position = start
        order = self.shard_indices(epoch)
        if start > len(order):
            raise ValueError(f"cannot start epoch {epoch} at position {start}: this shard has "
                             f"{len(order)} samples (did the data change?)")

        def prepare(position: int) -> _Prepared | None:
            prepared = self._prepare(int(order[position]), epoch)
            if prepared is not None:
                prepared.position = position
            return prepared

        if self._runner is None:
            self._runner = self._make_runner()
        runner = self._runner
        while runner.in_flight:  # an abandoned previous iteration left batches in the pipeline
            runner.collect()
        by_job: dict[int, _Prepared] = {}
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="daf-prepare")
        try:
            prepared = _ordered_map(
                pool, prepare, range(start, len(order)),
                window=self.batch_size * (self.prefetch + 1),
            )
            for batch in self._batches(prepared):
                if runner.free_slots == 0:
                    yield from self._collect(runner, by_job)
                # Items are consumed in order, so the batch ends after its last item (later
                # inference batches may hold earlier items: take the maximum).
                end = max(p.position for p in batch) + 1
                for p in batch:
                    p.batch_end = end
                    by_job[id(p.job)] = p
                runner.submit([p.job for p in batch])
            while runner.in_flight:
                yield from self._collect(runner, by_job)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self, runner, by_job: dict[int, _Prepared]) -> Iterator[dict[str, Any]]:
        result = runner.collect()
        if result is None:
            return
        views, jobs = result
        batch = [by_job.pop(id(j)) for j in jobs]
        self.position = max(self.position, batch[0].batch_end)
        yield self._assemble(views, batch)


class LabelledLoader(_Loader):
    """Training batches from a `LabelledSource`; see `labelled_loader`."""

    def __init__(
        self, source: LabelledSource, *, crop_size: int, target: str = "disparity",
        **kwargs: Any,
    ) -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if target == "depth" and source.spec.kind != "depth":
            raise ValueError(f"target='depth' needs metric ground truth (LabelledSpec kind "
                             f"'depth'), the source's spec has kind {source.spec.kind!r}")
        super().__init__(n_items=len(source), **kwargs)
        self.source = source
        self.crop_size = crop_size
        self.target = target

    def _prepare(self, index: int, epoch: int) -> _Prepared | None:
        path, target_path = self.source.pairs[index]
        read = self._read_probe(path)
        if read is None:
            return None
        data, (h, w) = read
        load = load_depth if self.target == "depth" else load_target
        try:
            values, mask = load(target_path, self.source.spec)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError) as exc:
            self._skip(path, f"ground truth {target_path}: {exc}")
            return None
        box, strong = self._sample_geometry(h, w, self.crop_size, index, epoch)
        return _Prepared(
            ImageJob(path, data, box, strong),
            {self.target: crop_nearest(values, box, (h, w)), "mask": crop_nearest(mask, box, (h, w))},
        )

    def _assemble(self, views: list[torch.Tensor], batch: list[_Prepared]) -> dict[str, Any]:
        values = torch.from_numpy(np.stack([p.extra[self.target] for p in batch]))
        mask = torch.from_numpy(np.stack([p.extra["mask"] for p in batch]))
        out: dict[str, Any] = {"image": views[0]}
        if self.strong:
            out["strong"] = views[1]
        out[self.target] = values.to(self.device)
        out["mask"] = mask.to(self.device)
        out["paths"] = [p.job.path for p in batch]
        return out


class UnlabelledLoader(_Loader):
    """Clean + strongly perturbed views; see `unlabelled_loader`."""

    def __init__(self, paths: Sequence[str], *, crop_size: int, **kwargs: Any) -> None:
        super().__init__(n_items=len(paths), strong=True, **kwargs)
        self.paths = list(paths)
        self.crop_size = crop_size

    def _prepare(self, index: int, epoch: int) -> _Prepared | None:
        path = self.paths[index]
        read = self._read_probe(path)
        if read is None:
            return None
        data, (h, w) = read
        return _Prepared(ImageJob(path, data, *self._sample_geometry(h, w, self.crop_size,
                                                                     index, epoch)))

    def _assemble(self, views: list[torch.Tensor], batch: list[_Prepared]) -> dict[str, Any]:
        return {"clean": views[0], "strong": views[1], "paths": [p.job.path for p in batch]}


class InferenceLoader(_Loader):
    """Resized whole images, batched by output shape; see `inference_loader`."""

    exact_resample = True

    def __init__(
        self, paths: Sequence[str], *, names: Sequence[str] | None, input_size: int, resize: str,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        network_size(input_size, input_size, input_size, resize)  # validates `resize`
        if names is not None and len(names) != len(paths):
            raise ValueError(f"{len(names)} names for {len(paths)} paths")
        super().__init__(n_items=len(paths), **kwargs)
        self.paths = list(paths)
        self.names = None if names is None else list(names)
        self.input_size = input_size
        self.resize = resize

    def __len__(self) -> int:
        raise TypeError("inference_loader has no length: batches depend on the image shapes")

    def _prepare(self, index: int, epoch: int) -> _Prepared | None:
        path = self.paths[index]
        read = self._read_probe(path)
        if read is None:
            return None
        data, (h, w) = read
        box = full_box(h, w, *network_size(h, w, self.input_size, self.resize))
        name = None if self.names is None else self.names[index]
        return _Prepared(ImageJob(path, data, box), {"size": (h, w), "name": name})

    def _batches(self, prepared: Iterator[_Prepared]) -> Iterator[list[_Prepared]]:
        # Aspect-ratio buckets: a batch is emitted when its bucket fills; leftovers at the end.
        buckets: dict[tuple[int, int], list[_Prepared]] = {}
        for p in prepared:
            key = (p.job.box.out_h, p.job.box.out_w)
            bucket = buckets.setdefault(key, [])
            bucket.append(p)
            if len(bucket) == self.batch_size:
                yield buckets.pop(key)
        yield from (b for b in buckets.values() if b)

    def _assemble(self, views: list[torch.Tensor], batch: list[_Prepared]) -> dict[str, Any]:
        out = {
            "image": views[0],
            "paths": [p.job.path for p in batch],
            "sizes": [p.extra["size"] for p in batch],
        }
        if self.names is not None:
            out["names"] = [p.extra["name"] for p in batch]
        return out


def labelled_loader(
    source: LabelledSource | Source,
    *,
    batch_size: int,
    crop_size: int = 518,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    backend: str = "auto",
    device: str | torch.device | None = None,
    num_threads: int = 2,
    shuffle: bool = True,
    drop_last: bool = True,
    prefetch: int = 2,
    on_error: ErrorCallback | None = None,
    strong_view: bool = False,
    target: str = "disparity",
) -> LabelledLoader:
    """Labelled training batches: lower-bound resize to `crop_size`, random crop, h-flip.

    `source`: a `LabelledSource` or anything `LabelledSource.from_path` takes. Batches:
    {"image": (B, 3, c, c) float32 ImageNet-normalised, "disparity": (B, c, c) float32 in 0..1,
    "mask": (B, c, c) bool, "paths": list[str]} on `device` (CPU when None; a CUDA device makes
    DALI decode on the GPU). `crop_size` should be a multiple of 14.

    `strong_view=True` (pseudo-labelled batches) adds "strong": (B, 3, c, c) float32, the same
    crop as "image" colour-jittered/greyscaled/blurred as in `unlabelled_loader`; the crops
    do not depend on this option. `target="depth"` (metric fine-tuning) replaces "disparity"
    with "depth": (B, c, c) float32 metric depth in metres, 0 where "mask" is False; it needs
    a spec of kind "depth" (`ValueError` otherwise).
    """
    if not isinstance(source, LabelledSource):
        source = LabelledSource.from_path(source)
    return LabelledLoader(
        source, crop_size=crop_size, batch_size=batch_size, shard_id=shard_id,
        num_shards=num_shards, seed=seed, backend=backend, device=device,
        num_threads=num_threads, shuffle=shuffle, drop_last=drop_last, pad_shards=True,
        prefetch=prefetch, on_error=on_error, strong=strong_view, target=target,
    )


def unlabelled_loader(
    source: Source,
    *,
    batch_size: int,
    crop_size: int = 518,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    backend: str = "auto",
    device: str | torch.device | None = None,
    num_threads: int = 2,
    shuffle: bool = True,
    drop_last: bool = True,
    prefetch: int = 2,
    on_error: ErrorCallback | None = None,
) -> UnlabelledLoader:
    """Unlabelled training batches with the same geometry for both views.

    `source`: anything `list_images` takes. Batches: {"clean": (B, 3, c, c), "strong":
    (B, 3, c, c)} float32 ImageNet-normalised (strong = colour jitter, greyscale, blur; see
    `augment`) and "paths". Apply `cutmix` to "strong" on the training device.
    """
    return UnlabelledLoader(
        list_images(source), crop_size=crop_size, batch_size=batch_size, shard_id=shard_id,
        num_shards=num_shards, seed=seed, backend=backend, device=device,
        num_threads=num_threads, shuffle=shuffle, drop_last=drop_last, pad_shards=True,
        prefetch=prefetch, on_error=on_error,
    )


def inference_loader(
    paths: Source,
    *,
    names: Sequence[str] | None = None,
    batch_size: int,
    input_size: int = 518,
    resize: str = "keep-aspect",
    shard_id: int = 0,
    num_shards: int = 1,
    backend: str = "auto",
    device: str | torch.device | None = None,
    num_threads: int = 2,
    prefetch: int = 2,
    on_error: ErrorCallback | None = None,
) -> InferenceLoader:
    """Whole images resized for the network, batched so that every batch has one shape.

    paths: a folder, list file, glob or tar shard (listed with `list_images`), or a list of
    image paths, taken as listed (nothing is listed or looked up again). names: one per path
    (e.g. its output name), handed back with each batch as "names".

    resize="keep-aspect": the official lower-bound size (sides multiples of 14, the shorter one
    `input_size`); "square": input_size raised to a multiple of 14, squared (both
    `transforms.network_size`, as `preprocess`). Batches: {"image": (B, 3, h, w) float32
    ImageNet-normalised, "paths": list[str], "sizes": list[(H0, W0)] original sizes, and with
    `names` "names": list[str]}. Every readable file of this shard appears exactly once; the
    others go to `on_error`.

    Each image equals `preprocess` of it to float rounding with either backend, up to the JPEG
    decoder (on the GPU, nvJPEG's may differ from libjpeg-turbo's by a code value). For a CUDA
    `device` both backends only decode (PIL into pinned memory) and the official bicubic filter
    resamples on the GPU on a stream of its own; on the CPU, PIL resamples in its threads.
    backend="auto" takes DALI only for a CUDA `device` (decoding on the GPU), PIL otherwise.
    """
    listed = ([os.fspath(p) for p in paths] if isinstance(paths, (list, tuple))
              else list_images(paths))  # fmt: skip
    return InferenceLoader(
        listed, names=names, input_size=input_size, resize=resize, batch_size=batch_size,
        shard_id=shard_id, num_shards=num_shards, seed=0, backend=backend, device=device,
        num_threads=num_threads, shuffle=False, drop_last=False, pad_shards=False,
        prefetch=prefetch, on_error=on_error,
    )
