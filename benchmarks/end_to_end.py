"""End-to-end latency on camera frames: where the time goes, and what each resizer gives against the definition.

For one bundle (default: an openvino-int8 export of EfficientNet-Lite0 at 224 px, as `benchmarks/headline.py` makes
it), on synthetic 480x640 frames at batch 1:
1. `bench --mode model` and `--mode end-to-end` in the same process, with the end-to-end stages timed apart, for
   the bundle's own interpolation and for the other one (the bundle's preprocessing swapped in memory: a latency
   figure only, the model was not trained for it);
2. each resizer on the same frames, timed alone, with its pixel agreement against the definition
   (`runtimes.resample`): Pillow's C code (what devices with Pillow run), the numpy twin (devices without
   Pillow), a plain single `Image.resize(size, box=...)` call (what an app resizing by hand would get), and
   OpenVINO's PrePostProcessor crop + Pillow-style resize inside a compiled graph (the in-graph option).

    python benchmarks/end_to_end.py                       # exports the bundle once into /tmp/lite0-bundles
    python benchmarks/end_to_end.py --bundle bundles/pets/openvino-int8 --iterations 300
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def resizer_rows(cfg, frames: list[np.ndarray], repeat: int) -> list[tuple[str, float, float, int]]:
    """(resizer, ms per frame, % pixels equal to the definition, max |difference|) per resizer."""
    from PIL import Image

    from runtimes.preprocess import crop_box, resize_and_crop

    def single_call(img: np.ndarray) -> np.ndarray:
        flt = Image.Resampling.BICUBIC if cfg.interpolation == "bicubic" else Image.Resampling.BILINEAR
        box = crop_box(img.shape[0], img.shape[1], cfg)
        return np.asarray(Image.fromarray(img).resize(cfg.input_size[::-1], flt, box=box))

    resizers = {
        "definition via Pillow (device default)": lambda img: resize_and_crop(img, cfg, engine="pillow"),
        "definition via numpy (no Pillow)": lambda img: resize_and_crop(img, cfg, engine="numpy"),
        "one Image.resize call (by hand)": single_call,
        "OpenVINO PrePostProcessor (in graph)": openvino_resizer(cfg, frames[0].shape),
    }
    reference = [resize_and_crop(f, cfg, engine="pillow") for f in frames]
    rows = []
    for name, fn in resizers.items():
        outs = [fn(f) for f in frames]
        t0 = time.perf_counter()
        for _ in range(repeat):
            for f in frames:
                fn(f)
        ms = (time.perf_counter() - t0) / (repeat * len(frames)) * 1000
        diff = np.concatenate([np.abs(o.astype(int) - r.astype(int)).ravel() for o, r in zip(outs, reference)])
        rows.append((name, ms, 100.0 * float((diff == 0).mean()), int(diff.max())))
    return rows


def openvino_resizer(cfg, shape: tuple[int, ...]):
    """A compiled OpenVINO graph doing only the crop (to whole pixels) and the Pillow-style resize, f32 throughout."""
    import math

    import openvino as ov
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor, ResizeAlgorithm

    from runtimes.preprocess import crop_box

    x0, y0, x1, y1 = crop_box(shape[0], shape[1], cfg)
    param = ops.parameter([1, *cfg.input_size, 3], ov.Type.f32, name="x")
    ppp = PrePostProcessor(ov.Model([ops.result(param)], [param]))
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_shape([1, *shape])
    ppp.input().model().set_layout(ov.Layout("NHWC"))
    algorithm = ResizeAlgorithm.RESIZE_BICUBIC_PILLOW if cfg.interpolation == "bicubic" else ResizeAlgorithm.RESIZE_BILINEAR_PILLOW
    begin, end = [0, int(y0), int(x0), 0], [1, math.ceil(y1), math.ceil(x1), 3]
    ppp.input().preprocess().convert_element_type(ov.Type.f32).crop(begin, end).resize(algorithm)
    request = ov.Core().compile_model(ppp.build(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return lambda img: np.clip(np.rint(request.infer([img[None]])[0][0]), 0, 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="bundle directory (default: export Lite0 openvino-int8 into --work once)")
    ap.add_argument("--work", default="/tmp/lite0-bundles")
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()

    import runtimes
    from runtimes.bench import bench_predictor
    from runtimes.preprocess import synthetic_images

    bundle = Path(args.bundle) if args.bundle else None
    if bundle is None:
        from headline import export_bundles  # type: ignore[import-not-found]

        bundle = export_bundles(Path(args.work))["openvino-int8"]
    frames = synthetic_images(4)
    print(f"bundle {bundle}, 480x640 frames, batch 1, {args.iterations} timed calls per row\n")
    print("| interpolation | model p50 | end-to-end p50 | ratio | decode | preprocess | model (in e2e) | postprocess |")
    print("|---|---|---|---|---|---|---|---|")
    with runtimes.load(bundle) as predictor:
        own, manifest = predictor.preprocessing, predictor.manifest
        for interp in (own.interpolation, "bilinear" if own.interpolation == "bicubic" else "bicubic"):
            cfg = dataclasses.replace(own, interpolation=interp)
            # measurement only: what this interpolation would cost (the bundle on disk is not touched)
            object.__setattr__(predictor.bundle, "manifest", dataclasses.replace(manifest, preprocessing=cfg))
            model = bench_predictor(predictor, mode="model", iterations=args.iterations)
            e2e = bench_predictor(predictor, mode="end-to-end", iterations=args.iterations, images=frames)
            st = e2e.stages_ms or {}
            mark = "" if interp == own.interpolation else " (swapped in)"
            print(
                f"| {interp}{mark} | {model.latency.p50:.2f} ms | {e2e.latency.p50:.2f} ms | {e2e.latency.p50 / model.latency.p50:.2f}x | "
                f"- | {st.get('preprocess', 0):.2f} ms | {st.get('model', 0):.2f} ms | {st.get('postprocess', 0):.2f} ms |"
            )
        object.__setattr__(predictor.bundle, "manifest", manifest)
    for interp in ("bicubic", "bilinear"):
        cfg = dataclasses.replace(own, interpolation=interp)
        print(f"\nresizers, 480x640 -> {cfg.input_size[0]}x{cfg.input_size[1]} {interp}, crop_pct {cfg.crop_pct}:\n")
        print("| resizer | ms per frame | pixels equal to the definition | max difference |")
        print("|---|---|---|---|")
        for name, ms, equal, worst in resizer_rows(cfg, frames, repeat=10):
            print(f"| {name} | {ms:.2f} | {equal:.3f}% | {worst} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
