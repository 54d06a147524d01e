"""A large photo through `predict`: full JPEG decoding against the reduced-size decoding of `jpeg_draft` (the bar:
"a 4000x3000 JPEG: predict at most 0.3x today's time, the same top-1").

    python benchmarks/jpeg_draft.py [--work benchmarks/.bundles] [--rounds 20]

Uses EfficientNet-Lite0's `onnx` bundle in `--work` (as `benchmarks/headline.py` exports it; made once if absent) and
a copy whose manifest says `jpeg_draft`. The photo is skimage's `chelsea` scaled to 4000x3000 with Pillow (bicubic) and saved as a
quality-90 JPEG. Both predictors are called in turn, `rounds` times each, on the file path: decode + preprocess + model + top-5.
Prints p50 per stage and in total, the ratio, both top-1 labels and the largest difference between the two model
inputs. Numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / ".bundles"), help="headline.py's --work (the lite0 bundles)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    from PIL import Image
    from skimage import data as skdata

    import runtimes
    from runtimes.preprocess import draft_scale, prepare_image, read_image

    full_dir = Path(args.work) / "onnx"
    if not (full_dir / "manifest.json").exists():  # as headline.py exports it (it reuses this one)
        import edge_transfer as et

        print(f"exporting efficientnet_lite0 to onnx in {full_dir} (once) ...", file=sys.stderr)
        et.export(backbone="efficientnet_lite0", strategy="pretrained", out=full_dir, format="onnx", allow_failed_validation=True)
    tmp = Path(tempfile.mkdtemp(prefix="jpeg-draft-"))
    try:
        draft_dir = tmp / "bundle"
        shutil.copytree(full_dir, draft_dir)
        doc = json.loads((draft_dir / "manifest.json").read_text())
        doc["preprocessing"]["jpeg_draft"] = True
        (draft_dir / "manifest.json").write_text(json.dumps(doc))
        photo = tmp / "photo.jpg"
        Image.fromarray(skdata.chelsea()).resize((4000, 3000), Image.BICUBIC).save(photo, quality=90)
        times: dict[str, dict[str, list[float]]] = {k: {"decode": [], "prepare": [], "model": [], "total": []} for k in ("full", "draft")}
        with runtimes.load(full_dir) as full, runtimes.load(draft_dir) as draft:
            cfg = draft.manifest.preprocessing
            print(f"photo 4000x3000 JPEG; model input {cfg.input_size}; draft scale 1/{draft_scale(4000, 3000, 1, cfg)}")
            tops = {}
            for _ in range(args.rounds):
                for name, p in (("full", full), ("draft", draft)):
                    t0 = time.perf_counter()
                    image = read_image(str(photo), p.manifest.preprocessing)
                    t1 = time.perf_counter()
                    batch = prepare_image(image, p.manifest.preprocessing)[None]
                    t2 = time.perf_counter()
                    top = p.classify(p.run(batch), 5)[0]
                    t3 = time.perf_counter()
                    for key, dt in zip(("decode", "prepare", "model", "total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                        times[name][key].append(dt)
                    tops[name] = (top[0].label, round(top[0].score, 4), batch)
            diff = int(np.abs(tops["full"][2].astype(int) - tops["draft"][2].astype(int)).max())
            same = np.mean(tops["full"][2] == tops["draft"][2])
        print(f"\n{'':8s} {'decode':>9s} {'prepare':>9s} {'model':>9s} {'total':>9s}   top-1")
        for name in ("full", "draft"):
            med = {k: 1000 * float(np.median(v)) for k, v in times[name].items()}
            cells = " ".join(f"{med[k]:7.1f}ms" for k in ("decode", "prepare", "model", "total"))
            print(f"{name:8s} {cells}   {tops[name][0]} ({tops[name][1]:.2%})")
        ratio = np.median(times["draft"]["total"]) / np.median(times["full"]["total"])
        print(f"\ndraft / full total: {ratio:.2f}x; model inputs: largest difference {diff} levels, {100 * same:.1f}% of values equal")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
