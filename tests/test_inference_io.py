"""Output encoding, atomic writes, manifests, visualisation and naming (no model needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from depth_anything_fast.formats.codec import decode_png16, encode, output_suffix, stored_spec
from depth_anything_fast.formats.manifest import (
    ErrorLog,
    Manifest,
    ManifestRecord,
    checksum,
    read_all_records,
    read_records,
    valid_outputs,
)
from depth_anything_fast.formats.names import output_names
from depth_anything_fast.inference.pseudo_label import Summary
from depth_anything_fast.inference.visualize import colorize, side_by_side, to_uint8
from depth_anything_fast.inference.writers import (
    BackgroundWriter,
    TarShardWriter,
    atomic_write,
    remove_stale_temporaries,
    temp_path,
)


def _random_map(h: int = 23, w: int = 37) -> np.ndarray:
    return (torch.rand(h, w, dtype=torch.float64) * 10 - 3).numpy().astype(np.float32)


def test_png16_roundtrip_within_half_a_code() -> None:
    d = _random_map()
    enc = encode(d, "png16")
    assert enc.shape == d.shape and enc.min == pytest.approx(d.min()) and enc.max == d.max()
    back = decode_png16(enc.data, enc.min, enc.max)
    step = (enc.max - enc.min) / 65535
    # float64 oracle: the quantisation error is at most half a code (+ float32 rounding)
    err = np.abs(back.astype(np.float64) - d.astype(np.float64)).max()
    assert err <= 0.5 * step + 1e-5 * abs(d).max()


def _pil_codes(data: bytes) -> np.ndarray:
    """The 16-bit codes of PNG bytes as PIL reads them (not our decoder)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode in ("I;16", "I;16B", "I"), im.mode
        return np.asarray(im).astype(np.int64)


@pytest.mark.parametrize("depth_range", [None, 6.0])
def test_png16_codes_follow_the_documented_formula(depth_range: float | None) -> None:
    """Codes read with PIL: q = round((d - min) / (max - min) * 65535) with the map's own
    min/max (relative), or min 0, max = depth_range and values clipped to it (metric)."""
    d = _random_map().astype(np.float64)
    enc = encode(d.astype(np.float32), "png16", depth_range)
    lo, hi = (float(np.float32(d).min()), float(np.float32(d).max())) if depth_range is None \
        else (0.0, depth_range)
    assert (enc.min, enc.max) == (lo, hi) and enc.shape == d.shape
    expected = np.rint((np.clip(np.float32(d), lo, hi) - lo) / (hi - lo) * 65535)
    codes = _pil_codes(enc.data)
    assert np.abs(codes - expected).max() <= 1  # float32 input rounding at a .5 boundary
    if depth_range is None:
        assert (codes.min(), codes.max()) == (0, 65535)
    else:
        assert (codes[d <= 0] == 0).all() and (codes[d >= depth_range] == 65535).all()
    back = decode_png16(enc.data, enc.min, enc.max)
    np.testing.assert_allclose(back, lo + codes / 65535 * (hi - lo), rtol=0, atol=1e-6 * hi)
    assert (_pil_codes(encode(np.full((3, 4), 2.5, np.float32), "png16").data) == 0).all()
    with pytest.raises(ValueError, match="depth_range"):
        encode(d, "png16", 0.0)


def test_npy_lossless_and_constant_and_nonfinite() -> None:
    d = _random_map()
    enc = encode(d, "npy")
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(enc.data)), d)
    const = encode(np.full((4, 5), 2.5, np.float32), "png16")
    np.testing.assert_array_equal(decode_png16(const.data, const.min, const.max), 2.5)
    bad = d.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        encode(bad, "png16")
    with pytest.raises(ValueError, match="format"):
        encode(d, "jpeg")
    with pytest.raises(ValueError, match="shape"):
        encode(d[None], "npy")


def test_atomic_write_and_stale_temporaries(tmp_path: Path) -> None:
    final = tmp_path / "a" / "b.png"
    atomic_write(final, b"hello", rank=1)
    assert final.read_bytes() == b"hello"
    assert not temp_path(final, 1).exists()
    temp_path(final, 1).write_bytes(b"partial")  # what a kill leaves behind
    temp_path(final, 0).write_bytes(b"other rank")
    assert remove_stale_temporaries(tmp_path, 1) == 1
    assert temp_path(final, 0).exists() and final.read_bytes() == b"hello"


