"""Classes added to a trained classifier on the device (README: Feature transfer): old and new classes' accuracy.

Trains a linear probe on the built-in digits without one class (default 9), exports it with `--output extensible`,
then, with `runtimes` only, adds the held-back class from a few of its images (`runtimes.imprint.AddedClasses`) and
measures the old classes' accuracy on the run's test split (before and after) and the new class's accuracy on its
other images, over several seeded draws of the shots.

    python benchmarks/imprint.py [--new-class 9] [--shots 1,5,10] [--draws 10] [--formats onnx,openvino-int8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_digits(root: Path, new_class: int) -> tuple[Path, Path]:
    """Digits as PNG files: the trained classes under root/old/<digit>, the held-back one under root/new/<digit>."""
    from PIL import Image

    from edge_transfer.data import load_digits_dataset

    ds = load_digits_dataset()
    for i, (img, t) in enumerate(zip(ds.items, ds.targets)):
        folder = root / ("new" if t == new_class else "old") / str(t)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root / "old", root / "new" / str(new_class)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-class", type=int, default=9)
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--formats", default="onnx,openvino-int8")
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()

    import edge_transfer as et
    import runtimes
    from edge_transfer.export_data import run_data
    from edge_transfer.model import read_run_config
    from runtimes.imprint import AddedClasses

    work = Path(tempfile.mkdtemp(prefix="imprint-bench-"))
    old_dir, new_dir = write_digits(work / "data", args.new_class)
    run = work / "run"
    et.train(str(old_dir), out=run, strategy="linear-probe", image_size=args.image_size, interpolation="bilinear", progress=False)
    formats = [f.strip() for f in args.formats.split(",")]
    et.export(run, out=work / "bundles", format=",".join(formats), output="extensible", calibration_size=64)
    held = run_data(read_run_config(run))
    test = held.splits.test
    old_images = [held.dataset.items[i] for i in test]
    old_targets = held.dataset.targets[test]
    new_images = sorted(str(p) for p in new_dir.iterdir())
    rows = []
    for fmt in formats:
        bundle = work / "bundles" / fmt if len(formats) > 1 else work / "bundles"
        with runtimes.load(bundle) as predictor:
            old_logits, old_feats = predictor.logits_and_features(old_images)
            new_logits, new_feats = predictor.logits_and_features(new_images)
            before = float((old_logits.argmax(1) == old_targets).mean())
            for shots in (int(s) for s in args.shots.split(",")):
                for method in ("fit", "mean"):
                    old_acc, new_acc = [], []
                    for draw in range(args.draws):
                        rng = np.random.default_rng(draw)
                        picks = rng.choice(len(new_images), shots, replace=False)
                        rest = np.setdiff1d(np.arange(len(new_images)), picks)
                        added = AddedClasses.for_bundle(predictor)
                        added.add(str(args.new_class), new_feats[picks], method=method)
                        new_index = len(predictor.labels)
                        old_acc.append(float((added.extend(old_logits, old_feats).argmax(1) == old_targets).mean()))
                        new_acc.append(float((added.extend(new_logits[rest], new_feats[rest]).argmax(1) == new_index).mean()))
                    rows.append((fmt, shots, method, before, float(np.mean(old_acc)), float(np.min(old_acc)), float(np.mean(new_acc))))
    print(
        f"\ndigits at {args.image_size} px, class {args.new_class} added on the device; old classes: {len(test)} test images; "
        f"new class: {len(new_images)} images minus the shots; {args.draws} draws\n"
    )
    print("| bundle | shots | method | old before | old after (mean / worst) | change | new class |")
    print("|---|---|---|---|---|---|---|")
    for fmt, shots, method, before, after, worst, new in rows:
        change = 100 * (after - before)
        print(f"| {fmt} | {shots} | {method} | {100 * before:.2f}% | {100 * after:.2f} / {100 * worst:.2f}% | {change:+.2f} pt | {100 * new:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
