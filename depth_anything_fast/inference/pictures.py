"""Engine of the `predict` command: colourised depth images like the official `run.py`, batched,
point clouds of metric depth, and depth videos (`inference.video`).

Images come from the inference loader that pseudo-labelling uses (`data.inference_loader`:
decoded, resized and batched by network shape on its threads, ahead of the model); each
prediction is resized back to its image's size, and the PNGs are encoded and written on
background threads (`writers.BackgroundWriter`).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depth_anything_fast.data import inference_loader
from depth_anything_fast.data.decode import decode_rgb
from depth_anything_fast.formats.codec import encode_npy
from depth_anything_fast.formats.images import list_images
from depth_anything_fast.formats.names import check_unique_names, output_names
from depth_anything_fast.formats.paths import read_bytes
from depth_anything_fast.formats.videos import is_video, list_videos
from depth_anything_fast.inference.pointcloud import (
    encode_ply,
    focal_length_px,
    pointcloud_ply,
)
from depth_anything_fast.inference.predictor import (
    Predictor,
    load_model,
    metric_max_depth,
    original_size_maps,
)
from depth_anything_fast.inference.visualize import colorize, side_by_side
from depth_anything_fast.inference.writers import (
    BackgroundWriter,
    OutputWriteError,
    atomic_write,
    check_output_dir,
    is_fatal_write_error,
    make_output_dir,
)

logger = logging.getLogger(__name__)


def _save(
    out_stem: Path,
    path: str,
    disparity: np.ndarray,
    grayscale: bool,
    pred_only: bool,
    save_npy: bool,
    cmap: str,
    pointcloud: dict[str, Any] | None,
) -> Path:
    """Write `<out_stem>.png` (input `path` | gap | colour-mapped `disparity`, or the map only),
    with `save_npy` `<out_stem>.npy` and with `pointcloud` (`pointcloud_ply`'s keyword
    arguments) `<out_stem>.ply`; returns the PNG's path."""
    from PIL import Image

    depth_rgb = colorize(disparity, grayscale=grayscale, cmap=cmap)
    # the loader hands over the network-sized image only: the original is decoded again here,
    # on a writer thread
    rgb = None if pred_only and pointcloud is None else decode_rgb(read_bytes(path), path)
    picture = depth_rgb if rgb is None or pred_only else side_by_side(rgb, depth_rgb)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    target = out_stem.with_name(out_stem.name + ".png")
    atomic_write(target, buf.getvalue())
    if save_npy:
        atomic_write(out_stem.with_name(out_stem.name + ".npy"), encode_npy(disparity).data)
    if pointcloud is not None:
        assert rgb is not None
        atomic_write(out_stem.with_name(out_stem.name + ".ply"),
                     pointcloud_ply(disparity, rgb, **pointcloud))
    return target


