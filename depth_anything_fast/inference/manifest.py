"""Append-only JSONL records of finished outputs and of failed inputs.

A manifest line is written only after its output file has been renamed into place, so a line
always describes a complete file. A process killed while appending leaves at most one truncated
last line: readers ignore it and writers cut it off before appending again.

One file per rank (`manifest.rank{r}.jsonl`, `errors.rank{r}.jsonl`) when running under several
ranks, so no two processes ever append to the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from depth_anything_fast.data.sources import TAR_SEP

MANIFEST_GLOB = "manifest*.jsonl"


def manifest_name(rank: int, world_size: int) -> str:
    """File name of the manifest of `rank` (`manifest.jsonl` for a single process)."""
    return "manifest.jsonl" if world_size == 1 else f"manifest.rank{rank}.jsonl"


def errors_name(rank: int, world_size: int) -> str:
    """File name of the error list of `rank` (`errors.jsonl` for a single process)."""
    return "errors.jsonl" if world_size == 1 else f"errors.rank{rank}.jsonl"


def checksum(data: bytes) -> str:
    """`"sha256:<hex>"` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ManifestRecord:
    """One finished output.

    `output` is relative to the output directory; an entry of a tar shard is written
    `shard.tar::member` (the convention of `data.sources.read_bytes`). `shape` is the (H, W) of the stored disparity; `min`/`max` are the disparity values
    that 16-bit PNG codes 0 and 65535 stand for (for .npy they are informational). `checksum` and
    `bytes` describe the stored file (or tar member) bytes.
    """

    input: str
    output: str
    shape: list[int]
    min: float
    max: float
    checksum: str
    bytes: int
    format: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity of the output (same across reruns with the same input layout)."""
        return self.output

    @property
    def file(self) -> str:
        """The file holding the output (the shard for a tar entry), relative to the output dir."""
        return self.output.split(TAR_SEP, 1)[0]

    @property
    def member(self) -> str | None:
        """Entry name inside the tar shard, None for a plain file."""
        return self.output.split(TAR_SEP, 1)[1] if TAR_SEP in self.output else None


def _valid_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(end offset, parsed object) of every complete JSON line of `path`."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                return  # truncated by a kill while appending
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                return
            if isinstance(obj, dict):
                yield offset, obj


def read_records(path: str | os.PathLike[str]) -> list[ManifestRecord]:
    """All complete records of one manifest file (a truncated last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    names = {f for f in ManifestRecord.__dataclass_fields__}
    return [
        ManifestRecord(**{k: v for k, v in obj.items() if k in names})
        for _, obj in _valid_lines(path)
    ]


def read_all_records(output_dir: str | os.PathLike[str]) -> dict[str, ManifestRecord]:
    """Records of every manifest in `output_dir` (all ranks, all runs), last one per key wins."""
    records: dict[str, ManifestRecord] = {}
    for path in sorted(Path(output_dir).glob(MANIFEST_GLOB)):
        for record in read_records(path):
            records[record.key] = record
    return records


class JsonlAppender:
    """Thread-safe appender of one JSON object per line.

    Opening cuts a truncated last line left by a killed process so new lines start on a line
    boundary. `truncate=True` starts the file afresh (used for the per-run errors file).
    Each line is flushed to the OS at once: a SIGKILL of this process then loses nothing already
    appended (no fsync: surviving power loss is not a goal, and fsync per image would be slow).
    """

    def __init__(self, path: str | os.PathLike[str], *, truncate: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate or not self.path.exists():
            self.path.write_bytes(b"")
        else:
            good_end = max((end for end, _ in _valid_lines(self.path)), default=0)
            if good_end != self.path.stat().st_size:
                os.truncate(self.path, good_end)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def append(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Manifest(JsonlAppender):
    """Appender of `ManifestRecord`s."""

    def add(self, record: ManifestRecord) -> None:
        obj = asdict(record)
        if not record.extra:
            obj.pop("extra")
        self.append(obj)


class ErrorLog(JsonlAppender):
    """Appender of `{"input", "reason", "stage"}` lines for skipped inputs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, truncate=True)
        self.count = 0

    def add(self, input_path: str, reason: str, stage: str) -> None:
        self.append({"input": input_path, "reason": reason, "stage": stage})
        with self._lock:
            self.count += 1
