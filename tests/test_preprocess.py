"""The one preprocessing definition (runtimes.preprocess) and its in-graph twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes.errors import InputError
from runtimes.preprocess import PreprocessConfig, crop_box, normalize, prepare_image, resize_and_crop, to_rgb_uint8

CFG = PreprocessConfig(input_size=(32, 32), interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    "image",
    [
        np.full((10, 12), 7, np.uint8),
        np.full((10, 12, 1), 7, np.uint8),
        np.full((10, 12, 4), 7, np.uint8),
        np.full((10, 12, 3), 7 * 257, np.uint16),
        np.full((10, 12, 3), 7 / 255, np.float32),
    ],
    ids=["grey", "grey1", "rgba", "uint16", "float01"],
)
def test_pixel_formats_become_rgb_uint8(image):
    out = to_rgb_uint8(image)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert np.all(out == 7)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4, 2), np.uint8), "channels"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 3.0, np.float32), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (np.zeros((2, 4, 4, 3, 1), np.uint8), "shape"),
    ],
)
def test_bad_images_raise_input_error_naming_the_problem(image, message):
    with pytest.raises(InputError, match=message):
        to_rgb_uint8(image, what="frame.png")


def test_resize_matches_pillow_bilinear_within_rounding():
    from PIL import Image
    from skimage import data

    photo = data.chelsea()  # 300 x 451 RGB
    cfg = PreprocessConfig(input_size=(100, 150), interpolation="bilinear")
    ours = resize_and_crop(photo, cfg).astype(int)
    pil = np.asarray(Image.fromarray(photo).resize((150, 100), Image.BILINEAR)).astype(int)
    assert ours.shape == pil.shape
    assert np.abs(ours - pil).mean() < 1.0 and np.abs(ours - pil).max() <= 8


def test_centre_crop_keeps_the_centre_and_the_target_size():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # a white square in the middle of a wide image
    out = prepare_image(img, PreprocessConfig(input_size=(10, 10), crop_pct=1.0))
    assert out.shape == (10, 10, 3)
    assert out[:, 1:-1].min() == 255  # the centre crop is the white square (edges blend, as resize-then-crop does)


def test_same_size_is_untouched_and_upscaling_works():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(prepare_image(img, CFG), img)
    img.flags.writeable = False  # as np.asarray(PIL image) gives: the prepared copy is writable (torch warns otherwise)
    assert prepare_image(img, CFG).flags.writeable
    assert prepare_image(np.zeros((1, 1), np.uint8), CFG).shape == (32, 32, 3)


def test_numpy_normalize_matches_the_in_graph_module():
    import torch

    from edge_transfer.model import InGraphNormalize

    batch = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    ref = normalize(batch, CFG)
    graph = InGraphNormalize(CFG)(torch.from_numpy(batch)).numpy()
    assert ref.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(graph, ref, atol=1e-6)


def test_config_round_trips_and_rejects_bad_fields():
    d = CFG.to_dict()
    assert PreprocessConfig.from_dict(d) == CFG
    with pytest.raises(InputError, match="interpolation"):
        PreprocessConfig.from_dict({**d, "interpolation": "lanczos9"})
    with pytest.raises(InputError, match="unknown field"):
        PreprocessConfig.from_dict({**d, "gamma": 2.2})


def _random_case(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, PreprocessConfig]:
    if rng.random() < 0.5:
        img = rng.integers(0, 256, (int(rng.integers(1, 700)), int(rng.integers(1, 900)), 3), dtype=np.uint8)
    else:
        img = np.ascontiguousarray(photo[: int(rng.integers(1, 512)), : int(rng.integers(1, 512))])
    size = (int(rng.integers(1, 260)), int(rng.integers(1, 260)))
    crop = float(rng.choice([1.0, 0.875, rng.uniform(0.05, 1.0)]))
    return img, PreprocessConfig(input_size=size, interpolation=str(rng.choice(["bilinear", "bicubic"])), crop_pct=crop)


def test_pillow_and_the_numpy_twin_give_identical_pixels():
    """The definition (runtimes.resample) runs through Pillow's C code where Pillow is installed and through numpy
    where it is not: a device without Pillow must see exactly the pixels training saw. 120 random sizes, crops and
    filters, shrinking and enlarging, plus a camera frame."""
    from skimage import data

    from runtimes.preprocess import synthetic_images

    rng = np.random.default_rng(7)
    photo = data.astronaut()
    cases = [_random_case(rng, photo) for _ in range(120)]
    cases.append((synthetic_images(1)[0], PreprocessConfig(input_size=(224, 224), interpolation="bicubic", crop_pct=0.875)))
    for img, cfg in cases:
        a, b = resize_and_crop(img, cfg, engine="pillow"), resize_and_crop(img, cfg, engine="numpy")
        assert a.shape == b.shape == (*cfg.input_size, 3) and a.flags.writeable, (img.shape, cfg)
        assert np.array_equal(a, b), (img.shape, cfg, int(np.abs(a.astype(int) - b).max()))


def test_training_and_the_device_prepare_a_file_identically(tmp_path):
    """Training's dataset (edge_transfer.data) and the device's predictor path decode and resize a photo to the
    same bytes: 100% of pixels equal, for JPEG and PNG, with and without Pillow's resizer."""
    from PIL import Image
    from skimage import data as skdata

    from edge_transfer.data import load_image_folder
    from runtimes.preprocess import read_image

    for name, photo in (("cat", skdata.chelsea()), ("coffee", skdata.coffee())):
        (tmp_path / name).mkdir()
        Image.fromarray(photo).save(tmp_path / name / "a.jpg", quality=90)
        Image.fromarray(photo).save(tmp_path / name / "b.png")
    ds = load_image_folder(tmp_path)
    cfg = PreprocessConfig(input_size=(224, 224), interpolation="bicubic", crop_pct=0.875)
    for i in range(len(ds)):
        path = ds.describe_item(i)
        device = prepare_image(read_image(path), cfg)
        assert np.array_equal(ds.prepared(i, cfg), device), path
        assert np.array_equal(resize_and_crop(read_image(path), cfg, engine="numpy"), device), path


