"""Engine of `predict` on videos: depth videos like the official `run_video.py`, batched and
without flicker.

Three stages overlap, each on its own thread, joined by bounded queues so memory stays constant
whatever the length: PyAV decodes the frames and `transforms.preprocess` resizes them
(`_decoded_batches`), the `Predictor` runs each batch of `batch_size` frames, and the writer
(`_VideoWriter`) aligns each frame's disparity to the video's running reference
(`temporal.TemporalAligner`, relative models), colours every frame with one value range (fixed
from the first `range_frames` frames; values beyond it are clipped; without temporal alignment
each frame by its own min-max, as the official script) and encodes the pictures at the
source's frame rate and size (H.264 in MP4, or MPEG-4 Part 2 where PyAV lacks libx264).
The audio track is not copied.

The video is written under a temporary name and renamed into place once its container is
finalised: a video that stops decoding part-way gives a complete, playable file of the frames
read, and an interrupted run or a write error leaves no file at all.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depth_anything_fast.formats.codec import encode, encode_npy
from depth_anything_fast.formats.manifest import Manifest, ManifestRecord, checksum
from depth_anything_fast.inference.predictor import Predictor, original_size_maps
from depth_anything_fast.inference.temporal import TemporalAligner
from depth_anything_fast.inference.visualize import SEPARATOR_WIDTH, colorize, side_by_side
from depth_anything_fast.inference.writers import atomic_write, temp_path
from depth_anything_fast.transforms import preprocess

RANGE_FRAMES = 8  # frames whose aligned values fix the colour range of the whole video
_QUEUE_DEPTH = 2  # batches waiting between two stages
_DEFAULT_RATE = Fraction(30)  # a stream that states no frame rate


class VideoError(ValueError):
    """A video that cannot be read at all (not a video, no video stream, no frame)."""


@dataclass
class VideoResult:
    """What `predict_video` did: `output` the written video (None when nothing was written),
    `frames` the frames it holds, `error` why decoding stopped early (None when the whole video
    was read; then `output` is the complete depth video)."""

    source: str
    output: Path | None
    frames: int
    error: str | None = None


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError("videos need PyAV: pip install 'depth_anything_fast[video]'") from None
    return av


class _Stop(Exception):
    """Raised inside a stage whose consumer has gone away."""


def _put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


_DONE = object()


def _in_background(items: Iterator[Any], depth: int = _QUEUE_DEPTH) -> Iterator[Any]:
    """Iterate `items` on a thread, `depth` items ahead; its exception is raised here, and
    leaving the loop early stops the thread."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for item in items:
                _put(q, item, stop)
        except _Stop:
            return
        except BaseException as exc:  # re-raised in the consumer
            failure.append(exc)
        with contextlib.suppress(_Stop):
            _put(q, _DONE, stop)

    thread = threading.Thread(target=run, name="daf-video-decode", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        thread.join()


class _InBackground:
    """Calls `consume(item)` on a thread for every `put` item, in order, at most `depth` items
    behind; its exception is raised by the next `put` or by `close`."""

    def __init__(self, consume: Callable[[Any], None], depth: int = _QUEUE_DEPTH) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._failed = threading.Event()
        self._failure: BaseException | None = None
        self._consume = consume
        self._thread = threading.Thread(target=self._run, name="daf-video-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            try:
                self._consume(item)
            except BaseException as exc:  # re-raised in the producer
                self._failure = exc
                self._failed.set()
                return

    def put(self, item: object) -> None:
        try:
            _put(self._queue, item, self._failed)
        except _Stop:
            assert self._failure is not None
            raise self._failure from None

    def close(self) -> None:
        """Wait until every item is consumed; raise the consumer's exception, if any."""
        self.put(_DONE)
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def abort(self) -> None:
        """Stop the consumer after its current item, dropping the items still queued."""
        self._failed.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_DONE)
        self._thread.join()


@dataclass
class _Source:
    """An open input video: its container, first video stream, frame rate and frame size."""

    container: Any
    stream: Any
    rate: Fraction
    size: tuple[int, int]  # (H, W) of the first frame; later frames are scaled to it
    declared_frames: int  # as the container states it (0 when it does not)
    error: str | None = None  # why decoding stopped before the end

    @classmethod
    def open(cls, path: str) -> _Source:
        av = _av()
        try:
            container = av.open(path, metadata_errors="ignore")
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"cannot open as a video ({_reason(exc)})") from None
        if not container.streams.video:
            container.close()
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or _DEFAULT_RATE
        width, height = stream.codec_context.width, stream.codec_context.height
        if not (width and height):
            container.close()
            raise VideoError("the video stream has no frame size")
        return cls(container, stream, Fraction(rate), (height, width), stream.frames or 0)

    def frames(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames until the end or the first decoding error (kept in
        `error`, as is a stream that ends before its declared frame count)."""
        av = _av()
        h, w = self.size
        count = 0
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="rgb24", width=w, height=h)
                count += 1
        except (av.FFmpegError, OSError) as exc:
            self.error = f"decoding failed after {count} frames ({_reason(exc)})"
            return
        if self.declared_frames and count < self.declared_frames:
            self.error = f"truncated: {count} of the {self.declared_frames} frames it declares"
        elif count == 0:
            self.error = "no frame could be decoded"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _decoded_batches(source: _Source, predictor: Predictor
                     ) -> Iterator[tuple[list[np.ndarray], torch.Tensor]]:
    """(frames, network input (B, 3, h, w)) for each run of `predictor.batch_size` frames."""
    frames: list[np.ndarray] = []
    inputs: list[torch.Tensor] = []
    for rgb in source.frames():
        frames.append(rgb)
        inputs.append(preprocess(rgb, predictor.input_size, resize=predictor.resize))
        if len(frames) == predictor.batch_size:
            yield frames, torch.cat(inputs)
            frames, inputs = [], []
    if frames:
        yield frames, torch.cat(inputs)


class _VideoWriter:
    """Aligns, colours and encodes the frames in order, and writes the per-frame maps.

    `add` takes frames with their maps; the pictures of the first `range_frames` frames wait
    until the colour range is known. `finish` finalises the container and renames it into
    place; `discard` removes the temporary file.
    """

    def __init__(self, final: Path, rate: Fraction, size: tuple[int, int], *, source: str,
                 grayscale: bool, pred_only: bool, cmap: str, temporal: bool,
                 depth_range: float | None, save_npy: bool, save_png16: bool, range_frames: int,
                 on_frame: Callable[[], None]) -> None:
        av = _av()
        self.final, self.source = final, source
        self.grayscale, self.pred_only, self.cmap = grayscale, pred_only, cmap
        self.depth_range = depth_range
        self.save_npy, self.save_png16 = save_npy, save_png16
        self.range_frames, self.on_frame = max(1, range_frames), on_frame
        # a metric model's depth is in metres: one range, never rescaled
        self.aligner = TemporalAligner() if temporal and depth_range is None else None
        self.one_range = temporal
        self.value_range: tuple[float, float] | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.frames = 0
        self.frames_dir = final.with_name(final.stem + "_frames")
        self.manifest: Manifest | None = None
        h, w = size
        width = w if pred_only else 2 * w + SEPARATOR_WIDTH
        # 4:2:0 chroma needs even sides: an odd side gets one more (edge-replicated) pixel
        self.padding = (h % 2, width % 2)
        self.tmp = temp_path(final, 0)
        final.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width + self.padding[1], h + self.padding[0]
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "18", "preset": "veryfast"}

    def add(self, frames: list[np.ndarray], maps: list[np.ndarray]) -> None:
        for rgb, disparity in zip(frames, maps, strict=True):
            if self.aligner is not None:
                disparity = self.aligner.align(disparity)[0]
            self._save_maps(disparity)
            self.pending.append((rgb, disparity))
            if (self.one_range and self.value_range is None
                    and len(self.pending) < self.range_frames):
                continue
            self._flush()

    def _flush(self) -> None:
        if self.one_range and self.value_range is None and self.pending:
            lo = min(float(d.min()) for _, d in self.pending)
            hi = max(float(d.max()) for _, d in self.pending)
            self.value_range = (lo, hi)
        for rgb, disparity in self.pending:
            self._encode(rgb, disparity)
        self.pending = []

    def _encode(self, rgb: np.ndarray, disparity: np.ndarray) -> None:
        av = _av()
        depth_rgb = colorize(disparity, grayscale=self.grayscale, cmap=self.cmap,
                             value_range=self.value_range)
        picture = depth_rgb if self.pred_only else side_by_side(rgb, depth_rgb)
        if any(self.padding):
            picture = np.pad(picture, ((0, self.padding[0]), (0, self.padding[1]), (0, 0)),
                             mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        self.on_frame()

    def _save_maps(self, disparity: np.ndarray) -> None:
        index = self.frames + len(self.pending)
        if self.save_npy:
            atomic_write(self.frames_dir / f"{index:06d}.npy", encode_npy(disparity).data)
        if self.save_png16:
            encoded = encode(disparity, "png16", self.depth_range)
            name = f"{index:06d}.png"
            atomic_write(self.frames_dir / name, encoded.data)
            if self.manifest is None:
                self.manifest = Manifest(self.frames_dir / "manifest.jsonl", truncate=True)
            self.manifest.add(ManifestRecord(
                input=f"{self.source}#frame={index}", output=name, shape=list(encoded.shape),
                min=encoded.min, max=encoded.max, checksum=checksum(encoded.data),
                bytes=len(encoded.data), format="png16"))

    def finish(self) -> Path | None:
        """Encode what waits, finalise the container and rename it into place (None and no
        file when no frame was written)."""
        self._flush()
        self._close_manifest()
        if self.frames == 0:
            self.discard()
            return None
        for packet in self.stream.encode():  # drain the encoder
            self.container.mux(packet)
        self.container.close()
        self.tmp.replace(self.final)
        return self.final

    def discard(self) -> None:
        self._close_manifest()
        with contextlib.suppress(Exception):
            self.container.close()
        self.tmp.unlink(missing_ok=True)

    def _close_manifest(self) -> None:
        if self.manifest is not None:
            self.manifest.close()
            self.manifest = None


def _run(source: _Source, predictor: Predictor, writer: _VideoWriter) -> None:
    """The three stages: decode + resize (thread) -> model (here) -> writer (thread)."""
    sink = _InBackground(lambda item: writer.add(*item))
    try:
        with contextlib.closing(_in_background(_decoded_batches(source, predictor))) as batches:
            for frames, x in batches:
                maps = original_size_maps(predictor.predict_tensor(x), [source.size] * len(x))
                sink.put((frames, maps))
        sink.close()
    except BaseException:
        sink.abort()
        raise


def predict_video(
    predictor: Predictor,
    path: str,
    final: Path,
    *,
    grayscale: bool = False,
    pred_only: bool = False,
    cmap: str = "Spectral_r",
    temporal_align: bool = True,
    depth_range: float | None = None,
    save_npy: bool = False,
    save_png16: bool = False,
    range_frames: int = RANGE_FRAMES,
    progress: bool = False,
) -> VideoResult:
    """Write the depth video of `path` to `final` (an .mp4 path): each frame, a 50-px white gap
    and its coloured depth (or the depth only with `pred_only`), at the source's frame rate and
    frame size.

    `temporal_align` aligns a relative model's disparity to the video's running reference
    (`temporal.TemporalAligner`; a metric model's depth, `depth_range` = its max depth, is in
    metres already and is never rescaled) and colours all frames with one range, fixed from the
    first `range_frames` frames; without it each frame is coloured by its own min-max, as the
    official `run_video.py` does. `save_npy` / `save_png16` also write each frame's (aligned)
    map to `<final stem>_frames/NNNNNN.npy` (float32) / `.png` (16-bit as `pseudo-label` writes
    it, min and max of each in that folder's `manifest.jsonl`).

    Raises VideoError when `path` cannot be read as a video at all (nothing is written),
    OSError when an output cannot be written (no partial video is left). A video whose decoding
    stops early is no exception: its `VideoResult` has the frames written and the `error`.
    """
    source = _Source.open(path)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.declared_frames or None, unit="frame", dynamic_ncols=True,
                   desc=Path(path).name)
    try:
        writer = _VideoWriter(
            final, source.rate, source.size, source=path, grayscale=grayscale,
            pred_only=pred_only, cmap=cmap, temporal=temporal_align,
            depth_range=depth_range, save_npy=save_npy, save_png16=save_png16,
            range_frames=range_frames, on_frame=bar.update if bar is not None else _nothing)
        try:
            _run(source, predictor, writer)
            output = writer.finish()
        except BaseException:
            writer.discard()
            raise
    finally:
        source.close()
        if bar is not None:
            bar.close()
    if output is None and source.error is None:
        source.error = "no frame could be decoded"
    return VideoResult(path, output, writer.frames, source.error)


def _nothing() -> None:
    return None
