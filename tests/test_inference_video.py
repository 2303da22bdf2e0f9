"""Depth videos (`predict` on videos) and their temporal alignment.

Test videos are generated with PyAV in each test (no binary test files): FFV1 in Matroska where
the frames must decode exactly, H.264 in MP4 (faststart) to cut a file part-way.
"""

from __future__ import annotations

import errno
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import varied_tiny_model

from depth_anything_fast.cli import main
from depth_anything_fast.inference.predictor import Predictor
from depth_anything_fast.inference.temporal import (
    TemporalAligner,
    fit_scale_shift,
    mean_frame_change,
)
from depth_anything_fast.inference.visualize import colorize, to_uint8
from depth_anything_fast.transforms import preprocess

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

INPUT_SIZE = 70
RATE = Fraction(30000, 1001)  # NTSC's 29.97: a rate an integer cast would change


def write_video(path: Path, frames: list[np.ndarray], *, codec: str = "ffv1",
                rate: Fraction = RATE, options: dict[str, str] | None = None) -> Path:
    """Encode (H, W, 3) uint8 frames; FFV1 (lossless) takes odd sizes, H.264 needs even ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, Fraction(stream.average_rate)


def static_clip(rng: np.random.Generator, n: int, h: int = 47, w: int = 65) -> list[np.ndarray]:
    """A static camera: one random scene of 8x8 blocks (H.264 keeps it) with per-frame noise
    and brightness changes."""
    blocks = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float64)
    scene = np.kron(blocks, np.ones((8, 8, 1)))[:h, :w]
    return [np.clip(scene * rng.uniform(0.9, 1.1) + rng.normal(0, 4, scene.shape), 0, 255)
            .astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = varied_tiny_model()
    return model, model.save_pretrained(tmp_path_factory.mktemp("w") / "tiny.safetensors")


# --- the alignment -----------------------------------------------------------------------------


def test_fit_scale_shift_recovers_affine_despite_outliers(np_rng: np.random.Generator) -> None:
    pred = np_rng.uniform(0.1, 5.0, 4000)
    scale, shift = np_rng.uniform(0.2, 5.0), np_rng.uniform(-3.0, 3.0)
    target = scale * pred + shift + np_rng.normal(0, 1e-3, pred.size)
    outliers = np_rng.random(pred.size) < 0.25  # a moving object: a quarter of the pixels
    target[outliers] += np_rng.uniform(2.0, 20.0, outliers.sum())
    got = fit_scale_shift(pred, target)
    # float64 oracle: the known affine map; the trimmed fit sees the inliers' noise only
    assert got == pytest.approx((scale, shift), rel=2e-3, abs=2e-3)
    # ordinary least squares on the same data is pulled far off (the test can fail)
    ols = np.polyfit(pred, target, 1)
    assert abs(ols[1] - shift) > 0.5
    assert fit_scale_shift(np.full(10, 2.0), np.arange(10.0)) == (1.0, 2.5)  # constant pred


def test_aligner_maps_every_frame_onto_the_first(np_rng: np.random.Generator) -> None:
    reference = np_rng.uniform(0.5, 3.0, (37, 53))
    aligner = TemporalAligner(max_points=500)  # a strided grid: not every pixel is fitted
    for t in range(6):
        scale, shift = (1.0, 0.0) if t == 0 else (np_rng.uniform(0.3, 3), np_rng.uniform(-1, 1))
        frame = (reference - shift) / scale + np_rng.normal(0, 1e-4, reference.shape)
        aligned, got_scale, got_shift = aligner.align(frame.astype(np.float32))
        np.testing.assert_allclose(aligned, reference, atol=5e-3 * max(scale, 1))
        assert got_scale == pytest.approx(scale, rel=5e-3)
    with pytest.raises(ValueError, match="shape"):
        aligner.align(np.ones((5, 5), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        aligner.align(np.full((37, 53), np.nan, np.float32))


def test_mean_frame_change() -> None:
    frames = [np.zeros((2, 3, 3), np.uint8), np.full((2, 3, 3), 6, np.uint8),
              np.full((2, 3, 3), 6, np.uint8)]
    assert mean_frame_change(frames) == 3.0  # (6 + 0) / 2 pairs
    with pytest.raises(ValueError):
        mean_frame_change(frames[:1])


# --- predict on videos -------------------------------------------------------------------------


def test_predict_video_frames_rate_size_and_maps(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, np_rng: np.random.Generator
) -> None:
    model, weights = tiny
    frames = static_clip(np_rng, 6)
    write_video(tmp_path / "in" / "clip.mkv", frames)
    out = tmp_path / "out"
    argv = ["predict", "--weights", str(weights), str(tmp_path / "in" / "clip.mkv"), "--outdir",
            str(out), "--input-size", str(INPUT_SIZE), "--batch-size", "4", "--no-progress"]
    assert main([*argv, "--no-temporal-align", "--save-npy", "--grayscale"]) == 0
    pictures, rate = read_video(out / "clip.mp4")
    assert rate == RATE and len(pictures) == 6
    # frame | 50 px white | depth, padded to even sides for 4:2:0 (47 x 180 -> 48 x 180)
    assert pictures[0].shape == (48, 65 + 50 + 65, 3)
    # lossy H.264 (4:2:0, CRF 18) of random colour blocks: 5.9-9.6 levels over 200 such clips
    # encoded alone; another frame (mirrored) in that place differs by 60 or more
    assert np.abs(pictures[3][:47, :65].astype(int) - frames[3]).mean() < 12
    assert pictures[3][:47, 70:110].min() > 230  # the white gap
    decoded, _ = read_video(tmp_path / "in" / "clip.mkv")  # RGB -> YUV 4:4:4 rounds
    raw = Predictor(model, input_size=INPUT_SIZE).predict(decoded)
    for i, expected in enumerate(raw):
        np.testing.assert_allclose(np.load(out / "clip_frames" / f"{i:06d}.npy"), expected,
                                   rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    # aligned maps: each an affine image of its raw map with a positive scale, frame 0 as is
    assert main([*argv, "--save-npy", "--save-png16", "--pred-only", "--grayscale"]) == 0
    pictures, _ = read_video(out / "clip.mp4")
    assert pictures[0].shape == (48, 66, 3)
    assert np.abs(pictures[2][..., 0].astype(int) - pictures[2][..., 2]).max() <= 6  # grey
    for i, expected in enumerate(raw):
        aligned = np.load(out / "clip_frames" / f"{i:06d}.npy").astype(np.float64)
        design = np.stack([expected.ravel(), np.ones(expected.size)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, aligned.ravel(), rcond=None)
        assert coef[0] > 0 and np.abs(design @ coef - aligned.ravel()).max() < 1e-4
        if i == 0:
            np.testing.assert_allclose(coef, [1.0, 0.0], atol=1e-5)
    records = (out / "clip_frames" / "manifest.jsonl").read_text().splitlines()
    assert len(records) == 6 and '"input":' in records[0] and "#frame=0" in records[0]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("temporal_align", [True, False])
def test_colour_range_one_for_the_video_or_per_frame(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, np_rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch, temporal_align: bool,
) -> None:
    """Controlled predictions: frame t is a ramp with its own scale and shift, and frame 9 (after
    the 8 frames that fix the range) also has a spike. Aligned, every frame is the first frame's
    ramp in one range (the spike clipped); unaligned, each frame is scaled by its own min-max
    (frame 9's ramp squeezed under its spike), as the official script."""
    from depth_anything_fast.inference.video import predict_video

    model, _ = tiny
    h, w = 32, 48
    clip = write_video(tmp_path / "clip.mkv", static_clip(np_rng, 10, h, w))
    ramp = np.tile(np.linspace(1.0, 2.0, w, dtype=np.float32), (h, 1))
    scales, shifts = np_rng.uniform(0.5, 2.0, 10), np_rng.uniform(-1.0, 1.0, 10)
    maps = [scales[t] * ramp + shifts[t] for t in range(10)]
    maps[9][10:14, 20:24] += 40.0 * scales[9]
    served = iter(maps)
    predictor = Predictor(model, batch_size=3, input_size=INPUT_SIZE)

    def fake_forward(x: torch.Tensor) -> torch.Tensor:  # network size: resized back after
        return torch.stack([torch.nn.functional.interpolate(
            torch.from_numpy(next(served))[None, None], size=tuple(x.shape[-2:]),
            mode="bilinear", align_corners=True)[0, 0] for _ in range(len(x))])

    monkeypatch.setattr(predictor, "predict_tensor", fake_forward)
    out = tmp_path / "out.mp4"
    predict_video(predictor, str(clip), out, pred_only=True, grayscale=True,
                  temporal_align=temporal_align)
    grey = [p[..., 0].astype(int) for p in read_video(out)[0]]
    lossy = 4  # H.264 rounding, mean absolute levels
    if temporal_align:
        expected = to_uint8(ramp).astype(int)  # frame 0's range: the ramp's own
        for t in range(10):
            spike = np.zeros((h, w), bool)
            if t == 9:
                spike[10:14, 20:24] = True
            assert np.abs(grey[t] - expected)[~spike].mean() < lossy
        assert grey[9][11:13, 21:23].min() > 240  # clipped at the top of the range
    else:
        for t in range(10):
            assert np.abs(grey[t] - to_uint8(maps[t]).astype(int)).mean() < lossy
        assert grey[9][:, -8:].max() < 60  # squeezed under the spike: the official flicker


def test_one_colour_range_flickers_less_than_per_frame_min_max(np_rng: np.random.Generator) -> None:
    """What the README's flicker figure measures, on a tiny model: static cameras with noise and
    brightness changes per frame; per-frame min-max (official) vs aligned + one range, summed
    over three clips.

    The model is drawn with 95% of its maps of such scenes above 0: where the final ReLU clips
    much of a map to 0, frames are no longer one map under different scales and shifts (the
    clipped part stays 0), and with 20% of noise images' maps (the other tests' model) one clip
    flickered as much either way in 3% of 96 draws. Over 600 draws of this test (model and
    clips), ours / official was at most 0.964, median 0.81."""
    probe = torch.cat([preprocess(static_clip(np_rng, 1, 56, 84)[0], INPUT_SIZE)
                       for _ in range(4)])
    model = varied_tiny_model(min_positive=0.95, probe=probe)
    predictor = Predictor(model, input_size=INPUT_SIZE)
    official = ours = 0.0
    for _ in range(3):
        raw = predictor.predict(static_clip(np_rng, 8, 56, 84))
        official += mean_frame_change([colorize(d) for d in raw])
        aligner = TemporalAligner()
        aligned = [aligner.align(d)[0] for d in raw]
        value_range = (min(a.min() for a in aligned), max(a.max() for a in aligned))
        ours += mean_frame_change([colorize(a, value_range=value_range) for a in aligned])
    assert ours < official


def test_mixed_folder_partial_and_broken_videos(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, np_rng: np.random.Generator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    _, weights = tiny
    src = tmp_path / "in"
    frames = [np_rng.integers(0, 256, (48, 64, 3)).astype(np.uint8) for _ in range(10)]
    # H.264 with the index first (faststart), cut part-way: frames are missing at the end
    whole = write_video(tmp_path / "whole.mp4", frames, codec="libx264",
                        options={"movflags": "faststart"}).read_bytes()
    (src / "cut.mp4").parent.mkdir(parents=True)
    (src / "cut.mp4").write_bytes(whole[: len(whole) * 6 // 10])
    (src / "noise.mp4").write_bytes(np_rng.integers(0, 256, 5000).astype(np.uint8).tobytes())
    write_video(src / "sub" / "ok.mkv", frames[:3])
    Image.fromarray(frames[0]).save(src / "a.png")
    out = tmp_path / "out"
    code = main(["predict", "--weights", str(weights), str(src), "--outdir", str(out),
                 "--input-size", str(INPUT_SIZE), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert (out / "a.png").is_file() and len(read_video(out / "sub" / "ok.mp4")[0]) == 3
    partial, _ = read_video(out / "cut.mp4")  # playable: the frames that could be read
    assert 0 < len(partial) < 10
    assert f"cut.mp4: truncated: {len(partial)} of the 10 frames" in err or (
        f"decoding failed after {len(partial)} frames" in err)
    assert "noise.mp4: cannot open as a video" in err and not (out / "noise.mp4").exists()
    assert not list(out.rglob("*.tmp"))


def test_interrupted_or_failing_video_leaves_no_file(
    tiny: tuple[torch.nn.Module, Path], tmp_path: Path, np_rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from depth_anything_fast.inference import video
    from depth_anything_fast.inference.pictures import predict_files
    from depth_anything_fast.inference.writers import OutputWriteError

    model, _ = tiny
    clip = write_video(tmp_path / "clip.mkv", static_clip(np_rng, 9, 48, 64))
    predictor = Predictor(model, batch_size=2, input_size=INPUT_SIZE)
    calls = {"n": 0}
    forward = predictor.predict_tensor

    def interrupted(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(x)

    monkeypatch.setattr(predictor, "predict_tensor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        video.predict_video(predictor, str(clip), tmp_path / "out" / "clip.mp4", range_frames=1)
    assert not list((tmp_path / "out").iterdir())  # no video, no temporary

    def disk_full(path: Path, data: bytes, rank: int = 0) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video, "atomic_write", disk_full)
    with pytest.raises(OutputWriteError, match="No space left"):
        predict_files(model, [str(clip)], tmp_path / "out2", input_size=INPUT_SIZE,
                      save_npy=True)
    assert not [p for p in (tmp_path / "out2").rglob("*") if p.is_file()]
