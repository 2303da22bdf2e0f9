"""Data: sources and target readers, DALI/PIL loaders, CutMix.

    layout = recipe.synthetic.generate_dataset("data", n_labelled=300, n_unlabelled=300, n_val=40, size=(120, 160))
    labelled = labelled_loader(layout.labelled, batch_size=8, crop_size=112)
    unlabelled = unlabelled_loader(layout.unlabelled, batch_size=16, crop_size=112)
    for batch in labelled:          # one epoch; {"image", "disparity", "mask", "paths"}
        ...
    views = next(iter(unlabelled))  # {"clean", "strong", "paths"}
    mixed, box, partner = cutmix(views["strong"].cuda(), p=0.5)
    # pseudo-labelled batches add "strong"; metric batches have "depth" (metres) for "disparity"
    pseudo = labelled_loader("pseudo_labels", batch_size=16, crop_size=112, strong_view=True)
    metric = labelled_loader(layout.labelled, batch_size=8, crop_size=112, target="depth")

Backends: DALI when installed (GPU decode with `device="cuda"`), else PIL; both apply the same
geometry and perturbations (see `geometry`, `augment`). Modules: `sources` (labelled pairs,
training targets), `decode` (checks, reasons), `geometry`, `augment`, `dali_pipelines`,
`pil_pipelines`, `loaders`, `cutmix`. How files are named and stored (image
lists, `LabelledSpec`, ground-truth files, manifests) is `depth_anything_fast.formats`.
"""

from depth_anything_fast.formats.images import list_images
from depth_anything_fast.formats.spec import LabelledSpec

from .cutmix import cutmix
from .decode import DecodeError
from .loaders import inference_loader, labelled_loader, unlabelled_loader
from .sources import LabelledSource, load_target

__all__ = [
    "DecodeError",
    "LabelledSource",
    "LabelledSpec",
    "cutmix",
    "inference_loader",
    "labelled_loader",
    "list_images",
    "load_target",
    "unlabelled_loader",
]
