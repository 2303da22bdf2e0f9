"""Append-only JSONL records of finished outputs and of failed inputs.

A manifest line is written only after its output file has been renamed into place, so a line
always describes a complete file. A process killed while appending leaves at most one truncated
last line: readers ignore it and writers cut it off before appending again. A complete line that
is not a record (corruption) is skipped with a warning naming the file and line.

`finished_records` is the one reader of a pseudo-label output directory: the resume logic of
`pseudo_label` and the training data (`data.sources.LabelledSource`) both use it.

One file per rank (`manifest.rank{r}.jsonl`, `errors.rank{r}.jsonl`) when running under several
ranks, so no two processes ever append to the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from depth_anything_fast.formats.paths import TAR_SEP

logger = logging.getLogger(__name__)

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
    `shard.tar::member` (the convention of `formats.paths.read_bytes`). `shape` is the (H, W) of
    the stored map (disparity; metric models: depth); `min`/`max` are the values that 16-bit
    PNG codes 0 and 65535 stand for (for .npy they are informational). `checksum` and `bytes`
    describe the stored file (or tar member) bytes.
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


def _complete_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, end offset, bytes) of every newline-terminated line of `path`; a last
    line without its newline (truncated by a kill while appending) is not yielded."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            offset += len(raw)
            if raw.endswith(b"\n"):
                yield number, offset, raw


_RECORD_FIELDS = frozenset(ManifestRecord.__dataclass_fields__)
_REQUIRED_FIELDS = frozenset(_RECORD_FIELDS - {"extra"})


def read_records(path: str | os.PathLike[str]) -> list[ManifestRecord]:
    """All complete records of one manifest file, in file order (a truncated last line is
    ignored; a complete line that is not a record is skipped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, _, raw in _complete_lines(path):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            logger.warning("%s:%d: skipped, not valid JSON (%s)", path, number, exc)
            continue
        if not isinstance(obj, dict) or not obj.keys() >= _REQUIRED_FIELDS:
            logger.warning(
                "%s:%d: skipped, not a manifest record (needs fields %s)",
                path, number, sorted(_REQUIRED_FIELDS),
            )
            continue
        records.append(ManifestRecord(**{k: v for k, v in obj.items() if k in _RECORD_FIELDS}))
    return records


def read_all_records(output_dir: str | os.PathLike[str]) -> dict[str, ManifestRecord]:
    """Records of every manifest in `output_dir` (all ranks, all runs), the newest per key.

    Newest = last in file order, files taken oldest modified first: a file appended to later
    (e.g. `manifest.jsonl` of a single-process rerun after a multi-rank run) wins.
    """
    paths = sorted(
        Path(output_dir).glob(MANIFEST_GLOB), key=lambda p: (p.stat().st_mtime_ns, p.name)
    )
    records: dict[str, ManifestRecord] = {}
    for path in paths:
        for record in read_records(path):
            records.pop(record.key, None)  # re-insert: dict order is then oldest to newest
            records[record.key] = record
    return records


def valid_outputs(
    output_dir: Path, records: Iterable[ManifestRecord], *, verify_checksum: bool = False
) -> set[str]:
    """Keys of the `records` whose output exists with the recorded size (and checksum if asked).

    Each tar shard is opened once.
    """
    valid: set[str] = set()
    by_shard: dict[str, list[ManifestRecord]] = {}
    for record in records:
        if record.member is not None:
            by_shard.setdefault(record.file, []).append(record)
        elif _file_is_valid(output_dir / record.output, record, verify_checksum):
            valid.add(record.key)
    for shard, shard_records in by_shard.items():
        valid |= _valid_in_shard(output_dir / shard, shard_records, verify_checksum)
    return valid


def _file_is_valid(path: Path, record: ManifestRecord, verify_checksum: bool) -> bool:
    try:
        if verify_checksum:
            return checksum(path.read_bytes()) == record.checksum
        return path.stat().st_size == record.bytes
    except OSError:
        return False


def _valid_in_shard(shard: Path, records: list[ManifestRecord], verify_checksum: bool) -> set[str]:
    """Keys of the `records` (members of the tar `shard`) stored with their size and checksum;
    none when the shard cannot be read."""
    valid: set[str] = set()
    try:
        with tarfile.open(shard, "r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for record in records:
                info = members.get(record.member or "")
                if info is None or info.size != record.bytes:
                    continue
                if verify_checksum:
                    f = tar.extractfile(info)
                    if f is None or checksum(f.read()) != record.checksum:
                        continue
                valid.add(record.key)
    except (OSError, tarfile.TarError):
        return set()
    return valid


def finished_records(
    output_dir: str | os.PathLike[str], *, verify_checksum: bool = False
) -> dict[str, ManifestRecord]:
    """key -> newest record of every output of `output_dir` still intact on disk.

    Records whose output is missing or has another size (another checksum with
    `verify_checksum`) are dropped with a warning giving their count and the first one.
    """
    records = read_all_records(output_dir)
    valid = valid_outputs(Path(output_dir), records.values(), verify_checksum=verify_checksum)
    if len(valid) < len(records):
        first = next(k for k in records if k not in valid)
        logger.warning(
            "%s: %d of %d manifest records name an output that is missing or changed on disk "
            "(first: %s); ignored", output_dir, len(records) - len(valid), len(records), first,
        )
    return {key: record for key, record in records.items() if key in valid}


class JsonlAppender:
    """Thread-safe appender of one JSON object per line.

    Opening cuts a truncated last line left by a killed process so new lines start on a line
    boundary. `truncate=True` starts the file afresh (used for the per-run errors file).
    Each line goes to the OS at once (unbuffered): a SIGKILL of this process then loses nothing
    already appended, and a line a full disk refused is not retried at close (no fsync:
    surviving power loss is not a goal, and fsync per image would be slow).
    """

    def __init__(self, path: str | os.PathLike[str], *, truncate: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate or not self.path.exists():
            self.path.write_bytes(b"")
        else:
            good_end = max((end for _, end, _ in _complete_lines(self.path)), default=0)
            if good_end != self.path.stat().st_size:
                os.truncate(self.path, good_end)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def append(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with self._lock:
            data = memoryview(line.encode())
            while data:
                data = data[self._file.write(data) or 0:]

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
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
    """Appender of `{"input", "reason", "stage"}` lines for skipped inputs (`input` made
    absolute, as in the manifest). `count` counts failures; `count=False` lines (files that are
    not images) are only recorded."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, truncate=True)
        self.count = 0

    def add(self, input_path: str, reason: str, stage: str, *, count: bool = True) -> None:
        if TAR_SEP not in input_path:
            input_path = os.path.abspath(input_path)
        with self._lock:
            self.count += int(count)  # counted even when a full disk refuses the line
        self.append({"input": input_path, "reason": reason, "stage": stage})
