"""Finding images: the image file extensions and `list_images` / `find_images` over folders,
list files, globs and tar shards."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from depth_anything_fast.formats.list_files import LIST_EXTENSIONS, read_list_file
from depth_anything_fast.formats.paths import TAR_SEP, path_exists, split_component, tar_index

# In the order `first_existing_image` tries them.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")

Source = str | os.PathLike | Sequence[str | os.PathLike]


def is_image(name: str) -> bool:
    """Whether a file name has an image extension (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def tar_images(tar_path: str) -> list[str]:
    """`shard.tar::member` paths of the image members of a webdataset shard (components
    without a further dot, e.g. `0001.jpg` but not `0001.depth.png`), sorted."""
    out = []
    for m in sorted(tar_index(tar_path)):
        _, component = split_component(m)
        if "." not in component and is_image("." + component):
            out.append(f"{tar_path}{TAR_SEP}{m}")
    return out


class ImageListing(NamedTuple):
    """What `find_images` found: `images` (as `list_images` returns them) and `others`, the
    files of the folders it walked that are not images (hidden files left out), sorted."""

    images: list[str]
    others: list[str]


def list_images(src: Source) -> list[str]:
    """Image paths from a directory (recursive, sorted), a list file (first column), a glob,
    a webdataset `.tar` shard, a single image, or a sequence of any of these.

    Raises `FileNotFoundError` naming `src` when it matches nothing.
    """
    return find_images(src).images


def find_images(src: Source) -> ImageListing:
    """`list_images(src)`, and the other files of the folders it walks, in one walk."""
    if isinstance(src, (list, tuple)):
        found = [find_images(s) for s in src]
        return ImageListing([p for f in found for p in f.images],
                            [p for f in found for p in f.others])  # fmt: skip
    s = os.fspath(src)
    if os.path.isdir(s):
        images, others = [], []
        for dirpath, _, files in os.walk(s):
            images += [os.path.join(dirpath, f) for f in files if is_image(f)]
            others += [os.path.join(dirpath, f) for f in files
                       if not is_image(f) and not f.startswith(".")]  # fmt: skip
        return ImageListing(sorted(images), sorted(others))
    if os.path.isfile(s):
        low = s.lower()
        if low.endswith(".tar"):
            return ImageListing(tar_images(s), [])
        if low.endswith(LIST_EXTENSIONS):
            return ImageListing([row[0] for row in read_list_file(s)], [])
        return ImageListing([s], [])
    if TAR_SEP in s and path_exists(s):
        return ImageListing([s], [])
    if glob.has_magic(s):
        matches = sorted(glob.glob(s, recursive=True))
        if matches:
            images = [p for m in matches if os.path.isfile(m) for p in list_images(m)]
            return ImageListing(images, [])
    raise FileNotFoundError(f"no images found: {s} is not a directory, list file, tar or glob match")


def first_existing_image(directory: Path, stem: str) -> Path | None:
    """The image `directory/stem.<ext>` for the first existing image extension (lower, then
    upper case), or None."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (directory / (stem + ext), directory / (stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None