def _list_items(inputs: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(path, output name without suffix) of every image and of every video under each INPUT,
    sorted per INPUT; raises FileNotFoundError if there is neither and ValueError if two share
    a name."""
    images: list[tuple[str, str]] = []
    videos: list[tuple[str, str]] = []
    for source in inputs:
        listed = list_images(source)  # a video file or a glob's video matches too
        found = sorted({*list_videos(source), *filter(is_video, listed)})
        paths = sorted(p for p in listed if not is_video(p)) + found
        names = dict(zip(paths, output_names(source, paths, ""), strict=True))
        images += [(p, names[p]) for p in paths[: len(paths) - len(found)]]
        videos += [(p, names[p]) for p in found]
    if not images and not videos:
        raise FileNotFoundError(f"no images or videos found in {list(inputs)}")
    # x.jpg in two INPUTs: both named x
    check_unique_names([name for _, name in images] + [name for _, name in videos])
    return images, videos


class _PictureSink:
    """Writes the pictures on background threads and keeps the outcome: `written` PNG paths,
    `failed` (input, reason) pairs (decode and write failures), and a progress bar."""

    def __init__(self, total: int, out_root: Path, num_threads: int, progress: bool,
                 **picture: Any) -> None:
        self.out_root, self.picture = out_root, picture
        self.written: list[Path] = []
        self.failed: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._writer = BackgroundWriter(num_threads, lambda _: None, self.fail)
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", dynamic_ncols=True)

    @property
    def fatal(self) -> OSError | None:
        """The write error (disk full, read-only) after which nothing more is written."""
        return self._writer.fatal

    def _tick(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def fail(self, path: str, reason: str) -> None:
        """Record input `path` as failed (called from loader and writer threads)."""
        with self._lock:
            self.failed.append((path, reason))
            self._tick()

    def submit(self, path: str, name: str, disparity: np.ndarray) -> None:
        """Queue the picture of input `path`, named `name` (blocks while the writers are
        behind)."""
        self._writer.submit(path, lambda: self._write(path, name, disparity))

    def _write(self, path: str, name: str, disparity: np.ndarray) -> None:
        target = _save(self.out_root / name, path, disparity, **self.picture)
        with self._lock:
            self.written.append(target)
            self._tick()

    def close(self) -> None:
        """Wait for every write and close the progress bar."""
        try:
            self._writer.close()
        finally:
            if self._bar is not None:
                self._bar.close()


def predict_files(
    weights_or_model: str | os.PathLike[str] | torch.nn.Module | None,
    inputs: Sequence[str],
    outdir: str | os.PathLike[str],
    *,
    batch_size: int = 4,
    precision: str = "auto",
    compile: bool = False,
    input_size: int = 518,
    resize: str = "keep-aspect",
    device: str | None = None, runtime: str = "auto",  # `Predictor`'s
    grayscale: bool = False,
    pred_only: bool = False,
    save_npy: bool = False,
    num_threads: int = 2,
    progress: bool = False,
    version: str | None = None,
    metric: bool | None = None,
    max_depth: float | None = None,
    pointcloud: bool = False,
    focal_length: float | None = None,
    fov: float | None = None,
    temporal_align: bool = True,
    save_png16: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write `outdir/<name>.png` per image (image | gap | coloured prediction, or the prediction
    only; Spectral_r on disparity, Spectral on a metric model's depth: near is red either way,
    as the official `run.py`) and `outdir/<name>.mp4` per video (`video.predict_video`);
    `pointcloud` adds `outdir/<name>.ply` per image (`pointcloud.pointcloud_ply`, metric models
    only: else ValueError at once). `<name>`: the path relative to its INPUT, no extension.

    Returns (written PNG and video paths, [(input, reason)] for inputs that could not be read
    or written, including a video that stopped decoding part-way: its frames read are written).
    Raises ValueError if two inputs get one name or `outdir` cannot be written (checked before
    the model runs), OutputWriteError (disk full, read-only) at once, leaving the files written
    complete and no temporary file. `version`, `metric`, `max_depth` describe a checkpoint whose
    name does not; `progress` shows a progress bar; `num_threads` decode and as many write.
    """
    check_output_dir(outdir, "--outdir")
    model = load_model(weights_or_model, version=version, metric=metric, max_depth=max_depth)
    depth_range = metric_max_depth(model)  # None: relative disparity
    cmap = "Spectral_r" if depth_range is None else "Spectral"
    cloud = _pointcloud_options(depth_range, focal_length, fov) if pointcloud else None
    predictor = Predictor(model, batch_size=batch_size, precision=precision, compile=compile,
                          input_size=input_size, resize=resize, device=device, runtime=runtime)
    images, videos = _list_items(inputs)
    make_output_dir(outdir, flag="--outdir")
    written, failed = _predict_images(
        predictor, images, Path(outdir), num_threads, progress, grayscale=grayscale,
        pred_only=pred_only, save_npy=save_npy, cmap=cmap, pointcloud=cloud)
    if videos and pointcloud:
        logger.warning("--pointcloud: point clouds are written for images only, not for the "
                       "%d video(s)", len(videos))
    for path, name in videos:
        outcome = _predict_video(
            predictor, path, Path(outdir) / f"{name}.mp4", grayscale=grayscale,
            pred_only=pred_only, cmap=cmap, temporal_align=temporal_align,
            depth_range=depth_range, save_npy=save_npy, save_png16=save_png16, progress=progress)
        written, failed = written + outcome[0], failed + outcome[1]
    return written, failed


def _predict_images(predictor: Predictor, images: list[tuple[str, str]], outdir: Path,
                    num_threads: int, progress: bool, **picture: Any
                    ) -> tuple[list[Path], list[tuple[str, str]]]:
    """The pictures of `images` ((path, name) pairs): (written PNG paths, failures); raises
    OutputWriteError when nothing more can be written."""
    if not images:
        return [], []
    sink = _PictureSink(len(images), outdir, num_threads, progress, **picture)
    try:
        _predict_into(predictor, images, sink, num_threads)
    finally:
        sink.close()
    if sink.fatal is not None:
        raise OutputWriteError(
            f"cannot write to {outdir}: {sink.fatal}; stopped after {len(sink.written)} of "
            f"{len(images)} images (those files are complete)")
    return sink.written, sink.failed


def _pointcloud_options(depth_range: float | None, focal_length: float | None,
                        fov: float | None) -> dict[str, Any]:
    """`pointcloud_ply`'s keyword arguments, checked before the model runs."""
    if depth_range is None:
        raise ValueError(
            "--pointcloud needs a metric model: these weights predict relative disparity (an "
            "unknown scale and shift per image), which cannot be back-projected to metres. Use "
            "metric weights (e.g. depth-anything/Depth-Anything-V2-Metric-Hypersim-Small), or "
            "pass --metric --max-depth M if this checkpoint is a metric one")
    focal_length_px(1, focal_length=focal_length, fov=fov)  # ValueError for bad values
    encode_ply(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))  # plyfile is there
    return {"focal_length": focal_length, "fov": fov, "max_depth": depth_range}


