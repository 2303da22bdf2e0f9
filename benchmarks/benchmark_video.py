"""Depth videos: flicker of per-frame min-max colouring (the official run_video.py) against
temporal alignment with one colour range (ours), and streaming speed and memory.

    .venv/bin/python benchmarks/benchmark_video.py [--out benchmarks/results/video.md]

Flicker: for each of the first `--images` photographs of ../shared/data/images, a static-camera
clip of `--frames` frames (the photo at 640 px wide, each frame with its own brightness gain
U(0.95, 1.05) and Gaussian noise sigma 3 levels), H.264 (crf 18). Both depth videos are written
by `predict` (--pred-only) from the same clip, decoded, and measured with
`temporal.mean_frame_change` (mean absolute change between consecutive frames of the coloured
depth, 0..255 levels). Mean over clips with a 95% t-interval, and the paired difference.

Streaming: a 300-frame clip (and a 100-frame one) through `predict_video` in a fresh process
each. In that process, first the Predictor alone on 24 of the clip's frames (forward only,
network-sized inputs prepared beforehand: images/s), then the video (frames/s, decoding,
alignment and encoding included; and the share of its wall time spent in the model's forward,
the rest being what the pipeline fails to hide), while a thread samples the resident set size (VmRSS) every
0.1 s: its peak over the run and over the first and last third of the run.

Models: by default the tests' tiny random-weight model (`tests/conftest.varied_tiny_model`) at
input size 518; `--weights W --input-size N` takes another (e.g. the demo's teacher, trained on
its synthetic world, at 112). No pretrained weights can be downloaded on the machines this runs
on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest.varied_tiny_model: the tests' tiny model

BATCH = 4


def make_clip(photo: Path, path: Path, frames: int, seed: int) -> None:
    import av
    from PIL import Image

    rng = np.random.default_rng(seed)
    with Image.open(photo) as im:
        im = im.convert("RGB")
        w = 640
        h = round(im.height * w / im.width) // 2 * 2
        scene = np.asarray(im.resize((w, h), Image.BICUBIC), dtype=np.float64)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for _ in range(frames):
            frame = np.clip(scene * rng.uniform(0.95, 1.05) + rng.normal(0, 3, scene.shape),
                            0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """The first `limit` frames (all when None) as (H, W, 3) uint8 RGB."""
    import itertools

    import av

    with av.open(str(path)) as container:
        frames = container.decode(container.streams.video[0])
        return [f.to_ndarray(format="rgb24") for f in itertools.islice(frames, limit)]


def flicker(weights: Path, photos: list[Path], frames: int, work: Path, input_size: int
            ) -> list[dict]:
    from depth_anything_fast.inference.pictures import predict_files
    from depth_anything_fast.inference.temporal import mean_frame_change

    rows = []
    for i, photo in enumerate(photos):
        clip = work / f"static{i}.mp4"
        make_clip(photo, clip, frames, seed=i)
        row = {"image": photo.name, "input": mean_frame_change(read_frames(clip))}
        for name, align in (("per_frame", False), ("ours", True)):
            out = work / name
            predict_files(str(weights), [str(clip)], out, batch_size=BATCH,
                          input_size=input_size, pred_only=True, temporal_align=align)
            row[name] = mean_frame_change(read_frames(out / f"static{i}.mp4"))
        rows.append(row)
        print(row, flush=True)
    return rows


def _stream_child(weights: str, clip: str, out: str, input_size: str) -> None:
    """Run in a fresh process: the Predictor alone, then one video through predict_video;
    print images/s, frames/s and the RSS samples' peaks."""
    import torch
    from benchmark_support import rss_bytes

    from depth_anything_fast.inference.predictor import Predictor, load_model
    from depth_anything_fast.inference.video import predict_video
    from depth_anything_fast.transforms import preprocess

    size = int(input_size)
    predictor = Predictor(load_model(weights), batch_size=BATCH, input_size=size)
    frames = read_frames(Path(clip), 24)  # not the whole clip: its RSS would mask growth
    batches = [torch.cat([preprocess(f, size) for f in frames[i:i + BATCH]])
               for i in range(0, len(frames), BATCH)]
    predictor.predict_tensor(batches[0])  # warm-up
    start = time.perf_counter()
    for x in batches[1:]:
        predictor.predict_tensor(x)
    images_per_s = (len(frames) - BATCH) / (time.perf_counter() - start)
    del frames, batches
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_bytes() / 2**20))
            time.sleep(0.1)

    forward_seconds = []
    forward = predictor.predict_tensor

    def timed_forward(x: torch.Tensor) -> torch.Tensor:
        begin = time.perf_counter()
        y = forward(x)
        forward_seconds.append(time.perf_counter() - begin)
        return y

    predictor.predict_tensor = timed_forward  # type: ignore[method-assign]
    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    result = predict_video(predictor, clip, Path(out))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    third = seconds / 3
    first = max(r for t, r in samples if t - start <= third)
    last = max(r for t, r in samples if t - start >= 2 * third)
    print(json.dumps({"frames": result.frames, "seconds": seconds,
                      "frames_per_s": result.frames / seconds,
                      "predictor_images_per_s": images_per_s,
                      "forward_share": sum(forward_seconds) / seconds,
                      "network_size": list(predictor.predict_tensor(
                          preprocess(read_frames(Path(clip), 1)[0], size)).shape[-2:]),
                      "peak_rss_mb": max(r for _, r in samples),
                      "peak_rss_first_third_mb": first, "peak_rss_last_third_mb": last}))


