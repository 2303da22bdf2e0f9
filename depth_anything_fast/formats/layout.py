"""Folder and file naming conventions of image / ground-truth datasets.

Training folders (`data.sources.LabelledSource`): `root/images/<rel>.<image ext>` with its
ground truth at `root/<target dir>/<rel>.<target ext>`, or webdataset shards whose members
`<key>.<image ext>` pair with `<key>.<target prefix><ext>`.

RGB-D benchmark folders (`evaluate.datasets.GenericReader`): `<image dir>/X.*` + `<depth
dir>/X.*` matched by stem, or `X<image suffix>.*` + `X_depth.*` side by side.
"""

from __future__ import annotations

LABELLED_IMAGE_DIR = "images"
# Folder names tried, in order, for the ground truth of root/images/<rel>.
TARGET_DIRS = ("depth", "disparity", "targets", "labels")
TARGET_EXTENSIONS = (".png", ".npy", ".pfm", ".tif", ".tiff", ".pgm")
# webdataset component names (after the key) holding ground truth, e.g. "0001.depth.png".
TARGET_COMPONENT_PREFIXES = ("depth.", "disparity.", "target.", "label.")

RGBD_IMAGE_DIRS = ("color", "rgb", "image", "images")
RGBD_DEPTH_DIRS = ("depth", "depths")
RGBD_IMAGE_SUFFIXES = ("_color", "_rgb", "_image")
RGBD_DEPTH_SUFFIX = "_depth"
