"""The wheel holds the whole package, and a plain install works without DALI.

The wheel is built from a copy of the source tree (the checkout stays untouched) without the
C++ extension (DAF_NO_CPP=1, to stay quick), installed with `pip install --target` into a
temporary directory, and used from fresh interpreters whose sys.path has that directory and not
the checkout. Every package directory of the checkout must come back as an importable subpackage
of the installed copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a build reads; anything else in the checkout (.venv, build outputs) is left behind
SOURCES = ("pyproject.toml", "setup.py", "README.md", "depth_anything_fast", "kernels",
           "configs", "csrc")
IGNORED = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info")
# sys.modules entries that make `import nvidia.dali` fail, as on a machine without DALI
NO_DALI = "import sys; sys.modules['nvidia.dali'] = None; "


def checkout_packages() -> list[str]:
    """Every directory of the checkout that holds Python modules, as an installed module name."""
    names = []
    for directory in sorted((ROOT / "depth_anything_fast").rglob("*")):
        if directory.is_dir() and directory.name != "__pycache__" and any(directory.glob("*.py")):
            names.append(".".join(directory.relative_to(ROOT).parts))
    # the Triton kernels: files of the top-level kernels/ folder, carried in the wheel's subpackage
    kernels = [f"depth_anything_fast.kernels.{p.stem}"
               for p in sorted((ROOT / "kernels").glob("*.py"))]
    return ["depth_anything_fast", *names, *kernels]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built and installed into a temporary --target directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=IGNORED)
        else:
            shutil.copy2(ROOT / name, source / name)
    env = {**os.environ, "DAF_NO_CPP": "1", "PIP_NO_INPUT": "1"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(source)], check=True, env=env, cwd=tmp, timeout=300)
    wheels = list((tmp / "dist").glob("depth_anything_fast-*.whl"))
    assert len(wheels) == 1, wheels
    target = tmp / "target"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheels[0])],
                   check=True, env=env, cwd=tmp, timeout=300)
    return target


def run_installed(target: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter (or the installed console script) that finds the package only in
    `target`: PYTHONPATH puts it ahead of site-packages (where an editable install of the
    checkout may live), and the working directory is not the checkout."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(args, env=env, cwd=target.parent, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def test_wheel_imports_every_subpackage_without_dali(installed: Path) -> None:
    packages = checkout_packages()
    script = NO_DALI + (
        "import importlib, json; from pathlib import Path; "
        f"mods = [importlib.import_module(n) for n in {packages!r}]; "
        "from depth_anything_fast.data.loaders import resolve_pipeline; "
        "from depth_anything_fast.configs import CONFIG_DIR; "
        "print(json.dumps({'files': [m.__file__ for m in mods], "
        "'backend': resolve_pipeline('auto'), 'config_dir': str(CONFIG_DIR), "
        "'configs': sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))}))"
    )
    report = json.loads(run_installed(installed, [sys.executable, "-c", script]).stdout)
    for name, file in zip(packages, report["files"], strict=True):
        assert file is not None and Path(file).is_relative_to(installed), (name, file)
    assert report["backend"] == "pil"  # no DALI: the PIL loaders
    assert Path(report["config_dir"]).is_relative_to(installed)
    assert {"demo_teacher.yaml", "demo_student.yaml", "teacher.yaml"} <= set(report["configs"])


def test_installed_entry_points_help(installed: Path) -> None:
    train = run_installed(installed, [sys.executable, "-m", "depth_anything_fast.train", "--help"])
    assert "--config" in train.stdout
    script = installed / "bin" / "depth-anything-fast"
    assert script.is_file()
    cli = run_installed(installed, [str(script), "--help"])
    for command in ("predict", "pseudo-label", "evaluate", "convert", "export", "app"):
        assert command in cli.stdout
    predict = run_installed(installed, [str(script), "predict", "--help"]).stdout
    for flag in ("--pointcloud", "--focal-length", "--fov", "--no-temporal-align",
                 "--save-png16"):
        assert flag in predict
    assert "--port" in run_installed(installed, [str(script), "app", "--help"]).stdout


def test_installed_video_pointcloud_and_page(installed: Path, tmp_path: Path) -> None:
    """The three user tools from the wheel: a depth video, a point cloud, the page's outputs
    (the video and pointcloud extras; skipped where they are not installed; the page's Gradio
    side is driven in tests/test_app.py)."""
    for extra in ("av", "plyfile"):
        pytest.importorskip(extra, reason=f"{extra} (an extra) is not installed")
    script = (
        "import sys, numpy as np, av, plyfile\n"
        "from pathlib import Path\n"
        "from depth_anything_fast.models import DepthAnything, DepthAnythingConfig\n"
        "from depth_anything_fast.inference.pictures import predict_files\n"
        "from depth_anything_fast.app.page import DepthPage\n"
        "from depth_anything_fast.inference.predictor import Predictor\n"
        "out = Path(sys.argv[1])\n"
        "config = DepthAnythingConfig.preset('custom', embed_dim=32, depth=4, num_heads=2, "
        "metric=True, max_depth=10.0)\n"
        "model = DepthAnything(config=config)\n"
        "with av.open(str(out / 'clip.mkv'), 'w') as c:\n"
        "    s = c.add_stream('ffv1', rate=10); s.width, s.height = 32, 24\n"
        "    for i in range(3):\n"
        "        f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 40 * i, np.uint8), "
        "format='rgb24')\n"
        "        [c.mux(p) for p in s.encode(f)]\n"
        "    [c.mux(p) for p in s.encode()]\n"
        "from PIL import Image\n"
        "Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(out / 'x.png')\n"
        "written, failed = predict_files(model, [str(out / 'clip.mkv'), str(out / 'x.png')], "
        "out / 'o', input_size=28, pointcloud=True)\n"
        "assert not failed and (out / 'o' / 'clip.mp4').is_file(), failed\n"
        "assert len(plyfile.PlyData.read(str(out / 'o' / 'x.ply'))['vertex']) == 24 * 32\n"
        "page = DepthPage(Predictor(model, input_size=28), 'm', workdir=out / 'w')\n"
        "assert page.compute([str(out / 'x.png')], ['magma'], [None])[0].ply\n"
        "print('ok')\n"
    )
    done = run_installed(installed, [sys.executable, "-c", script, str(tmp_path)])
    assert done.stdout.strip().endswith("ok")


def test_dali_backend_without_dali_names_the_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from PIL import Image

    from depth_anything_fast.cli import main
    from depth_anything_fast.data.loaders import resolve_pipeline
    from depth_anything_fast.models import DepthAnything, DepthAnythingConfig

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali fails
    assert resolve_pipeline("auto") == "pil"
    with pytest.raises(ImportError, match=r"depth_anything_fast\[dali\].*\[dali-cuda12\]"):
        resolve_pipeline("dali")
    config = DepthAnythingConfig.preset("custom", embed_dim=32, depth=4, num_heads=2)
    DepthAnything(config=config).save_pretrained(tmp_path / "model")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["pseudo-label", "--weights", str(tmp_path / "model"), "--input",
                 str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), "--backend", "dali",
                 "--no-progress"])
    assert code == 2
    assert "depth_anything_fast[dali]" in capsys.readouterr().err
