"""The resize definitions side by side (for camera frames): speed, what it does to
accuracy, and what it does to end-to-end latency on openvino-int8.

    python benchmarks/resize_definitions.py [--work /tmp/resize-definitions] [--iterations 200]

1. Time per 480x640 frame to 224x224 (EfficientNet-Lite0's input), medians over interleaved calls: Pillow bicubic and
   bilinear (`resize: pillow`), OpenCV `opencv-exact`, and `opencv-exact`'s numpy twin.
2. ImageNet top-1 agreement with Pillow bicubic (Lite0's own preprocessing) on 240 photo frames: 480x640 views panning
   and zooming across skimage's colour photos. Pillow bilinear against bicubic is given as the yardstick.
3. Digits seen by a camera: each of the 1,797 digits drawn large (Pillow bilinear) at a random place and size on a
   480x640 white page with sensor noise, saved as JPEG; a linear probe trained with each definition at 224 px on our
   seeded split, and its test accuracy.
4. Each of those runs exported to openvino-int8; `bench` in model and end-to-end mode on 480x640 frames in one
   process, with the end-to-end stages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFINITIONS = {  # name -> train overrides
    "pillow bicubic": {"resize": "pillow", "interpolation": "bicubic"},
    "pillow bilinear": {"resize": "pillow", "interpolation": "bilinear"},
    "opencv-exact": {"resize": "opencv-exact", "interpolation": "bilinear"},
}


def photo_frames(count: int) -> list[np.ndarray]:
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(), data.retina()]
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)])
        zoom = max(rng.uniform(1.2, 3.0), 481 / photo.height, 641 / photo.width)
        big = np.asarray(photo.resize((int(photo.width * zoom), int(photo.height * zoom)), Image.BICUBIC))
        y, x = int(rng.integers(0, big.shape[0] - 480 + 1)), int(rng.integers(0, big.shape[1] - 640 + 1))
        frames.append(np.ascontiguousarray(big[y : y + 480, x : x + 640]))
    return frames


def digit_pages(folder: Path) -> Path:
    """The digits as a camera sees them, one JPEG per digit in class folders (made once)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if (folder / "9").is_dir():
        return folder
    d = load_digits()
    rng = np.random.default_rng(0)
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        ink = Image.fromarray(255 - np.rint(img * (255 / 16)).astype(np.uint8))
        side = int(rng.integers(220, 440))
        page = np.full((480, 640), 255, np.uint8)
        y, x = int(rng.integers(0, 480 - side + 1)), int(rng.integers(80, 560 - side + 1)) if side <= 480 else 80
        page[y : y + side, x : x + side] = np.asarray(ink.resize((side, side), Image.BILINEAR))
        noisy = np.clip(page.astype(np.float32) + rng.normal(0, 6, page.shape), 0, 255).astype(np.uint8)
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).convert("RGB").save(folder / str(label) / f"{i:04d}.jpg", quality=90)
    return folder


def resize_timings(frames: list[np.ndarray], rounds: int) -> dict[str, float]:
    from runtimes.preprocess import PreprocessConfig, crop_box, resize_and_crop
    from runtimes.resample import numpy_opencv_exact

    configs = {name: PreprocessConfig(input_size=(224, 224), **kw) for name, kw in DEFINITIONS.items()}
    twin_cfg = configs["opencv-exact"]
    calls = {name: (lambda f, c=cfg: resize_and_crop(f, c)) for name, cfg in configs.items()}
    calls["opencv-exact, numpy twin"] = lambda f: numpy_opencv_exact(f, twin_cfg.input_size, crop_box(480, 640, twin_cfg))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():  # interleaved: every definition in every round
            for f in frames:
                t0 = time.perf_counter()
                call(f)
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def imagenet_agreement(frames: list[np.ndarray]) -> dict[str, float]:
    import torch

    from edge_transfer.sources import create_backbone
    from runtimes.preprocess import PreprocessConfig, normalize, prepare_batch

    bb = create_backbone("efficientnet_lite0", pretrained=True).eval()
    own = bb.preprocessing
    tops = {}
    for name, kw in DEFINITIONS.items():
        cfg = PreprocessConfig.from_dict({**own.to_dict(), "input_size": [224, 224], **kw})
        with torch.no_grad():
            x = torch.from_numpy(normalize(prepare_batch(frames, cfg), cfg))
            tops[name] = torch.cat([bb.source_head(bb(x[i : i + 32])).argmax(1) for i in range(0, len(x), 32)]).numpy()
    ref = tops["pillow bicubic"]
    return {name: float((t == ref).mean()) for name, t in tops.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/resize-definitions")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    import edge_transfer as et
    import runtimes
    from runtimes.bench import bench_predictor
    from runtimes.preprocess import synthetic_images

    work = Path(args.work)
    frames = photo_frames(240)
    timing = resize_timings(frames[:8], args.rounds)
    agreement = imagenet_agreement(frames)
    pages = digit_pages(work / "digit-pages")
    rows = []
    for name, kw in DEFINITIONS.items():
        slug = name.replace(" ", "-")
        run_dir = work / f"run-{slug}"
        run = et.train(str(pages), out=run_dir, strategy="linear-probe", image_size=224, overwrite=True, progress=False, **kw)
        bundle = et.export(run.path, out=work / f"bundle-{slug}", format="openvino-int8", overwrite=True, allow_failed_validation=True)[0]
        with runtimes.load(bundle.path) as p:
            model = bench_predictor(p, mode="model", iterations=args.iterations)
            e2e = bench_predictor(p, mode="end-to-end", iterations=args.iterations, images=synthetic_images(4))
        rows.append((name, run.metrics["test_accuracy"], (bundle.validation or {}).get("artifact_accuracy"), model, e2e))
    print("\nresize, one 480x640 photo frame to 224x224 (median, interleaved):\n")
    print("| definition | ms per frame | ImageNet top-1 same as Pillow bicubic (240 frames) |")
    print("|---|---|---|")
    for name, ms in timing.items():
        print(f"| {name} | {ms:.2f} | {f'{100 * agreement[name]:.1f}%' if name in agreement else '(same pixels as opencv-exact)'} |")
    print("\ndigits seen by a camera (480x640 JPEG pages), linear probe at 224 px; openvino-int8 at batch 1 on 480x640 frames:\n")
    head = ["definition", "test accuracy (torch)", "openvino-int8 accuracy", "model p50", "end-to-end p50", "ratio", "preprocess"]
    print("| " + " | ".join([*head, "model in e2e", "postprocess"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, acc, art, model, e2e in rows:
        st = e2e.stages_ms or {}
        print(
            f"| {name} | {100 * acc:.2f}% | {100 * art:.2f}% | {model.latency.p50:.2f} ms | {e2e.latency.p50:.2f} ms | "
            f"{e2e.latency.p50 / model.latency.p50:.2f}x | {st.get('preprocess', 0):.2f} ms | {st.get('model', 0):.2f} ms | "
            f"{st.get('postprocess', 0):.2f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
