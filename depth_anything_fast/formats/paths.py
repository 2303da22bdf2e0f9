"""Paths of stored files: plain files and members of tar shards.

A member of a (webdataset) tar shard is written `shard.tar::member` everywhere in the project:
in image lists, labelled pairs and the `output` of manifest records. `read_bytes` and
`path_exists` take either form.
"""

from __future__ import annotations

import os
import tarfile
from functools import lru_cache

TAR_SEP = "::"


@lru_cache(maxsize=64)
def tar_index(tar_path: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of the regular files in a tar, read once."""
    with tarfile.open(tar_path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def read_bytes(path: str) -> bytes:
    """Bytes of a file or of a tar member `shard.tar::member`."""
    if TAR_SEP in path:
        tar_path, member = path.split(TAR_SEP, 1)
        index = tar_index(tar_path)
        if member not in index:
            raise FileNotFoundError(f"{member} not found in tar shard {tar_path}")
        offset, size = index[member]
        with open(tar_path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    with open(path, "rb") as f:
        return f.read()


def path_exists(path: str) -> bool:
    """Whether a file or a tar member `shard.tar::member` exists."""
    if TAR_SEP in path:
        tar_path, member = path.split(TAR_SEP, 1)
        return member in tar_index(tar_path)
    return os.path.isfile(path)


def split_component(member: str) -> tuple[str, str]:
    """webdataset key and component: 'a/b/0001.depth.png' -> ('a/b/0001', 'depth.png')."""
    directory, base = os.path.split(member)
    key, _, component = base.partition(".")
    return os.path.join(directory, key), component.lower()
