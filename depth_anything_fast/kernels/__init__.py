"""Triton kernels of the fused ops (CUDA; the Triton interpreter on a CPU).

Their source is the repository's top-level `kernels/` folder (no `__init__.py` there, see
`depth_anything_fast._checkout`); import them only as `depth_anything_fast.kernels.<module>`.
"""

from depth_anything_fast._checkout import checkout_folder

_folder = checkout_folder(__file__, "kernels")
if _folder is not None:
    __path__.append(str(_folder))