def test_large_jpegs_decode_reduced_alike_in_training_and_on_the_device(digits_bundle, tmp_path):
    """`jpeg_draft` (part of the preprocessing definition): a JPEG several times the input's size decodes at 1/2-1/8
    per side (libjpeg's DCT scaling), EXIF-turned photos included. Training's dataset, the device's predictor (a real
    bundle whose manifest says jpeg_draft) and `val` read the same bytes; PNGs and small JPEGs decode as before; a
    bundle without the field decodes every JPEG in full, as bundles always did."""
    import json
    import shutil

    from PIL import Image
    from skimage import data as skdata

    import runtimes
    from edge_transfer.data import load_image_folder
    from runtimes.preprocess import draft_scale, read_image

    big = np.asarray(Image.fromarray(skdata.chelsea()).resize((2400, 1800), Image.BICUBIC))
    photos = tmp_path / "photos"
    (photos / "cat").mkdir(parents=True)
    (photos / "dog").mkdir()
    Image.fromarray(big).save(photos / "cat" / "big.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.fromarray(big).save(photos / "cat" / "turned.jpg", quality=90, exif=exif.tobytes())
    Image.fromarray(big).save(photos / "dog" / "big.png")
    Image.fromarray(skdata.coffee()).save(photos / "dog" / "small.jpg", quality=90)
    size = runtimes.read_manifest(digits_bundle).preprocessing.input_size
    cfg = PreprocessConfig(input_size=size, jpeg_draft=True)
    assert draft_scale(2400, 1800, 1, cfg) == 8 and draft_scale(2400, 1800, 1, PreprocessConfig(input_size=(224, 224), jpeg_draft=True)) == 4
    assert draft_scale(2400, 1800, 1, PreprocessConfig(input_size=size)) == 1  # not asked for: a full decode
    assert read_image(str(photos / "cat" / "big.jpg"), cfg).shape == (225, 300, 3)
    assert read_image(str(photos / "cat" / "turned.jpg"), cfg).shape == (300, 225, 3)  # reduced, then turned
    assert read_image(str(photos / "dog" / "big.png"), cfg).shape == (1800, 2400, 3)
    assert read_image(str(photos / "cat" / "big.jpg")).shape == (1800, 2400, 3)
    assert runtimes.read_manifest(digits_bundle).preprocessing.jpeg_draft  # new runs decode this way by default
    bundle, old = tmp_path / "bundle", tmp_path / "old"
    shutil.copytree(digits_bundle, bundle)
    shutil.copytree(digits_bundle, old)
    doc = json.loads((old / "manifest.json").read_text())  # the manifest is not among its own checksummed files
    del doc["preprocessing"]["jpeg_draft"]  # as a bundle from before the field
    (old / "manifest.json").write_text(json.dumps(doc))
    ds = load_image_folder(photos)
    paths = [ds.describe_item(i) for i in range(len(ds))]
    with runtimes.load(bundle) as p, runtimes.load(old) as full:
        device = p.prepare(paths)
        assert np.array_equal(ds.prepared_batch(np.arange(len(ds)), cfg), device)
        assert not np.array_equal(device[0], full.prepare(paths[:1])[0])  # the definition changed what a big JPEG gives
        assert np.array_equal(full.prepare(paths), ds.prepared_batch(np.arange(len(ds)), PreprocessConfig(input_size=size)))
    assert PreprocessConfig(input_size=size).to_dict().get("jpeg_draft") is None  # old manifests and caches unchanged


def _camera_frames() -> list[np.ndarray]:
    """Real photos at camera sizes (skimage's, resized by Pillow: no OpenCV in the making)."""
    from PIL import Image
    from skimage import data

    sizes = [(480, 640), (720, 1280), (1080, 1920), (600, 800), (3000, 4000), (241, 319)]
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return [np.asarray(Image.fromarray(photos[i % 4]).resize((w, h), Image.BICUBIC)) for i, (h, w) in enumerate(sizes)]


def _opencv_cases() -> list[tuple[np.ndarray, PreprocessConfig]]:
    rng = np.random.default_rng(11)
    cases = [(f, PreprocessConfig(input_size=(224, 224), resize="opencv-exact")) for f in _camera_frames()]
    for f in _camera_frames()[:4]:
        size = (int(rng.integers(16, 400)), int(rng.integers(16, 400)))
        cases.append((f, PreprocessConfig(input_size=size, resize="opencv-exact", crop_pct=float(rng.choice([1.0, 0.875, 0.6])))))
    for _ in range(40):  # noise, odd sizes, enlarging and shrinking
        h, w = int(rng.integers(1, 900)), int(rng.integers(1, 900))
        size = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        cases.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), PreprocessConfig(input_size=size, resize="opencv-exact")))
    return cases


