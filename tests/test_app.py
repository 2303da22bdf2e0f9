"""The web page (`depth-anything-fast app`): what it computes, and the page itself driven in a
real browser (headless Chromium through Selenium; Debian's `chromium` and `chromium-driver`)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import varied_tiny_model
from PIL import Image

from depth_anything_fast.cli import main
from depth_anything_fast.formats.codec import decode_png16
from depth_anything_fast.inference.predictor import Predictor

INPUT_SIZE = 70
ROOT = Path(__file__).resolve().parents[1]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) with one tiny IDAT: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return varied_tiny_model().save_pretrained(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_page_computes_a_batch_and_refuses_bad_uploads(
    tiny_weights: Path, tmp_path: Path, np_rng: np.random.Generator
) -> None:
    from depth_anything_fast.app.page import DepthPage
    from depth_anything_fast.models import DepthAnything

    model = DepthAnything.from_pretrained(tiny_weights)
    page = DepthPage(Predictor(model, batch_size=2, input_size=INPUT_SIZE), "tiny",
                     max_pixels=10_000_000, workdir=tmp_path / "work")
    images = [np_rng.integers(0, 256, shape).astype(np.uint8)
              for shape in ((40, 60, 3), (40, 60, 3), (33, 47, 3))]
    paths = []
    for i, rgb in enumerate(images):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))  # 400 MP
    (tmp_path / "big.png").write_bytes(_png_header_only(5_000, 4_000))  # over the page's 10 MP
    (tmp_path / "cut.png").write_bytes(paths[0].read_bytes()[:200])
    uploads = [{"path": str(paths[0]), "orig_name": "a b.png"},
               {"path": str(tmp_path / "notes.png")}, str(paths[1]), None, {"path": str(tmp_path / "bomb.png")}, str(paths[2]),
               {"path": str(tmp_path / "cut.png")}, str(tmp_path / "big.png")]
    results = page.compute(uploads, ["Spectral_r", "magma", "gray", "magma", "magma", "nope",
                                     "magma", "magma"], [None] * 8)
    assert [r.slider is not None for r in results] == [True, False, True, False, False, True,
                                                       False, False]
    assert "not an image" in results[1].message
    assert results[3].message == "Upload an image first."
    assert "decompression bomb" in results[4].message  # PIL's own limit, from the header
    assert "truncated PNG" in results[6].message
    assert "too large: 5000 x 4000 pixels (20 MP; the page accepts up to 10 MP)" in (
        results[7].message)
    expected = Predictor(model, input_size=INPUT_SIZE).predict(images)
    for result, rgb, disparity in zip([results[0], results[2], results[5]], images, expected,
                                      strict=True):
        assert result.slider is not None and result.grey and result.raw16 and result.ply is None
        np.testing.assert_array_equal(result.slider[0], rgb)
        assert result.slider[1].shape == rgb.shape
        codes = np.asarray(Image.open(result.raw16))
        assert codes.dtype == np.uint16 and codes.shape == rgb.shape[:2]
        lo, hi = float(disparity.min()), float(disparity.max())
        step = (hi - lo) / 65535
        back = decode_png16(Path(result.raw16).read_bytes(), lo, hi)
        assert np.abs(back - disparity).max() <= 0.5 * step + 1e-4 * max(abs(lo), abs(hi))
    assert Path(results[0].raw16).name == "a_b_disparity16.png"
    grey = np.asarray(Image.open(results[2].slider and results[2].grey))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert (results[2].slider[1][..., 0] == results[2].slider[1][..., 1]).all()  # "gray"


def test_metric_page_offers_a_point_cloud(tmp_path: Path, np_rng: np.random.Generator) -> None:
    plyfile = pytest.importorskip("plyfile")
    from depth_anything_fast.app.page import DepthPage

    model = varied_tiny_model(metric=True, max_depth=20.0)
    page = DepthPage(Predictor(model, input_size=INPUT_SIZE), "metric", workdir=tmp_path)
    Image.fromarray(np_rng.integers(0, 256, (28, 42, 3)).astype(np.uint8)).save(tmp_path / "x.png")
    result = page.compute([str(tmp_path / "x.png")], ["Spectral"], [300.0])[0]
    assert result.ply is not None and "focal length 300 px" in result.message
    assert len(plyfile.PlyData.read(result.ply)["vertex"]) == 28 * 42


# --- the page in a real browser ----------------------------------------------------------------


def _browser_or_skip() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium (dev extra) is not installed")
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium or chromedriver is missing (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.mark.slow
def test_page_in_a_real_browser(tiny_weights: Path, shared_data: Path, tmp_path: Path) -> None:
    """Upload a real photograph, wait for the depth picture, download the 16-bit PNG and
    compare it with `predict --save-npy`; then a text file and a text file named .png."""
    browser, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    photo = shared_data / "images" / "demo08.jpg"  # the smallest, 640 x 425
    if not photo.is_file():
        pytest.skip(f"{photo} is missing")
    port = _free_port()
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "depth_anything_fast", "app", "--weights", str(tiny_weights),
         "--input-size", str(INPUT_SIZE), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"

        def serving() -> bool:
            assert server.poll() is None, (tmp_path / "app.log").read_text()
            try:
                return _fetch(url) is not None
            except OSError:
                return False

        _wait_for(serving, 120, "the app to serve")
        # both events that run the model are batch functions: queued uploads run together
        events = json.loads(_fetch(url + "config"))["dependencies"]
        assert [(e["batch"], e["max_batch_size"]) for e in events] == [(True, 4)] * 2
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.get(url)
        upload = _wait_for(lambda: driver.find_elements(
            By.CSS_SELECTOR, "#input-image input[type=file]"), 30, "the upload field")[0]
        upload.send_keys(str(photo))
        _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#input-image img"), 30,
                  "the uploaded image")
        driver.find_element(By.ID, "compute").click()
        def both_pictures() -> list | None:
            """The slider's images once two have loaded (they load one after the other)."""
            loaded = [img for img in driver.find_elements(By.CSS_SELECTOR, "#depth-slider img")
                      if int(img.get_attribute("naturalWidth") or 0) > 0]
            return loaded if len(loaded) >= 2 else None

        pictures = _wait_for(both_pictures, 60, "the image and the depth picture under the slider")
        assert len(pictures) == 2  # image and depth under the slider
        depth = np.asarray(Image.open(io.BytesIO(_fetch(pictures[1].get_attribute("src")))))
        assert depth.shape[:2] == (425, 640)
        assert depth.std() > 5 and len(np.unique(depth.reshape(-1, depth.shape[-1]), axis=0)) > 20
        link = _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#raw16-png a[download]"),
                         30, "the 16-bit PNG download")[0]
        raw16 = _fetch(link.get_attribute("href"))
        message = driver.find_element(By.ID, "message").text
        # the same image through `predict --save-npy`, in this process
        assert main(["predict", "--weights", str(tiny_weights), str(photo), "--outdir",
                     str(tmp_path / "out"), "--input-size", str(INPUT_SIZE), "--save-npy",
                     "--no-progress"]) == 0
        disparity = np.load(tmp_path / "out" / "demo08.npy")
        lo, hi = float(disparity.min()), float(disparity.max())
        assert f"disparity {lo:.6g} .. {hi:.6g}" in message
        back = decode_png16(raw16, lo, hi)
        assert back.shape == disparity.shape
        assert np.abs(back - disparity).max() <= 0.5 * (hi - lo) / 65535 + 1e-5 * hi
        # a text file: the page's upload refuses it (a message, no traceback)
        (tmp_path / "notes.txt").write_text("not an image\n")
        driver.find_element(By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']"
                            ).click()
        _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"),
                  10, "the cleared upload field")[0].send_keys(str(tmp_path / "notes.txt"))
        _wait_for(lambda: any("Invalid file type" in t.text for t in driver.find_elements(
            By.CSS_SELECTOR, "[data-testid='toast-body']")), 20, "the invalid-file message")
        # text named .png passes the browser's check and reaches our decoder
        (tmp_path / "notes.png").write_text("not an image\n")
        driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(
            str(tmp_path / "notes.png"))
        time.sleep(0.5)
        driver.find_element(By.ID, "compute").click()
        text = _wait_for(lambda: "cannot be used" in (t := driver.find_element(
            By.ID, "message").text) and t, 30, "the page's error message")
        assert "not an image (unrecognised content)" in text and "Traceback" not in text
        assert "Traceback" not in driver.page_source
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(30)
        log.close()
