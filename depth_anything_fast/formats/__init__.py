"""Storage formats: how images, ground truth and predicted maps are named and stored on disk.

The layer below `data`, `inference` and `evaluate` (it imports only numpy, and PIL where a
codec needs it), so each convention has one home:

- `paths`: plain files and tar members (`shard.tar::member`, `TAR_SEP`), `read_bytes`.
- `images`: image extensions and `list_images` (folders, list files, globs, tar shards).
- `list_files`: `read_list_file` (`image [target ...]` per line).
- `layout`: folder naming conventions of training and RGB-D benchmark folders.
- `spec`: `LabelledSpec` (how ground truth is stored), `spec.json`, `PSEUDO_LABEL_SPEC`.
- `targets`: ground-truth files (16-bit PNG/PGM, TIFF, .npy, .pfm) -> raw values -> metric
  depth or disparity and validity, per `LabelledSpec`.
- `codec`: 16-bit PNG / .npy encoding of predicted maps and the spec that reads them back.
- `manifest`: the JSONL manifest of a pseudo-label output directory (records, readers,
  appenders).
"""