def _record(name: str, data: bytes) -> ManifestRecord:
    return ManifestRecord(
        input=f"in/{name}",
        output=name,
        shape=[1, 1],
        min=0.0,
        max=1.0,
        checksum=checksum(data),
        bytes=len(data),
        format="png16",
    )


def test_manifest_truncated_line_is_ignored_and_cut(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    with Manifest(path) as m:
        m.add(_record("x.png", b"1"))
        m.add(_record("y.png", b"22"))
    with open(path, "a") as f:
        f.write('{"input": "in/z.png", "outp')  # killed mid-append
    assert [r.output for r in read_records(path)] == ["x.png", "y.png"]
    with Manifest(path) as m:  # reopening cuts the partial line
        m.add(_record("z.png", b"333"))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert set(read_all_records(tmp_path)) == {"x.png", "y.png", "z.png"}


def test_error_log_counts_and_truncates(tmp_path: Path) -> None:
    with ErrorLog(tmp_path / "errors.jsonl") as e:
        e.add("a.jpg", "empty file", "decode")
    assert e.count == 1
    with ErrorLog(tmp_path / "errors.jsonl") as e:  # a new run starts a fresh list
        pass
    assert (tmp_path / "errors.jsonl").read_text() == ""


def test_valid_outputs_detects_missing_resized_and_tampered(tmp_path: Path) -> None:
    records = []
    for name, data in (("ok.png", b"abc"), ("gone.png", b"def"), ("short.png", b"ghi")):
        atomic_write(tmp_path / name, data)
        records.append(_record(name, data))
    (tmp_path / "gone.png").unlink()
    (tmp_path / "short.png").write_bytes(b"gh")
    assert valid_outputs(tmp_path, records) == {"ok.png"}
    (tmp_path / "ok.png").write_bytes(b"abd")  # same size, different bytes
    assert valid_outputs(tmp_path, records) == {"ok.png"}
    assert valid_outputs(tmp_path, records, verify_checksum=True) == set()


def test_tar_shards_report_members_only_after_rename(tmp_path: Path) -> None:
    done: list[ManifestRecord] = []
    writer = TarShardWriter(tmp_path, "shard-r0", done.append, max_members=2)
    for i in range(3):
        writer.add(f"d/{i}.png", bytes([i]) * (i + 1), _record("?", bytes([i]) * (i + 1)))
    assert [r.member for r in done] == ["d/0.png", "d/1.png"]  # first shard full
    assert (tmp_path / "shard-r0-000000.tar").exists()
    assert temp_path(tmp_path / "shard-r0-000001.tar", 0).exists()
    writer.flush()
    assert len(done) == 3 and (tmp_path / "shard-r0-000001.tar").exists()
    assert valid_outputs(tmp_path, done, verify_checksum=True) == {r.key for r in done}
    with tarfile.open(tmp_path / "shard-r0-000000.tar") as tar:
        assert tar.getnames() == ["d/0.png", "d/1.png"]
    again = TarShardWriter(tmp_path, "shard-r0", done.append)  # a rerun never reuses an index
    again.add("e.png", b"x", _record("?", b"x"))
    again.flush()
    assert (tmp_path / "shard-r0-000002.tar").exists()


def test_background_writer_reports_errors(tmp_path: Path) -> None:
    done: list[ManifestRecord] = []
    failed: list[tuple[str, str]] = []
    writer = BackgroundWriter(2, done.append, lambda p, r: failed.append((p, r)), max_pending=1)

    def bad() -> ManifestRecord:
        raise ValueError("prediction contains non-finite values")

    writer.submit("a", lambda: _record("a.png", b"a"))
    writer.submit("b", bad)
    writer.close()
    assert [r.output for r in done] == ["a.png"]
    assert failed == [("b", "ValueError: prediction contains non-finite values")]


def test_colorize_matches_matplotlib_spectral_r() -> None:
    import matplotlib

    d = _random_map()
    rgb = colorize(d)
    # the official run.py expression on a float32 prediction
    codes = ((d - d.min()) / (d.max() - d.min()) * 255.0).astype(np.uint8)
    expected = (matplotlib.colormaps["Spectral_r"](codes)[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)
    gray = colorize(d, grayscale=True)
    np.testing.assert_array_equal(gray, np.repeat(codes[..., None], 3, axis=-1))
    assert to_uint8(np.ones((3, 3))).max() == 0
    image = np.zeros((23, 10, 3), np.uint8)
    combined = side_by_side(image, rgb)
    assert combined.shape == (23, 10 + 50 + 37, 3) and (combined[:, 10:60] == 255).all()
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8(np.array([[np.inf, 0.0]]))


def test_output_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    paths = [str(src / "a" / "x.jpg"), str(src / "a" / "x.png"), str(src / "b" / "y.v2.jpg")]
    assert output_names(str(src), paths, ".png") == ["a/x.jpg.png", "a/x.png.png", "b/y.v2.png"]
    (src).mkdir()
    assert output_names(str(src / "*" / "*.jpg"), paths[::2], ".npy") == [
        "a/x.npy",
        "b/y.v2.npy",
    ]


def test_output_names_stay_inside_the_output_directory(tmp_path: Path) -> None:
    # a list file (or single image) whose name looks like a glob is not read as one, and a glob
    # matching list files names images by their own folder: no name climbs out with ".."
    images = tmp_path / "data" / "imgs"
    images.mkdir(parents=True)
    paths = [str(images / "a.jpg"), str(images / "sub" / "b.jpg")]
    lists = tmp_path / "lists"
    lists.mkdir()
    list_file = lists / "train[v1].txt"
    list_file.write_text("\n".join(paths) + "\n")
    assert output_names(str(list_file), paths, ".png") == ["a.png", "sub/b.png"]
    assert output_names(str(lists / "*.txt"), paths, ".png") == ["a.png", "sub/b.png"]
    photo = images / "[2024] beach.jpg"
    photo.touch()
    assert output_names(str(photo), [str(photo)], ".png") == ["[2024] beach.png"]
    with pytest.raises(ValueError, match="leaves the output directory"):
        output_names("shard.tar", ["shard.tar::../evil.jpg"], ".png")
    with pytest.raises(ValueError, match="leaves the output directory"):
        output_names("shard.tar", ["shard.tar::/etc/evil.jpg"], ".png")


def test_summary_exit_codes() -> None:
    ok = Summary(total=3, succeeded=2, skipped=1, failed=0, interrupted=False, elapsed_s=1.0)
    assert ok.exit_code == 0 and "2 succeeded, 1 skipped" in ok.line()
    assert Summary(3, 1, 1, 1, False, 1.0).exit_code == 1
    assert Summary(3, 1, 0, 0, True, 1.0).exit_code == 130


def test_manifest_corrupt_middle_line_is_skipped_not_cut(tmp_path: Path, caplog) -> None:
    path = tmp_path / "manifest.jsonl"
    with Manifest(path) as m:
        m.add(_record("x.png", b"1"))
    with open(path, "a") as f:
        f.write('{"not": "a record"}\n{garbage\n')
    with Manifest(path) as m:  # complete lines are kept: only a truncated tail is cut
        m.add(_record("y.png", b"22"))
    with caplog.at_level("WARNING"):
        assert [r.output for r in read_records(path)] == ["x.png", "y.png"]
    assert "manifest.jsonl:2: skipped" in caplog.text and "manifest.jsonl:3: skipped" in caplog.text


# ------------------------------------------------ codec and manifest edges (from mutation testing)
def test_codec_outputs_dtypes_shapes_and_errors(tmp_path: Path) -> None:
    d = _random_map(5, 9)
    npy = encode(d, "npy")
    stored = np.load(io.BytesIO(npy.data))
    assert stored.dtype == np.float32 and stored.shape == (5, 9) == npy.shape
    assert (npy.min, npy.max) == (float(d.min()), float(d.max()))
    assert encode(d.astype(np.float64), "npy").data == npy.data  # float32 whatever the input
    png = encode(d, "png16")
    (tmp_path / "m.png").write_bytes(png.data)
    for source in (png.data, str(tmp_path / "m.png"), tmp_path / "m.png"):  # bytes or a path
        back = decode_png16(source, png.min, png.max)
        assert back.dtype == np.float32 and back.shape == (5, 9)
    one = encode(np.full((1, 1), 3.0, np.float32), "png16")  # a single pixel is a map
    assert one.shape == (1, 1) and _pil_codes(one.data).tolist() == [[0]]
    metric = encode(d, "png16", 0.5)  # any positive range, also under 1
    assert (metric.min, metric.max) == (0.0, 0.5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"depth_range must be positive, got {bad}"):
            encode(d, "png16", bad)
    with pytest.raises(ValueError, match=r"expected a non-empty \(H, W\) disparity, got shape"):
        encode(np.zeros((0, 4), np.float32), "npy")
    bad = d.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="^prediction contains non-finite values$"):
        encode(bad, "npy")
    with pytest.raises(ValueError, match=r"unknown output format 'jpeg'; expected one of \("):
        output_suffix("jpeg")
    assert [output_suffix(f) for f in ("png16", "npy", "webdataset")] == [".png", ".npy", ".png"]


@pytest.mark.parametrize("fmt", ["png16", "npy"])
@pytest.mark.parametrize("depth_range", [None, 20.0])
def test_stored_spec_reads_the_stored_maps_back(tmp_path: Path, fmt: str,
                                                depth_range: float | None) -> None:
    """What training reads from pseudo-labels (`data.sources` with `stored_spec`) is what was
    stored: relative disparity min-max normalised, or metric depth in metres."""
    from depth_anything_fast.data.sources import load_depth, load_target

    d = (np.abs(_random_map(6, 7)) + 1.0).astype(np.float32)  # 1..8: also valid depths
    enc = encode(d, fmt, depth_range)
    path = tmp_path / ("m" + output_suffix(fmt))
    path.write_bytes(enc.data)
    spec = stored_spec(fmt, depth_range)
    step = 0.5 / 65535 if fmt == "png16" else 1e-6
    if depth_range is None:
        assert spec.kind == "disparity" and spec.invalid == ()
        disparity, valid = load_target(str(path), spec)
        assert valid.all()
        expected = (d - d.min()) / (d.max() - d.min())
        assert np.abs(disparity - expected).max() <= step + 1e-6
    else:
        assert spec.kind == "depth" and spec.invalid == ()
        depth, valid = load_depth(str(path), spec)
        assert valid.all()
        assert np.abs(depth - d).max() <= step * depth_range + 1e-5
    with pytest.raises(ValueError, match="unknown output format"):
        stored_spec("tiff", depth_range)


def test_manifest_and_error_names_per_rank() -> None:
    from depth_anything_fast.formats.manifest import errors_name, manifest_name

    assert (manifest_name(0, 1), errors_name(0, 1)) == ("manifest.jsonl", "errors.jsonl")
    assert (manifest_name(1, 2), errors_name(3, 4)) == ("manifest.rank1.jsonl", "errors.rank3.jsonl")
    assert checksum(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_appender_writes_through_cuts_partial_lines_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "log.jsonl"  # folders made as needed
    appender = Manifest(path)
    record = _record("x.png", b"1")
    record.extra = {"note": 1}
    appender.add(record)
    appender.add(_record("y.png", b"2"))
    lines = path.read_bytes().splitlines()  # on disk before close: a kill loses nothing
    assert len(lines) == 2 and json.loads(lines[0])["extra"] == {"note": 1}
    assert "extra" not in json.loads(lines[1])
    assert [r.extra for r in read_records(path)] == [{"note": 1}, {}]
    appender.close()
    appender.close()  # twice is fine
    with pytest.raises(ValueError):
        appender.append({"late": True})
    for start in (b"", b'{"input": "partial'):  # empty, or only a truncated line
        path.write_bytes(start)
        with Manifest(path) as again:
            again.add(_record("z.png", b"3"))
        assert [r.output for r in read_records(path)] == ["z.png"]
        assert path.read_bytes().count(b"\n") == 1 and path.read_bytes()[:1] == b"{"


def test_error_log_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with ErrorLog(tmp_path / "errors.jsonl") as errors:
        errors.add("rel/a.jpg", "empty file", "decode")
        errors.add("shard.tar::b.jpg", "bad member", "decode")
        errors.add("c.txt", "not an image", "list", count=False)
    assert errors.count == 2
    lines = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert lines == [
        {"input": str(tmp_path / "rel" / "a.jpg"), "reason": "empty file", "stage": "decode"},
        {"input": "shard.tar::b.jpg", "reason": "bad member", "stage": "decode"},
        {"input": str(tmp_path / "c.txt"), "reason": "not an image", "stage": "list"},
    ]


def test_read_records_warns_naming_file_and_line(tmp_path: Path, caplog) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text('{garbage\n{"input": "x"}\n')
    with caplog.at_level("WARNING"):
        assert read_records(path) == []
    messages = [r.getMessage() for r in caplog.records]
    # the parser's own reason, as json.loads gives it
    try:
        json.loads("{garbage")
    except ValueError as err:
        reason = str(err)
    assert messages[0] == f"{path}:1: skipped, not valid JSON ({reason})"
    fields = sorted(f for f in ManifestRecord.__dataclass_fields__ if f != "extra")
    assert messages[1] == f"{path}:2: skipped, not a manifest record (needs fields {fields})"
    assert read_records(tmp_path / "missing.jsonl") == []


def test_read_all_records_newest_last(tmp_path: Path) -> None:
    import os

    with Manifest(tmp_path / "manifest.rank0.jsonl") as m:
        m.add(_record("x.png", b"old"))
        m.add(_record("y.png", b"y"))
    with Manifest(tmp_path / "manifest.jsonl") as m:
        m.add(_record("x.png", b"newer"))
    os.utime(tmp_path / "manifest.rank0.jsonl", ns=(1, 1))  # the older file
    records = read_all_records(tmp_path)
    assert list(records) == ["y.png", "x.png"]  # oldest to newest
    assert records["x.png"].bytes == len(b"newer")


def test_valid_outputs_in_tar_shards(tmp_path: Path, caplog) -> None:
    from depth_anything_fast.formats.manifest import finished_records

    done: list[ManifestRecord] = []
    writer = TarShardWriter(tmp_path, "shard-r0", done.append, max_members=3)
    contents = {f"{i}.png": bytes([65 + i]) * (i + 2) for i in range(6)}
    for name, data in contents.items():
        writer.add(name, data, _record(name, data))
    writer.flush()
    with Manifest(tmp_path / "manifest.jsonl") as m:
        for r in done:
            m.add(r)
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"plain")
    plain_record = _record("plain.png", b"plain")
    with Manifest(tmp_path / "manifest.jsonl") as m:
        m.add(plain_record)
    keys = {r.key for r in done} | {"plain.png"}
    assert valid_outputs(tmp_path, [*done, plain_record], verify_checksum=True) == keys
    # first shard: its first member recorded with another size, its second with other bytes of
    # the same size; the members after them are still checked. Second shard: not a tar.
    done[0].bytes += 1
    done[1].checksum = checksum(b"C" * 3)
    (tmp_path / done[3].file).write_bytes(b"not a tar")
    plain.write_bytes(b"plaiN")  # same size, other bytes
    by_key = {r.key: r for r in [*done, plain_record]}
    assert valid_outputs(tmp_path, by_key.values()) == {done[1].key, done[2].key, "plain.png"}
    assert valid_outputs(tmp_path, by_key.values(), verify_checksum=True) == {done[2].key}
    # finished_records: by size unless asked to verify, with a warning counting what is ignored
    with caplog.at_level("WARNING"):
        finished = finished_records(tmp_path)
    assert set(finished) == {done[0].key, done[1].key, done[2].key, "plain.png"}
    assert f"{tmp_path}: 3 of 7 manifest records name an output that is missing or changed on " \
           f"disk (first: {done[3].key}); ignored" in caplog.text
    assert set(finished_records(tmp_path, verify_checksum=True)) == {
        done[0].key, done[1].key, done[2].key}
