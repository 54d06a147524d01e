"""Few-shot enrolment on the device against a linear probe on the host, on a folder of photo crops.

The data (built offline from scikit-image's photos): each class is random crops (30-70% of the shorter side,
random position, mirror and brightness) of one photo; 8 photos are the known classes, 4 others are never enrolled.
1. `export --backbone efficientnet_lite0 --output embedding` to onnx and openvino-int8, validated on held-out crops
   (its unknown threshold calibrated on them);
2. with `runtimes` only: per shot count (1, 5, 10), `--repeats` seeded draws of that many crops per known class are
   enrolled in a `Gallery`, the other known crops and every unknown crop identified: top-1 without a threshold,
   known-class accuracy at the calibrated threshold (an image rejected as unknown counts as wrong), and the share
   of never-enrolled crops answered unknown;
3. a linear probe (`train`) on the same known crops, its test split scored as usual.

    python benchmarks/enrolment.py                 # about 3 minutes on 2 cores
    python benchmarks/enrolment.py --out /tmp/enrol --repeats 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KNOWN = ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel")
NEVER_ENROLLED = ("brick", "gravel", "camera", "clock")


def write_photo_crops(root: Path, photos: tuple[str, ...], per_class: int, seed: int) -> Path:
    """`per_class` JPEG crops of each scikit-image photo under root/<photo>/ (seeded)."""
    import skimage.data as sd
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in photos:
        img = np.asarray(getattr(sd, name)())
        img = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        h, w = img.shape[:2]
        for i in range(per_class):
            side = int(min(h, w) * rng.uniform(0.3, 0.7))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = img[y : y + side, x : x + side].astype(np.float32) * rng.uniform(0.8, 1.2)
            crop = np.clip(crop, 0, 255).astype(np.uint8)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i:03d}.jpg", quality=92)
    return root


def shot_rows(predictor, known: Path, unknown: Path, shots: tuple[int, ...], repeats: int) -> list[dict]:
    """Gallery accuracy per shot count (runtimes only): means over `repeats` seeded draws."""
    from runtimes.gallery import Gallery
    from runtimes.preprocess import image_files

    classes = sorted(p.name for p in known.iterdir() if p.is_dir())
    files = {c: image_files(known / c) for c in classes}
    emb = {c: predictor.embed(files[c]) for c in classes}
    never = predictor.embed(image_files(unknown))
    rows = []
    for k in shots:
        top1, known_acc, rejected = [], [], []
        for r in range(repeats):
            rng = np.random.default_rng(r)
            gallery = Gallery.for_bundle(predictor)
            queries, truth = [], []
            for c in classes:
                order = rng.permutation(len(files[c]))
                gallery.enroll(c, emb[c][order[:k]])
                queries.append(emb[c][order[k:]])
                truth += [c] * (len(order) - k)
            answers = gallery.identify(np.concatenate(queries))
            top1.append(np.mean([a.nearest == t for a, t in zip(answers, truth)]))
            known_acc.append(np.mean([a.label == t for a, t in zip(answers, truth)]))
            rejected.append(np.mean([not a.known for a in gallery.identify(never)]))
        means = {"top1": top1, "known_at_threshold": known_acc, "unknown_rejected": rejected}
        rows.append({"shots": k, **{name: float(np.mean(v)) for name, v in means.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/edge-transfer-enrolment")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=30)
    args = ap.parse_args()
    import edge_transfer as et
    import runtimes

    out = Path(args.out)
    known = write_photo_crops(out / "known", KNOWN, args.per_class, seed=0)
    unknown = write_photo_crops(out / "never-enrolled", NEVER_ENROLLED, 20, seed=1)
    held_out = write_photo_crops(out / "held-out", KNOWN, 15, seed=2)
    calibration = write_photo_crops(out / "calibration", KNOWN, 12, seed=3)
    t = time.perf_counter()
    results = et.export(
        backbone="efficientnet_lite0",
        output="embedding",
        out=out / "bundles",
        format="onnx,openvino-int8",
        data=str(held_out),
        calibration_data=str(calibration),
        overwrite=True,
    )
    print(f"exported {', '.join(r.format for r in results)} in {time.perf_counter() - t:.0f} s")
    for r in results:
        v = r.validation or {}
        print(
            f"  {r.format}: cosine to torch mean {v['mean_cosine']:.5f} (min {v['min_cosine']:.4f}), neighbour agreement "
            f"{100 * v['neighbour_agreement']:.1f}% (same nearest {100 * v['same_nearest_neighbour']:.1f}%), 1-NN accuracy "
            f"{100 * v['artifact_accuracy']:.1f}% (torch {100 * v['torch_accuracy']:.1f}%)"
        )
    print(f"\n{'bundle':15s} {'shots':>5s} {'top-1':>7s} {'known @thr':>10s} {'unknown rejected':>16s}")
    for r in results:
        with runtimes.load(r.path) as predictor:
            threshold = (predictor.manifest.embedding or {}).get("unknown_threshold")
            for row in shot_rows(predictor, known, unknown, (1, 5, 10), args.repeats):
                print(
                    f"{r.format:15s} {row['shots']:5d} {100 * row['top1']:6.1f}% {100 * row['known_at_threshold']:9.1f}% "
                    f"{100 * row['unknown_rejected']:15.1f}%"
                )
            print(f"{'':15s} (unknown below cosine {threshold})")
    run = et.train(str(known), out=out / "probe", overwrite=True, progress=False)
    m = run.metrics
    print(f"\nlinear probe on the same known crops: val {100 * m['val_accuracy']:.1f}%, test {100 * m['test_accuracy']:.1f}%", end="")
    print(f" on {m['test_count']} crops")


if __name__ == "__main__":
    main()
