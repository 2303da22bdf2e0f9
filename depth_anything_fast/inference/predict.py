"""Engine of the `predict` command: colourised depth images like the official `run.py`, batched.

Files are decoded on a thread pool a chunk ahead, predicted `batch_size` at a time (grouped by
network shape), and the PNGs are encoded and written on background threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from depth_anything_fast.formats.codec import encode_npy
from depth_anything_fast.inference.predictor import Predictor, load_model, metric_max_depth
from depth_anything_fast.inference.pseudo_label import check_unique_names, output_names
from depth_anything_fast.inference.visualize import colorize, side_by_side
from depth_anything_fast.inference.writers import (
    OutputWriteError,
    atomic_write,
    check_output_dir,
    is_fatal_write_error,
    make_output_dir,
)

logger = logging.getLogger(__name__)


def _decode(path: str) -> np.ndarray:
    from depth_anything_fast.data.decode import decode_rgb
    from depth_anything_fast.formats.paths import read_bytes

    return decode_rgb(read_bytes(path), path)


def _save(
    out_stem: Path,
    image: np.ndarray,
    disparity: np.ndarray,
    grayscale: bool,
    pred_only: bool,
    save_npy: bool,
    cmap: str,
) -> Path:
    import io

    from PIL import Image

    depth_rgb = colorize(disparity, grayscale=grayscale, cmap=cmap)
    picture = depth_rgb if pred_only else side_by_side(image, depth_rgb)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    target = out_stem.with_name(out_stem.name + ".png")
    atomic_write(target, buf.getvalue())
    if save_npy:
        atomic_write(out_stem.with_name(out_stem.name + ".npy"), encode_npy(disparity).data)
    return target


def _chunks(items: Sequence[tuple[str, str]], size: int) -> Iterator[Sequence[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    for inputs that could not be read or written). Raises ValueError if two inputs get the same
    name (x.jpg in two INPUT folders), as one output would overwrite the other, or if `outdir`
    cannot be written (checked before the model runs). `version`, `metric` and `max_depth`
    describe a checkpoint whose name does not (`DepthAnything.from_pretrained`); `progress`
    shows a progress bar with the speed.

    Raises OutputWriteError (nothing more can be written: disk full, read-only) at once,
    leaving the files already written complete and no temporary file.
    """
    from depth_anything_fast.formats.images import list_images

    check_output_dir(outdir, "--outdir")
    hints = {k: v for k, v in (("version", version), ("metric", metric),
                               ("max_depth", max_depth)) if v is not None}
    model = load_model(weights_or_model, **hints)
    cmap = "Spectral_r" if metric_max_depth(model) is None else "Spectral"
    predictor = Predictor(
        model,
        batch_size=batch_size,
        precision=precision,
        compile=compile,
        input_size=input_size,
        resize=resize,
        device=device,
    )
    out_root = Path(outdir)
    items: list[tuple[str, str]] = []
    for source in inputs:
        paths = sorted(list_images(source))
        items += zip(paths, output_names(source, paths, ""), strict=True)
    if not items:
        raise FileNotFoundError(f"no images found in {list(inputs)}")
    check_unique_names([name for _, name in items])  # x.jpg in two INPUTs: both named x
    make_output_dir(outdir, flag="--outdir")

    written: list[Path] = []
    failed: list[tuple[str, str]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", dynamic_ncols=True)

    def drain(jobs: list[tuple[str, Future[Path]]]) -> None:
        for path, job in jobs:
            try:
                written.append(job.result())
            except (OSError, ValueError) as exc:
                if is_fatal_write_error(exc):
                    raise OutputWriteError(
                        f"cannot write to {outdir}: {exc}; stopped after {len(written)} of "
                        f"{len(items)} images (those files are complete)") from None
                failed.append((path, f"{type(exc).__name__}: {exc}"))
            if bar is not None:
                bar.update(1)

    # Enough images per chunk for shape buckets to fill batches; the next chunk decodes while
    # this one runs, and the previous chunk's PNGs are written meanwhile (memory stays bounded).
    chunks = list(_chunks(items, 4 * batch_size))
    try:
        with ThreadPoolExecutor(num_threads) as decoders, \
                ThreadPoolExecutor(num_threads) as writers:
            decoded = [decoders.submit(_decode, p) for p, _ in chunks[0]]
            writing: list[tuple[str, Future[Path]]] = []
            for index, part in enumerate(chunks):
                current = decoded
                if index + 1 < len(chunks):
                    decoded = [decoders.submit(_decode, p) for p, _ in chunks[index + 1]]
                images: list[np.ndarray] = []
                kept: list[tuple[str, str]] = []
                for (path, name), future in zip(part, current, strict=True):
                    try:
                        images.append(future.result())
                        kept.append((path, name))
                    except (OSError, ValueError) as exc:
                        failed.append((path, str(getattr(exc, "reason", exc))))
                        if bar is not None:
                            bar.update(1)
                disparities = predictor.predict(images)
                drain(writing)
                writing = [
                    (path, writers.submit(_save, out_root / name, image, d, grayscale, pred_only,
                                          save_npy, cmap))
                    for (path, name), image, d in zip(kept, images, disparities, strict=True)
                ]
            drain(writing)
    finally:
        if bar is not None:
            bar.close()
    return written, failed
