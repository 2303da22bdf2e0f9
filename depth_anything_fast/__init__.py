"""depth_anything_fast: fast training and inference for Depth Anything.

Subpackages are imported on demand so that `import depth_anything_fast.losses` needs only torch
(and triton): `losses`, `models`, `data`, `inference`, `evaluate`, `train`.
"""

__version__ = "0.1.0"