def _predict_video(predictor: Predictor, path: str, final: Path, **options: Any
                   ) -> tuple[list[Path], list[tuple[str, str]]]:
    """([the video written], [(path, reason)] if it failed) for one input video."""
    from depth_anything_fast.inference.video import VideoError, predict_video

    try:
        result = predict_video(predictor, path, final, **options)
    except VideoError as exc:
        return [], [(path, str(exc))]
    except OSError as exc:
        if is_fatal_write_error(exc):
            raise OutputWriteError(f"cannot write {final}: {exc} (no partial video left)"
                                   ) from exc
        return [], [(path, f"{type(exc).__name__}: {exc}")]
    written = [result.output] if result.output is not None else []
    if result.error is None:
        return written, []
    kept = (f"; {result.output} holds the {result.frames} frames read"
            if result.output is not None else "; nothing written")
    return written, [(path, result.error + kept)]


def _predict_into(predictor: Predictor, items: list[tuple[str, str]], sink: _PictureSink,
                  num_threads: int) -> None:
    """The loop: inference loader -> model -> original size -> `sink` (each map with its
    output name), until done or a fatal write error."""
    loader = inference_loader(
        [path for path, _ in items], names=[name for _, name in items],
        batch_size=predictor.batch_size, input_size=predictor.input_size,
        resize=predictor.resize, device=predictor.device, num_threads=num_threads,
        on_error=sink.fail,
    )
    for batch in loader:
        if sink.fatal is not None:
            break
        disparity = predictor.predict_tensor(batch["image"])
        maps = original_size_maps(disparity, batch["sizes"])
        for path, name, item in zip(batch["paths"], batch["names"], maps, strict=True):
            sink.submit(path, name, item)