def stream(weights: Path, photo: Path, work: Path, input_size: int,
           lengths: list[int]) -> dict:
    runs = {}
    for frames in lengths:
        clip = work / f"long{frames}.mp4"
        make_clip(photo, clip, frames, seed=frames)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(weights), str(clip),
             str(work / f"long{frames}_depth.mp4"), str(input_size)],
            capture_output=True, text=True, check=True)
        runs[frames] = json.loads(done.stdout.strip().splitlines()[-1])
        print(frames, runs[frames], flush=True)
    return runs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _stream_child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "video.md"))
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--work", default="/tmp/daf_video_bench")
    parser.add_argument("--weights", default=None, help="default: the tests' tiny model")
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--model-name", default="tests' tiny random-weight model (embed 32, "
                        "depth 4)")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--stream-frames", type=int, nargs="+", default=[100, 300],
                        help="clip lengths streamed, each in a fresh process")
    parser.add_argument("--skip-flicker", action="store_true")
    args = parser.parse_args()
    import torch
    from conftest import SHARED_DATA, varied_tiny_model

    torch.manual_seed(0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights) if args.weights else varied_tiny_model().save_pretrained(
        work / "tiny.safetensors")
    photos = sorted((SHARED_DATA / "images").glob("*.jpg"))[: args.images]
    rows = [] if args.skip_flicker else flicker(weights, photos, args.frames, work,
                                                args.input_size)
    streaming = {} if args.skip_stream else stream(weights, photos[0], work, args.input_size,
                                                        args.stream_frames)
    lines = [
        "# Depth videos: flicker and streaming",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads (2-core shared development machine), "
        f"torch {torch.__version__}, CPU fp32. Model: {args.model_name}, input size "
        f"{args.input_size}, batch {BATCH}. "
        f"Command: `.venv/bin/python benchmarks/benchmark_video.py {shlex.join(sys.argv[1:])}`. "
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (other "
        "jobs share the machine).",
        "",
    ]
    if rows:
        from depth_anything_fast.recipe.statistics import t_interval

        per_frame = t_interval([r["per_frame"] for r in rows])
        ours = t_interval([r["ours"] for r in rows])
        diff = t_interval([r["ours"] - r["per_frame"] for r in rows])
        lines += [
            f"## Flicker on static-camera clips ({len(rows)} photos, {args.frames} frames each)",
            "",
            "Mean absolute change between consecutive frames of the coloured depth video "
            "(0..255 levels; lower is steadier).",
            "",
            "| clip | input frames | per-frame min-max (official) | aligned, one range (ours) |",
            "|---|---|---|---|",
            *[f"| {r['image']} | {r['input']:.2f} | {r['per_frame']:.2f} | {r['ours']:.2f} |"
              for r in rows],
            f"| **mean (95% CI)** | | {per_frame.mean:.2f} ({per_frame.lo:.2f} .. {per_frame.hi:.2f})"
            f" | {ours.mean:.2f} ({ours.lo:.2f} .. {ours.hi:.2f}) |",
            "",
            f"Paired difference ours - official: {diff.mean:.2f} ({diff.lo:.2f} .. {diff.hi:.2f}) "
            f"levels; ratio of means {ours.mean / per_frame.mean:.2f}.",
            "",
        ]
    if streaming:
        lines += [
            "## Streaming",
            "",
            "| clip (640 px wide) | video frames/s | model forward, share of the video's time | "
            "Predictor alone, images/s | peak RSS | peak RSS, first / last third of the run |",
            "|---|---|---|---|---|---|",
            *[f"| {n} frames | {r['frames_per_s']:.2f} | {r['forward_share']:.1%} | "
              f"{r['predictor_images_per_s']:.2f} "
              f"({r['network_size'][0]}x{r['network_size'][1]}) | {r['peak_rss_mb']:.0f} MB | "
              f"{r['peak_rss_first_third_mb']:.0f} / {r['peak_rss_last_third_mb']:.0f} MB |"
              for n, r in streaming.items()],
            "",
        ]
    Path(args.out).write_text("\n".join(lines))
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"flicker": rows, "streaming": streaming}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
