"""The storage layer's list files and image discovery (the rest of `formats` is exercised by
the data, inference and evaluate tests that read and write through it)."""

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