OPENCV_HASH = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
import cv2
if {no_simd}:
    cv2.setUseOptimized(False)  # no dispatched SIMD code, no IPP: OpenCV's plain paths
from test_preprocess import _opencv_cases
from runtimes.preprocess import resize_and_crop
h = hashlib.sha256()
for img, cfg in _opencv_cases():
    h.update(resize_and_crop(img, cfg).tobytes())
print(cv2.getCPUFeaturesLine(), h.hexdigest())
"""


def test_the_opencv_resize_is_bit_exact_against_its_numpy_twin_on_every_simd_path_here():
    """`resize: opencv-exact` (runtimes.resample.opencv_exact_resize) against `numpy_opencv_exact`, integer arithmetic
    and IEEE doubles only: real photos at camera sizes up to 4000x3000, crops, random noise, odd sizes, enlarging.
    Then OpenCV itself on each SIMD path this CPU can take (AVX2, AVX, SSE4, and none: OPENCV_CPU_DISABLE and
    setUseOptimized), in subprocesses: the same bytes. (AVX-512 and aarch64 cannot run here: OpenCV's own
    Resize_Bitexact test pins INTER_LINEAR_EXACT to the formula the twin implements, on every platform it builds.)"""
    import hashlib
    import os
    import subprocess
    import sys

    pytest.importorskip("cv2", reason="the [video] extra (opencv-python-headless) is not installed")
    from runtimes.resample import numpy_opencv_exact

    h = hashlib.sha256()
    for img, cfg in _opencv_cases():
        fast, twin = resize_and_crop(img, cfg), numpy_opencv_exact(img, cfg.input_size, crop_box(*img.shape[:2], cfg))
        assert fast.shape == (*cfg.input_size, 3) and np.array_equal(fast, twin), (img.shape, cfg.input_size)
        h.update(twin.tobytes())
    runs = [({}, False), ({"OPENCV_CPU_DISABLE": "AVX2,FMA3"}, False), ({"OPENCV_CPU_DISABLE": "AVX2,FMA3,AVX,FP16"}, False), ({}, True)]
    for env, no_simd in runs:
        code = OPENCV_HASH.format(tests=str(Path(__file__).parent), no_simd=no_simd)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
        assert r.returncode == 0, r.stderr
        features, digest = r.stdout.split()[:-1], r.stdout.split()[-1]
        assert digest == h.hexdigest(), (env, no_simd, features)


@pytest.mark.slow
def test_a_run_trained_with_the_opencv_resize_gives_its_bundle_the_same_pixels_and_needs_opencv(digits_run, tmp_path):
    """`train --resize opencv-exact`: the run and its bundle record the resize; training's dataset and the device's
    predictor make the same bytes from real camera-sized frames (PNG and JPEG); accuracy stays near the Pillow run's;
    `inspect` names it; and without OpenCV the bundle refuses to load, naming the extra, never resizing otherwise."""
    import subprocess
    import sys

    from PIL import Image

    import edge_transfer as et
    import runtimes
    from edge_transfer.data import load_image_folder

    from conftest import BLOCK_HOST_PACKAGES, ROOT, SMALL, run_cli

    pytest.importorskip("cv2", reason="the [video] extra (opencv-python-headless) is not installed")
    run = et.train("digits", out=tmp_path / "run", strategy="linear-probe", image_size=SMALL, resize="opencv-exact", progress=False)
    assert run.config["preprocessing"]["resize"] == "opencv-exact" and run.config["preprocessing"]["interpolation"] == "bilinear"
    pillow_acc, acc = digits_run.metrics["test_accuracy"], run.metrics["test_accuracy"]
    assert acc > pillow_acc - 0.05, (acc, pillow_acc)
    bundle = et.export(run.path, out=tmp_path / "bundle")[0].path
    frames = tmp_path / "frames"
    for i, frame in enumerate(_camera_frames()[:4]):
        (frames / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(frames / f"c{i % 2}" / f"{i}.png")
        Image.fromarray(frame).save(frames / f"c{i % 2}" / f"{i}.jpg", quality=90)
    ds = load_image_folder(frames)
    cfg = PreprocessConfig.from_dict(run.config["preprocessing"])
    with runtimes.load(bundle) as p:
        assert p.preprocessing == cfg and p.preprocessing.resize == "opencv-exact"
        assert np.array_equal(p.prepare([ds.describe_item(i) for i in range(len(ds))]), ds.prepared_batch(np.arange(len(ds)), cfg))
    assert "(opencv-exact)" in run_cli("inspect", str(bundle)).stdout
    code = "import sys\nsys.modules['cv2'] = None\n" + BLOCK_HOST_PACKAGES + "from edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    r = subprocess.run([sys.executable, "-c", code, "check", str(bundle)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: {bundle}: its preprocessing resizes with OpenCV (preprocessing.resize: opencv-exact); "
        "pip install 'edge-transfer-runtime[video]' (opencv-python-headless)"
    ]
