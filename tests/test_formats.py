"""The storage layer: list files, image discovery, `LabelledSpec` and output names (the codec
and manifests: tests/test_inference_io.py; the rest of `formats` is exercised by the data,
inference and evaluate tests that read and write through it)."""

from __future__ import annotations

import pytest

from depth_anything_fast.formats.images import (
    find_images,
    first_existing_image,
    is_image,
    list_images,
)
from depth_anything_fast.formats.list_files import read_list_file


def test_list_file_columns_comments_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "pairs.csv"
    listing.write_text("# image, depth\n\n a.png, d/a.png extra\n/abs/b.jpg /abs/b.npy\n")
    rows = read_list_file(listing, ("image", "depth"))
    assert rows == [
        [str(tmp_path / "sub" / "a.png"), str(tmp_path / "sub" / "d" / "a.png"),
         str(tmp_path / "sub" / "extra")],
        ["/abs/b.jpg", "/abs/b.npy"],
    ]  # fmt: skip
    listing.write_text("a.png d.png\nlonely.png\n")
    with pytest.raises(ValueError, match=r"pairs.csv:2: expected 'image depth', got 'lonely.png'"):
        read_list_file(listing, ("image", "depth"))


def test_image_extensions_and_first_existing(tmp_path):
    assert is_image("x.JPG") and is_image("a/b.webp") and not is_image("x.npy")
    assert first_existing_image(tmp_path, "x") is None
    (tmp_path / "x.JPG").write_bytes(b"")
    assert first_existing_image(tmp_path, "x") == tmp_path / "x.JPG"
    (tmp_path / "x.png").write_bytes(b"")  # .png comes first in IMAGE_EXTENSIONS
    assert first_existing_image(tmp_path, "x") == tmp_path / "x.png"
    (tmp_path / "list.txt").write_text("x.png\n# skipped\nx.JPG\n")
    assert list_images(tmp_path / "list.txt") == [str(tmp_path / "x.png"), str(tmp_path / "x.JPG")]


def test_labelled_spec_checks_and_json_round_trip(tmp_path, monkeypatch):
    from depth_anything_fast.formats.spec import (
        SPEC_FILE,
        LabelledSpec,
        folder_spec,
        spec_from_folder,
    )

    for scale in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="LabelledSpec.scale must be finite and nonzero, got"):
            LabelledSpec(scale=scale)
    assert LabelledSpec(bit_rotate=15).bit_rotate == 15
    for rotate in (16, -1):
        with pytest.raises(ValueError, match=rf"bit_rotate must be in \[0, 16\), got {rotate}"):
            LabelledSpec(bit_rotate=rotate)
    spec = LabelledSpec(kind="disparity", scale=0.5, invalid=(0, 65535), max_depth=9.0)
    assert spec.invalid == (0.0, 65535.0)
    spec.to_json(tmp_path / SPEC_FILE)
    assert LabelledSpec.from_json(tmp_path / SPEC_FILE) == spec == folder_spec(tmp_path)
    assert folder_spec(tmp_path / "none") is None
    default = LabelledSpec()
    assert spec_from_folder(str(tmp_path / "none"), default) is default
    with pytest.raises(FileNotFoundError,
                       match=f"no LabelledSpec given and {tmp_path / 'none' / SPEC_FILE} does not"):
        spec_from_folder(str(tmp_path / "none"), None)
    monkeypatch.chdir(tmp_path)  # "" is the working directory
    assert folder_spec("") == spec and spec_from_folder("", None) == spec
    (tmp_path / SPEC_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no LabelledSpec given and \./spec\.json does"):
        spec_from_folder("", None)


def test_output_names_roots(tmp_path, monkeypatch):
    """Names are relative to the folder given, to a glob's fixed folders (also when every match
    lies deeper), or to a tar shard's members (any '::' after the first is the member's)."""
    from depth_anything_fast.formats.names import output_names

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    paths = [str(src / "a" / "x.jpg"), str(src / "a" / "y.jpg")]
    assert output_names(str(src), paths, ".png") == ["a/x.png", "a/y.png"]
    assert output_names(str(src / "*" / "*.jpg"), paths, ".png") == ["a/x.png", "a/y.png"]
    monkeypatch.chdir(tmp_path)
    assert output_names("src/*/*.jpg", paths, ".png") == ["a/x.png", "a/y.png"]
    monkeypatch.chdir(src)
    assert output_names("*/*.jpg", paths, ".png") == ["a/x.png", "a/y.png"]
    assert output_names("a/x.jpg", paths[:1], ".png") == ["x.png"]  # one image: its folder
    members = ["s.tar::dir/p.jpg", "s.tar::q::r.jpg"]
    assert output_names("s.tar", members, ".npy") == ["dir/p.npy", "q::r.npy"]


def test_output_names_of_an_existing_list_file_with_glob_characters(tmp_path):
    """An existing list file named like a glob (`[1].txt`) is a file, not a pattern: names are
    relative to the deepest folder holding the images, not to the list's own folder."""
    from depth_anything_fast.formats.names import output_names

    (tmp_path / "sub").mkdir()
    listing = tmp_path / "[1].txt"
    paths = [str(tmp_path / "sub" / "a.jpg"), str(tmp_path / "sub" / "b.jpg")]
    listing.write_text("\n".join(paths) + "\n")
    assert output_names(str(listing), paths, ".png") == ["a.png", "b.png"]


def test_output_names_collisions(tmp_path):
    from depth_anything_fast.formats.names import check_unique_names, output_names

    # one member name in two shards: the extension is kept, and still the names collide
    with pytest.raises(ValueError,
                       match=r"several inputs map to the output names \['x.jpg.png'\]; "):
        output_names("*.tar", ["a.tar::x.jpg", "b.tar::x.jpg"], ".png")
    names = [f"{i}.png" for i in range(7)] * 2
    with pytest.raises(ValueError, match=r"names \['0.png', '1.png', '2.png', '3.png', '4.png'\]"):
        check_unique_names(names)
    check_unique_names(["a.png", "b.png"])


def test_find_images_walks_a_folder_once_for_images_and_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.JPG", "notes.txt", "sub/x.npy", ".hidden", "sub/.DS_Store"):
        (tmp_path / name).write_bytes(b"")
    listing = find_images(tmp_path)
    assert listing.images == list_images(tmp_path) == [str(tmp_path / "b.png"),
                                                        str(tmp_path / "sub/a.JPG")]
    assert listing.others == [str(tmp_path / "notes.txt"), str(tmp_path / "sub/x.npy")]
    both = find_images([tmp_path / "sub", tmp_path / "b.png"])  # a sequence: concatenated
    assert both.images == [str(tmp_path / "sub/a.JPG"), str(tmp_path / "b.png")]
    assert both.others == [str(tmp_path / "sub/x.npy")]
    (tmp_path / "list.txt").write_text("b.png\nmissing.png\n")  # a list file is not walked
    assert find_images(tmp_path / "list.txt").others == []
