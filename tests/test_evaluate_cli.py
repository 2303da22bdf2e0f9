"""`depth-anything-fast evaluate` end to end: saved predictions and a tiny random model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depth_anything_fast.evaluate import cli as evaluate_cli
from depth_anything_fast.evaluate.paper import PAPER_TABLE2, paper_numbers
from depth_anything_fast.evaluate.runner import (
    SCORINGS,
    PredictionDirectory,
    Scoring,
    evaluate_predictions,
)

rng: np.random.Generator  # this test's generator (conftest's seed), set by _seeded_rng


@pytest.fixture(autouse=True)
def _seeded_rng(np_rng: np.random.Generator) -> None:
    global rng
    rng = np_rng
H, W = 20, 28


def run_cli(argv: list[str]) -> int:
    # the evaluate command on its own parser: independent of the other commands' modules
    parser = argparse.ArgumentParser()
    evaluate_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def make_generic(root: Path, n: int = 3) -> list[np.ndarray]:
    """root/color/NNN.png + root/depth/NNN.png (16-bit mm); returns depths in metres."""
    depths = []
    for i in range(n):
        (root / "color").mkdir(parents=True, exist_ok=True)
        (root / "depth").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            root / "color" / f"{i:03d}.png"
        )
        mm = rng.integers(500, 9000, (H, W))
        mm[rng.random((H, W)) < 0.2] = 0
        Image.fromarray(mm.astype(np.uint16)).save(root / "depth" / f"{i:03d}.png")
        depths.append(mm / 1000.0)
    return depths


def affine_disparity(depth_m: np.ndarray) -> np.ndarray:
    """A relative prediction: exact GT disparity up to a scale and shift (holes filled)."""
    disparity = np.where(depth_m > 0, 1.0 / np.where(depth_m > 0, depth_m, 1.0), 0.3)
    return (2.5 * disparity + 0.7).astype(np.float32)


def add_png16_prediction(
    manifest, preds: Path, output: str, image: Path, values: np.ndarray, depth_range=None
) -> None:
    """Store `values` as pseudo-label does: a 16-bit PNG `preds/output` and its manifest record
    (the min/max its codes stand for), naming `image` as the input."""
    from depth_anything_fast.formats.codec import encode_png16
    from depth_anything_fast.formats.manifest import ManifestRecord

    encoded = encode_png16(values, depth_range)
    (preds / output).parent.mkdir(parents=True, exist_ok=True)
    (preds / output).write_bytes(encoded.data)
    manifest.add(
        ManifestRecord(
            input=str(image),
            output=output,
            shape=list(encoded.shape),
            min=encoded.min,
            max=encoded.max,
            checksum="",
            bytes=len(encoded.data),
            format="png16",
        )
    )


def test_cli_scores_npy_and_png16_predictions(tmp_path, capsys):
    from depth_anything_fast.formats.manifest import Manifest

    data, preds = tmp_path / "data", tmp_path / "preds"
    depths = make_generic(data)
    preds.mkdir()
    # image 0: .npy without manifest (matched by name), image 1: pseudo-label style 16-bit PNG
    # with its manifest record (matched by input path), image 2: no prediction
    np.save(preds / "000.npy", affine_disparity(depths[0]))
    with Manifest(preds / "manifest.jsonl") as manifest:
        add_png16_prediction(
            manifest, preds, "sub/001.png", data / "color" / "001.png", affine_disparity(depths[1])
        )
    out_json = tmp_path / "result.json"
    code = run_cli(
        [
            "--dataset",
            "generic",
            "--root",
            str(data),
            "--encoding",
            "mm",
            "--predictions",
            str(preds),
            "--output",
            str(out_json),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "AbsRel" in printed and "ours" in printed and "1 without prediction" in printed
    result = json.loads(out_json.read_text())
    assert result["space"] == "disparity" and result["alignment"] == "scale_shift"
    assert (
        result["n_images"] == 3
        and result["n_evaluated"] == 2
        and result["missing"] == ["color/002"]
    )
    by_name = {r["name"]: r for r in result["per_image"]}
    assert by_name["color/000"]["abs_rel"] < 1e-5  # float32 storage only
    assert by_name["color/001"]["abs_rel"] < 2e-4  # 16-bit quantisation of the disparity
    assert result["mean"]["delta1"] == 1.0
    assert by_name["color/000"]["scale"] == pytest.approx(1 / 2.5, rel=1e-4)


def test_runner_resizes_and_depth_space(tmp_path):
    data = tmp_path / "data"
    depths = make_generic(data, n=2)
    from depth_anything_fast.evaluate.datasets import get_reader

    reader = get_reader("generic", data, encoding="mm")

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        # half-resolution predictions of the right content: resized back before scoring
        return [
            np.asarray(Image.fromarray(affine_disparity(depths[int(i)])).resize((W // 2, H // 2)))
            for i in range(len(images))
        ]

    result = evaluate_predictions(reader, predict, scoring="relative-depth", batch_size=2)
    assert result.n_evaluated == 2 and result.per_image[0]["resized_from"] == [H // 2, W // 2]
    assert 0 < result.mean["abs_rel"] < 1.0 and result.space == "depth"
    with pytest.raises(ValueError, match="space='depth'"):
        Scoring(alignment="median")
    with pytest.raises(ValueError, match="relative disparity"):
        Scoring(space="depth", alignment="median")
    with pytest.raises(ValueError, match="unknown scoring 'median'"):
        evaluate_predictions(reader, predict, scoring="median")
    assert SCORINGS["relative-depth"] == Scoring.choose(metric=False, space="depth")
    assert SCORINGS["metric-median"] == Scoring.choose(metric=True)
    assert SCORINGS["metric-as-relative"] == Scoring.choose(metric=True, alignment="scale_shift")


def test_prediction_directory_suffix_matching(tmp_path):
    from depth_anything_fast.evaluate.datasets import Sample

    for rel in ("a/x/img.npy", "b/x/img.npy", "x/other.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / rel, np.zeros((2, 2), np.float32))
    store = PredictionDirectory(tmp_path)
    blank = np.zeros((2, 2))

    def find(name: str) -> Path | None:
        hit = store.find(Sample(name, None, blank, blank > 0))
        return None if hit is None else hit.path.relative_to(tmp_path)

    assert find("root/a/x/img") == Path("a/x/img.npy")
    assert find("x/img") is None  # ambiguous: a/x/img and b/x/img
    assert find("deep/root/x/other") == Path("x/other.npy")
    # DDAD/generic samples are named X for an image X_rgb.png: its own stem matches too
    np.save(tmp_path / "x" / "0001_rgb.npy", np.zeros((2, 2), np.float32))
    hit = store.find(Sample("x/0001", None, blank, blank > 0, "/data/x/0001_rgb.png"))
    assert hit is None  # store built before the file existed
    store = PredictionDirectory(tmp_path)
    hit = store.find(Sample("x/0001", None, blank, blank > 0, "/data/x/0001_rgb.png"))
    assert hit is not None and hit.path == tmp_path / "x" / "0001_rgb.npy"
    assert find("x/0001") is None  # without the image path, the name alone does not match
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no predictions"):
        PredictionDirectory(tmp_path / "empty")


def test_cli_compare_paper_on_kitti_layout(tmp_path, capsys):
    lines = []
    for frame in ("0000000005", "0000000069"):
        image_rel = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{frame}.png"
        depth_rel = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{frame}.png"
        for rel in (image_rel, depth_rel):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(
            tmp_path / image_rel
        )
        raw = rng.integers(256, 70 * 256, (30, 60))
        Image.fromarray(raw.astype(np.uint16)).save(tmp_path / depth_rel)
        prediction = (256.0 / raw + 0.01 * rng.standard_normal(raw.shape)).astype(np.float32)
        pred_path = tmp_path / "pred" / image_rel.replace(".png", ".npy")
        pred_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(pred_path, prediction)
        lines.append(f"{image_rel} {depth_rel} 721.5377")
    (tmp_path / "eigen_test_files_with_gt.txt").write_text("\n".join(lines))
    code = run_cli(
        [
            "--dataset",
            "kitti",
            "--root",
            str(tmp_path),
            "--predictions",
            str(tmp_path / "pred"),
            "--compare-paper",
            "--size",
            "vits",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "paper Depth Anything ViT-S" in printed and "0.080" in printed and "0.936" in printed
    assert "paper MiDaS v3.1 BEiT-L-512" in printed


def test_cli_scores_metric_predictions_as_depth(tmp_path):
    """A metric model's pseudo-label output (spec.json kind "depth", fixed-scale 16-bit PNG) is
    scored as metric depth with median alignment, not taken for disparity."""
    from depth_anything_fast.formats.codec import stored_spec
    from depth_anything_fast.formats.manifest import Manifest

    data, preds = tmp_path / "data", tmp_path / "preds"
    depths = make_generic(data)
    preds.mkdir()
    stored_spec("png16", 20.0).to_json(preds / "spec.json")
    with Manifest(preds / "manifest.jsonl") as manifest:
        for i, depth in enumerate(depths):
            # metric prediction: the true depth times 1.25 (holes filled with 1 m)
            metric = (1.25 * np.where(depth > 0, depth, 1.0)).astype(np.float32)
            image = data / "color" / f"{i:03d}.png"
            add_png16_prediction(manifest, preds, f"{i:03d}.png", image, metric, 20.0)
    assert PredictionDirectory(preds).metric
    out_json = tmp_path / "result.json"
    args = ["--dataset", "generic", "--root", str(data), "--encoding", "mm"]
    args += ["--predictions", str(preds), "--output", str(out_json), "--no-progress"]
    assert run_cli(args) == 0
    result = json.loads(out_json.read_text())
    assert result["space"] == "depth" and result["alignment"] == "median"
    assert result["n_evaluated"] == 3
    for row in result["per_image"]:
        assert row["scale"] == pytest.approx(1 / 1.25, rel=1e-3)
        assert row["abs_rel"] < 2e-4  # 16-bit steps of 20 m / 65535
    assert run_cli([*args, "--alignment", "none"]) == 0
    # unaligned: 25% too far, less where the prediction is clipped to the GT depth range
    assert 0.15 < json.loads(out_json.read_text())["mean"]["abs_rel"] <= 0.25 + 1e-3
    # relative metrics of a metric model: its depth is inverted before the affine fit
    assert run_cli([*args, "--alignment", "scale_shift"]) == 0
    result = json.loads(out_json.read_text())
    assert result["space"] == "disparity" and result["mean"]["abs_rel"] < 2e-4


def test_cli_errors_are_clear(tmp_path, capsys):
    assert run_cli(["--dataset", "sintel", "--root", str(tmp_path), "--predictions", "x"]) == 2
    assert "expected directories depth/ and final/" in capsys.readouterr().err
    assert run_cli(["--dataset", "generic", "--root", str(tmp_path)]) == 2
    assert "--predictions" in capsys.readouterr().err
    make_generic(tmp_path / "d", n=1)
    assert (
        run_cli(
            [
                "--dataset",
                "generic",
                "--root",
                str(tmp_path / "d"),
                "--split",
                "test",
                "--predictions",
                "x",
            ]
        )
        == 2
    )
    assert "does not take that option" in capsys.readouterr().err


def test_paper_table():
    assert paper_numbers("vitl", "nyuv2") == {"abs_rel": 0.043, "delta1": 0.981}
    assert paper_numbers("vitb", "generic") is None
    assert set(PAPER_TABLE2) == {"midas_v3.1_beit_l_512", "vits", "vitb", "vitl"}
    assert all(len(v) == 6 for v in PAPER_TABLE2.values())


def test_cli_with_tiny_random_model(tmp_path):
    from depth_anything_fast.models import DepthAnything
    from depth_anything_fast.models.architecture import DepthAnythingConfig

    config = DepthAnythingConfig.preset("vits", embed_dim=32, depth=4, num_heads=2, features=16)
    model = DepthAnything(config=config)
    with torch.no_grad():  # the final ReLU of a random head often outputs all zeros: lift it
        model.head.scratch.output_conv2[2].bias.fill_(1.0)
    model.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    make_generic(data, n=3)
    out_json = tmp_path / "r.json"
    code = run_cli(
        [
            "--dataset",
            "generic",
            "--root",
            str(data),
            "--encoding",
            "mm",
            "--weights",
            str(tmp_path / "model"),
            "--batch-size",
            "2",
            "--input-size",
            "28",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--space",
            "depth",
            "--output",
            str(out_json),
            "--no-progress",
        ]
    )
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["n_images"] == 3 and result["space"] == "depth"
    assert result["source"]["weights"] == str(tmp_path / "model")
    assert result["n_evaluated"] == 3
    assert all(np.isfinite(row["abs_rel"]) for row in result["per_image"])


def test_cli_depth_range_limits_valid_pixels(tmp_path):
    data, preds = tmp_path / "data", tmp_path / "preds"
    (depth,) = make_generic(data, n=1)
    preds.mkdir()
    np.save(preds / "000.npy", affine_disparity(depth))
    out_json = tmp_path / "r.json"
    argv = ["--dataset", "generic", "--root", str(data), "--encoding", "mm", "--predictions",
            str(preds), "--min-depth", "1.0", "--max-depth", "5.0", "--output", str(out_json),
            "--no-progress"]  # fmt: skip
    assert run_cli(argv) == 0
    result = json.loads(out_json.read_text())
    assert (result["min_depth"], result["max_depth"]) == (1.0, 5.0)
    expected = int(((depth >= 1.0) & (depth <= 5.0)).sum())
    assert result["per_image"][0]["n_valid"] == expected


def test_runner_resizes_like_the_predictor(tmp_path):
    # A map stored at network size (pseudo-label's default) must score exactly like the same map
    # resized back by `Predictor.predict` (bilinear, align_corners=True).
    from depth_anything_fast.evaluate.datasets import get_reader
    from depth_anything_fast.transforms import resize_prediction

    data = tmp_path / "data"
    make_generic(data, n=2)
    reader = get_reader("generic", data, encoding="mm")
    small = [rng.random((H // 2 + 1, W // 2 + 3)).astype(np.float32) + 0.1 for _ in range(2)]

    def at_network_size(images: list[np.ndarray]) -> list[np.ndarray]:
        return small[: len(images)]

    def like_predictor(images: list[np.ndarray]) -> list[np.ndarray]:
        return [resize_prediction(torch.from_numpy(s)[None], (H, W))[0].numpy() for s in small]

    resized = evaluate_predictions(reader, at_network_size, batch_size=2)
    direct = evaluate_predictions(reader, like_predictor, batch_size=2)
    for a, b in zip(resized.per_image, direct.per_image, strict=True):
        for name in ("abs_rel", "delta1", "rmse", "scale", "shift"):
            assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-12), name
