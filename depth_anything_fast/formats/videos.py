"""Finding videos: the video file extensions and `list_videos` over folders, files and globs
(the counterpart of `formats.images.list_images`; `predict` takes both from one INPUT)."""

from __future__ import annotations

import glob
import os

# Containers PyAV (FFmpeg) reads; the codec inside is whatever FFmpeg decodes.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts",
                    ".mts", ".wmv", ".flv", ".3gp", ".ogv")


def is_video(name: str) -> bool:
    """Whether a file name has a video extension (any case)."""
    return name.lower().endswith(VIDEO_EXTENSIONS)


def list_videos(src: str | os.PathLike[str]) -> list[str]:
    """Video paths under `src`: a directory (recursive, sorted), a video file, or a glob;
    empty when there is none (images may be all there is)."""
    s = os.fspath(src)
    if os.path.isdir(s):
        found = []
        for dirpath, _, files in os.walk(s):
            found.extend(os.path.join(dirpath, f) for f in files if is_video(f))
        return sorted(found)
    if os.path.isfile(s):
        return [s] if is_video(s) else []
    if glob.has_magic(s):
        return [p for m in sorted(glob.glob(s, recursive=True)) for p in list_videos(m)]
    return []
