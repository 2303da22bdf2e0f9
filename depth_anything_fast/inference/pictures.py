"""Engine of the `predict` command: colourised depth images like the official `run.py`, batched.

Images come from the inference loader that pseudo-labelling uses (`data.inference_loader`:
decoded, resized and batched by network shape on its threads, ahead of the model); each
prediction is resized back to its image's size, and the PNGs are encoded and written on
background threads (`writers.BackgroundWriter`).
"""

from __future__ import annotations

import io
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
    make_output_dir,
)


def _save(
    out_stem: Path,
    path: str,
    disparity: np.ndarray,
    grayscale: bool,
    pred_only: bool,
    save_npy: bool,
    cmap: str,
) -> Path:
    """Write `<out_stem>.png` (input `path` | gap | colour-mapped `disparity`, or the map only)
    and with `save_npy` `<out_stem>.npy`; returns the PNG's path."""
    from PIL import Image

    depth_rgb = colorize(disparity, grayscale=grayscale, cmap=cmap)
    # the loader hands over the network-sized image only: the original is decoded again here,
    # on a writer thread
    picture = depth_rgb if pred_only else side_by_side(decode_rgb(read_bytes(path), path),
                                                       depth_rgb)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    target = out_stem.with_name(out_stem.name + ".png")
    atomic_write(target, buf.getvalue())
    if save_npy:
        atomic_write(out_stem.with_name(out_stem.name + ".npy"), encode_npy(disparity).data)
    return target


def _list_items(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(image path, output name without suffix) of every image under each INPUT, sorted per
    INPUT; raises FileNotFoundError if there is none and ValueError if two share a name."""
    items: list[tuple[str, str]] = []
    for source in inputs:
        paths = sorted(list_images(source))
        items += zip(paths, output_names(source, paths, ""), strict=True)
    if not items:
        raise FileNotFoundError(f"no images found in {list(inputs)}")
    check_unique_names([name for _, name in items])  # x.jpg in two INPUTs: both named x
    return items


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
    device: str | None = None,
    grayscale: bool = False,
    pred_only: bool = False,
    save_npy: bool = False,
    num_threads: int = 2,
    progress: bool = False,
    version: str | None = None,
    metric: bool | None = None,
    max_depth: float | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write `outdir/<name>.png` (image | gap | colour-mapped prediction, or the prediction only)
    per input image: Spectral_r on disparity, or for a metric model Spectral on depth, as the
    official `run.py` scripts, so near is red either way.

    `<name>` is the image's path relative to its INPUT argument without extension (the file name
    for a single image, as in the official script). Returns (written PNG paths, [(input, reason)]
    for inputs that could not be read or written), in completion order. Raises ValueError if two
    inputs get the same name (x.jpg in two INPUT folders), as one output would overwrite the
    other, or if `outdir` cannot be written (checked before the model runs). `version`, `metric`
    and `max_depth` describe a checkpoint whose name does not (`DepthAnything.from_pretrained`);
    `progress` shows a progress bar with the speed; `num_threads` decode and as many write.

    Raises OutputWriteError (nothing more can be written: disk full, read-only) at once,
    leaving the files already written complete and no temporary file.
    """
    check_output_dir(outdir, "--outdir")
    model = load_model(weights_or_model, version=version, metric=metric, max_depth=max_depth)
    cmap = "Spectral_r" if metric_max_depth(model) is None else "Spectral"
    predictor = Predictor(model, batch_size=batch_size, precision=precision, compile=compile,
                          input_size=input_size, resize=resize, device=device)
    items = _list_items(inputs)
    make_output_dir(outdir, flag="--outdir")
    sink = _PictureSink(len(items), Path(outdir), num_threads, progress, grayscale=grayscale,
                        pred_only=pred_only, save_npy=save_npy, cmap=cmap)
    try:
        _predict_into(predictor, items, sink, num_threads)
    finally:
        sink.close()
    if sink.fatal is not None:
        raise OutputWriteError(
            f"cannot write to {outdir}: {sink.fatal}; stopped after {len(sink.written)} of "
            f"{len(items)} images (those files are complete)")
    return sink.written, sink.failed


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
