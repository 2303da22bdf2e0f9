"""The web page of `depth-anything-fast app`, like the official V2 `app.py`, batched.

One model is loaded at start. Uploads go through the batched `Predictor`: the "Compute depth"
event is a Gradio batch function (`batch=True`), so requests waiting in the queue are run
together, up to the predictor's batch size per forward. The page shows the image and its
coloured depth with a slider (Gradio's ImageSlider), offers a colour map choice and three
downloads: the grey depth PNG (per-image min-max to 0..255, as the official app), the raw
prediction as a 16-bit PNG written by `formats.codec.encode_png16` as `pseudo-label` writes it
(relative disparity: code 0..65535 = the map's min..max, shown on the page; metric depth:
0..max depth in metres), and for metric models a `.ply` point cloud
(`inference.pointcloud.pointcloud_ply`).

Uploads are decoded by the project's checked decoder (`data.decode`), never by Gradio, so a file
that is not an image, is truncated, or whose header claims more than `max_pixels` (a
decompression bomb) gets a one-line message on the page instead of an error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.data.decode import decode_rgb, probe
from depth_anything_fast.formats.codec import encode_png16
from depth_anything_fast.inference.pointcloud import DEFAULT_FOCAL_LENGTH, pointcloud_ply
from depth_anything_fast.inference.predictor import Predictor, metric_max_depth
from depth_anything_fast.inference.visualize import colorize, to_uint8

COLOUR_MAPS = ("Spectral_r", "Spectral", "magma", "inferno", "viridis", "turbo", "gray")
MAX_PIXELS = 40_000_000  # uploads beyond this many pixels are refused (decoded RGB: 120 MB)
_KEEP_SECONDS = 3600  # downloads older than this are removed from the page's folder


@dataclass
class PageResult:
    """Outputs of one upload: the slider pair, the three downloads (None where not made) and
    the message shown under the pictures."""

    slider: tuple[np.ndarray, np.ndarray] | None
    grey: str | None
    raw16: str | None
    ply: str | None
    message: str

    def outputs(self) -> tuple[Any, ...]:
        return self.slider, self.grey, self.raw16, self.ply, self.message


class DepthPage:
    """What the page computes, without Gradio: `compute` runs a batch of uploads.

    Args:
        predictor: the loaded model's `Predictor` (its `batch_size` images per forward).
        name: what the page calls the model.
        max_pixels: the largest upload accepted, in pixels.
        workdir: where downloads are written (a fresh temporary folder when None).
    """

    def __init__(self, predictor: Predictor, name: str, *, max_pixels: int = MAX_PIXELS,
                 workdir: str | os.PathLike[str] | None = None) -> None:
        self.predictor = predictor
        self.name = name
        self.max_pixels = max_pixels
        self.depth_range = metric_max_depth(predictor.model)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="daf-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def metric(self) -> bool:
        return self.depth_range is not None

    def read_upload(self, upload: dict[str, Any] | str | None) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an upload (Gradio's file payload or a path); ValueError with
        the message for the page when it is missing or not a usable image."""
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            raise ValueError("Upload an image first.")
        data = Path(path).read_bytes()
        size, reason = probe(data)
        if reason is not None:
            raise ValueError(f"This upload cannot be used: {reason}.")
        assert size is not None
        if size[0] * size[1] > self.max_pixels:
            raise ValueError(
                f"This image is too large: {size[1]} x {size[0]} pixels "
                f"({size[0] * size[1] / 1e6:.0f} MP; the page accepts up to "
                f"{self.max_pixels / 1e6:.0f} MP).")
        try:
            return decode_rgb(data, Path(path).name)
        except ValueError as exc:  # DecodeError
            raise ValueError(f"This upload cannot be used: {exc}.") from None

    def compute(self, uploads: list[Any], cmaps: list[str], focal_lengths: list[Any]
                ) -> list[PageResult]:
        """One result per upload, in order; the readable uploads run through the predictor
        together (grouped by network shape, `batch_size` per forward)."""
        self._remove_old_downloads()
        results: list[PageResult | None] = [None] * len(uploads)
        images: dict[int, np.ndarray] = {}
        for i, upload in enumerate(uploads):
            try:
                images[i] = self.read_upload(upload)
            except (ValueError, OSError) as exc:
                results[i] = PageResult(None, None, None, None, str(exc))
        if images:
            maps = self.predictor.predict(list(images.values()))
            for (i, rgb), prediction in zip(images.items(), maps, strict=True):
                results[i] = self._outputs(uploads[i], rgb, prediction, cmaps[i],
                                           focal_lengths[i])
        return [r for r in results if r is not None]

    def _outputs(self, upload: Any, rgb: np.ndarray, prediction: np.ndarray, cmap: str,
                 focal_length: Any) -> PageResult:
        from PIL import Image

        if cmap not in COLOUR_MAPS:
            cmap = COLOUR_MAPS[0]
        name = _stem(upload)
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        grey = folder / f"{name}_depth_grey.png"
        Image.fromarray(to_uint8(prediction)).save(grey)
        coloured = colorize(prediction, grayscale=cmap == "gray", cmap=cmap)
        encoded = encode_png16(prediction, self.depth_range)
        raw16 = folder / f"{name}_{'depth' if self.metric else 'disparity'}16.png"
        raw16.write_bytes(encoded.data)
        h, w = prediction.shape
        if self.metric:
            message = (f"{w} x {h}, depth {prediction.min():.3f} .. {prediction.max():.3f} m. "
                       f"16-bit PNG: code 0 .. 65535 = 0 .. {self.depth_range:g} m.")
        else:
            message = (f"{w} x {h}, relative disparity {encoded.min:.6g} .. {encoded.max:.6g}. "
                       f"16-bit PNG: code 0 .. 65535 = disparity {encoded.min:.6g} .. "
                       f"{encoded.max:.6g} (the map's min .. max, as pseudo-label stores it).")
        ply = None
        if self.metric:
            focal = float(focal_length) if focal_length else DEFAULT_FOCAL_LENGTH
            try:
                ply_path = folder / f"{name}.ply"
                ply_path.write_bytes(pointcloud_ply(prediction, rgb, focal_length=focal,
                                                    max_depth=self.depth_range))
                ply = str(ply_path)
                message += f" Point cloud: focal length {focal:g} px."
            except ValueError as exc:
                message += f" No point cloud: {exc}."
        return PageResult((rgb, coloured), str(grey), str(raw16), ply, message)

    def _remove_old_downloads(self) -> None:
        cutoff = time.time() - _KEEP_SECONDS
        for folder in self.workdir.iterdir():
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def _stem(upload: Any) -> str:
    name = upload.get("orig_name") or upload.get("path") if isinstance(upload, dict) else upload
    stem = Path(str(name or "image")).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"


