"""Build script: the pure-Python package plus the optional C++ CPU kernels.

The C++ extension (`depth_anything_fast._C`, pybind11 + OpenMP) is built when a C++ compiler is
available; otherwise the build goes on without it and the `cpu` backend reports itself missing.
It talks to torch only through the buffer protocol (numpy arrays), so building it needs no torch.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig
import warnings

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# Top-level folders whose files the wheel carries inside a subpackage: (folder, pattern). They
# have no __init__.py (see depth_anything_fast/_checkout.py), so package-dir cannot map them.
FOLDERS_INTO_PACKAGE = {"kernels": "*.py", "configs": "*.yaml"}


def _cpp_extensions() -> list:
    if os.environ.get("DAF_NO_CPP") == "1":
        warnings.warn("DAF_NO_CPP=1: skipping the C++ CPU kernels", stacklevel=1)
        return []
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    if shutil.which(compiler.split()[0]) is None and shutil.which("c++") is None:
        warnings.warn("no C++ compiler found: skipping the C++ CPU kernels", stacklevel=1)
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        warnings.warn("pybind11 not installed: skipping the C++ CPU kernels", stacklevel=1)
        return []
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    return [
        Pybind11Extension(
            "depth_anything_fast._C",
            sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
            # headers: rebuilt when they change, and shipped in an sdist
            depends=sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")),
            cxx_std=17,
            # -fno-trapping-math: selects in the loops vectorise (IEEE results are unchanged)
            extra_compile_args=["-O3", "-fno-trapping-math", *openmp],
            extra_link_args=openmp,
        )
    ]


class OptionalBuildExt(build_ext):
    """Builds the C++ kernels, or warns and carries on when the toolchain fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "no C++ kernels"
            warnings.warn(f"C++ CPU kernels not built ({exc}); the 'cpu' backend is unavailable",
                          stacklevel=1)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"C++ CPU kernels not built ({exc}); the 'cpu' backend is unavailable",
                          stacklevel=1)


class BuildPyWithFolders(build_py):
    """Copies `kernels/*.py` and `configs/*.yaml` into the built depth_anything_fast.kernels and
    .configs (whose `__init__.py` files live in the package)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the editable package reads the folders where they are
            return
        for folder, pattern in FOLDERS_INTO_PACKAGE.items():
            target = os.path.join(self.build_lib, "depth_anything_fast", folder)
            for name in sorted(glob.glob(os.path.join(folder, pattern))):
                self.copy_file(name, os.path.join(target, os.path.basename(name)))


setup(
    packages=find_packages(include=["depth_anything_fast", "depth_anything_fast.*"]),
    ext_modules=_cpp_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithFolders},
)
