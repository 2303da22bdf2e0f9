"""Training configs (YAML): `CONFIG_DIR` holds `teacher.yaml`, `student.yaml`, `metric.yaml` and
the tiny `demo_*.yaml` CPU configs.

Their source is the repository's top-level `configs/` folder (no `__init__.py` there, see
`depth_anything_fast._checkout`); the wheel ships them in this package.
"""

from pathlib import Path

from depth_anything_fast._checkout import checkout_folder

CONFIG_DIR: Path = checkout_folder(__file__, "configs") or Path(__file__).resolve().parent