def build_page(page: DepthPage) -> Any:
    """The Gradio Blocks of `page`; "Compute depth" and a colour map change run `page.compute`
    as one batched event (up to the predictor's batch size per call)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def compute(uploads: list[Any], cmaps: list[str], focals: list[Any]) -> list[list[Any]]:
        results = page.compute(uploads, cmaps, focals)
        return [list(column) for column in zip(*(r.outputs() for r in results), strict=True)]

    kind = (f"metric depth, 0 .. {page.depth_range:g} m" if page.metric
            else "relative disparity")
    with gr.Blocks(title="Depth Anything (fast)") as blocks:
        gr.Markdown(f"## Depth Anything (fast)\nModel: `{page.name}` ({kind}). Upload an image "
                    "and press *Compute depth*; slide to compare image and depth.")
        with gr.Row():
            image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                             elem_id="input-image")
            slider = gr.ImageSlider(label="Image | depth", type="numpy", format="png",
                                    elem_id="depth-slider", interactive=False)
        with gr.Row():
            cmap = gr.Dropdown(list(COLOUR_MAPS), value="Spectral" if page.metric
                               else "Spectral_r", label="Colour map", elem_id="colour-map")
            focal = gr.Number(DEFAULT_FOCAL_LENGTH, label="Focal length (px) of the point cloud",
                              visible=page.metric, elem_id="focal-length")
            button = gr.Button("Compute depth", variant="primary", elem_id="compute")
        message = gr.Markdown(elem_id="message")
        with gr.Row():
            grey = gr.File(label="Grey depth (PNG)", elem_id="grey-png")
            raw16 = gr.File(label="16-bit raw prediction (PNG)", elem_id="raw16-png")
            ply = gr.File(label="Point cloud (PLY)", visible=page.metric, elem_id="ply")
        event = {"fn": compute, "inputs": [image, cmap, focal],
                 "outputs": [slider, grey, raw16, ply, message], "batch": True,
                 "max_batch_size": page.predictor.batch_size,
                 # the raw upload: our decoder checks it, Gradio's would raise on a bad file
                 "preprocess": False, "show_progress": "minimal"}
        button.click(**event)
        cmap.change(**event)
    return blocks


def serve(page: DepthPage, host: str = "127.0.0.1", port: int = 7860,
          max_file_size: str = "50mb") -> None:
    """Serve the page until interrupted (localhost unless `host` says otherwise)."""
    build_page(page).queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, allowed_paths=[str(page.workdir)],
        max_file_size=max_file_size, show_error=False, footer_links=[])
