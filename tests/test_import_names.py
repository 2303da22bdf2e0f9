"""No folder of the checkout shadows an installed distribution (issue 19).

pytest, `python -m`, and any script run in the repository put the repository root (and pytest
the `tests/` and `benchmarks/` folders) first on `sys.path`, ahead of site-packages. A folder with
an `__init__.py` there, or a module with a common name, then hides an installed distribution of
the same name: our old `kernels/__init__.py` hid Hugging Face's `kernels`, which transformers
imports, and broke every transformers test. The rule: the root holds one package
(`depth_anything_fast`) and `setup.py`; `tests/` holds `conftest` and `test_*`; `benchmarks/`
holds `conftest`, `bench_*` and `benchmark_*`; and none of those names is a stdlib module or the
import name of an installed distribution.
"""

from __future__ import annotations

import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the module names allowed in it (regular expressions)
ALLOWED = {
    ".": r"depth_anything_fast|setup",
    "tests": r"conftest|test_\w+",
    "benchmarks": r"conftest|bench_\w+|benchmark_\w+",
}


def _importable_names(folder: Path) -> list[str]:
    """Names `import NAME` finds in `folder` when it is on sys.path (packages, modules,
    extensions); a directory without `__init__.py` only as a namespace, which never shadows."""
    return sorted(m.name for m in pkgutil.iter_modules([str(folder)]))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folders_on_sys_path_hold_only_project_names(folder: str) -> None:
    names = _importable_names(ROOT / folder)
    assert names, f"{folder}: nothing importable found; the check would be empty"
    wrong = [n for n in names if not re.fullmatch(ALLOWED[folder], n)]
    assert not wrong, f"{folder}/ makes these top-level names importable: {wrong}"
    installed = set(importlib.metadata.packages_distributions()) - {"depth_anything_fast"}
    taken = sorted((set(names) & installed) | (set(names) & set(sys.stdlib_module_names)))
    assert not taken, f"{folder}/ shadows installed or stdlib modules: {taken}"


@pytest.mark.parametrize("name", ["kernels", "configs"])
def test_installed_distribution_wins_from_the_repository_root(name: str, tmp_path: Path) -> None:
    """Checked the way it broke: an interpreter started in the repository root (sys.path[0] is
    the root) with an installed package of the same name later on sys.path."""
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("ORIGIN = 'installed'\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.ORIGIN)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "installed", (
        f"`import {name}` from the repository root did not reach the installed package:\n"
        f"{done.stdout}{done.stderr}")


def test_package_reaches_the_checkout_folders_from_the_root() -> None:
    """`depth_anything_fast.kernels` / `.configs` still read the top-level folders' files."""
    script = ("import depth_anything_fast.kernels.stats_layout as m; "
              "from depth_anything_fast.configs import CONFIG_DIR; "
              "print(m.__file__); print(CONFIG_DIR)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kernel_file, config_dir = done.stdout.split()
    assert Path(kernel_file) == ROOT / "kernels" / "stats_layout.py"
    assert Path(config_dir) == ROOT / "configs"


def test_transformers_imports_from_the_repository_root() -> None:
    """transformers (with its hub-kernels integration, which imports Hugging Face's `kernels`
    when that is installed) imports in a process started in the repository root."""
    pytest.importorskip("transformers")
    script = ("import transformers.integrations.hub_kernels, transformers; "
              "from transformers import DepthAnythingForDepthEstimation; "
              "import importlib.util; s = importlib.util.find_spec('kernels'); "
              "print(s.origin if s else None)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    origin = done.stdout.strip().splitlines()[-1]
    if origin != "None":  # Hugging Face's `kernels` is installed: that is what was found
        assert "site-packages" in Path(origin).parts, origin
