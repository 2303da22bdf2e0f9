"""Data: sources and target readers, DALI/PIL loaders, CutMix, synthetic RGB-D generator."""

from .cutmix import cutmix
from .decode import DecodeError
from .loaders import inference_loader, labelled_loader, unlabelled_loader
from .sources import LabelledSource, LabelledSpec, list_images, load_target
from .synthetic import DatasetLayout, generate_dataset

__all__ = [
    "DatasetLayout",
    "DecodeError",
    "LabelledSource",
    "LabelledSpec",
    "cutmix",
    "generate_dataset",
    "inference_loader",
    "labelled_loader",
    "list_images",
    "load_target",
    "unlabelled_loader",
]
