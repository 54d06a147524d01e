"""Post-training int8 settings, measured one by one on a training run (issue: int8 that passes by default).

For a run directory, exports its fp32 ONNX once, draws the calibration images the export would (seeded, from the
training split) and scores each variant on the held-out test split: accuracy, drop vs torch fp32 (points), top-1
agreement, on this CPU with the precision pinned to f32. One row per variant, so each change's effect is read
against the same baseline in the same run.

    python benchmarks/int8_ptq.py runs/digits-ft                  # every variant
    python benchmarks/int8_ptq.py runs/digits-ft --only ov-        # OpenVINO variants only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def openvino_variant(**changes: Any) -> Callable[[Path, Any], Callable[[np.ndarray], np.ndarray]]:
    """An NNCF PTQ variant: plain PTQ as openvino-int8 made it before these measurements (performance preset, fast
    bias correction, overflow fix for portable targets, every layer int8) with `changes` to `nncf.quantize`
    keywords or to its AdvancedQuantizationParameters (`advanced_*`)."""

    def build(onnx_path: Path, calibration: Any) -> Callable[[np.ndarray], np.ndarray]:
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        from converters import openvino_convert as ovc

        model = ovc.read_onnx(onnx_path)
        advanced = {"overflow_fix": OverflowFix.ENABLE}
        kwargs: dict[str, Any] = {"preset": nncf.QuantizationPreset.PERFORMANCE, "subset_size": len(calibration)}
        for k, v in changes.items():
            if k.startswith("advanced_"):
                advanced[k.removeprefix("advanced_")] = v
            else:
                kwargs[k] = v
        ignored = kwargs.pop("ignored_first", 0)
        if ignored:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=ovc.first_weight_layers(model, ignored))
        quantized = nncf.quantize(model, calibration.nncf_dataset(1), advanced_parameters=AdvancedQuantizationParameters(**advanced), **kwargs)
        compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda batch: np.asarray(compiled(batch)[0])

    return build


def onnxruntime_variant(**changes: Any) -> Callable[[Path, Any], Callable[[np.ndarray], np.ndarray]]:
    """An ONNX Runtime static QDQ variant of `converters.onnx_quantize.quantize_int8_static`: plain PTQ as onnx-int8
    made it before these measurements (minmax, per-channel, 7-bit weights for portable targets, every layer int8)
    plus `changes` (method, per_channel, reduce_range, symmetric_activations, ignored_first)."""

    def build(onnx_path: Path, calibration: Any) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        from converters.onnx_export import INPUT_NAME
        from converters.onnx_quantize import first_weight_nodes, preprocess_for_quantization, quantize_int8_static

        pre = onnx_path.with_name("pre.onnx")
        if not pre.exists():
            preprocess_for_quantization(onnx_path, pre)
        out = onnx_path.with_name(f"q-{time.monotonic_ns()}.onnx")
        options = {"reduce_range": True, **changes}
        options["exclude"] = first_weight_nodes(pre, options.pop("ignored_first", 0))
        quantize_int8_static(pre, out, calibration, input_name=INPUT_NAME, **options)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {INPUT_NAME: batch})[0]

    return build


def variants() -> dict[str, Callable[[Path, Any], Callable[[np.ndarray], np.ndarray]]]:
    from nncf.quantization.advanced_parameters import OverflowFix

    return {
        "ov-plain (before: portable, fast bias correction)": openvino_variant(),
        "ov-overflow-fix first layer only": openvino_variant(advanced_overflow_fix=OverflowFix.FIRST_LAYER),
        "ov-no overflow fix (8-bit weights)": openvino_variant(advanced_overflow_fix=OverflowFix.DISABLE),
        "ov-full bias correction": openvino_variant(fast_bias_correction=False),
        "ov-mixed preset (asymmetric activations)": openvino_variant(preset=__import__("nncf").QuantizationPreset.MIXED),
        "ov-channel alignment (CLE)": openvino_variant(advanced_disable_channel_alignment=False),
        "ov-first 2 weight layers in float": openvino_variant(ignored_first=2),
        "ovbc-full bias correction + no overflow fix (VNNI targets)": openvino_variant(
            fast_bias_correction=False, advanced_overflow_fix=OverflowFix.DISABLE
        ),
        "ovbc-full bias correction + first 2 weight layers in float": openvino_variant(fast_bias_correction=False, ignored_first=2),
        "ovbc-full bias correction + first weight layer in float": openvino_variant(fast_bias_correction=False, ignored_first=1),
        "ovbc-full bias correction + first 3 weight layers in float (now the default)": openvino_variant(fast_bias_correction=False, ignored_first=3),
        "ovbc-full bias correction + first 2 in float + mixed preset": openvino_variant(
            fast_bias_correction=False, ignored_first=2, preset=__import__("nncf").QuantizationPreset.MIXED
        ),
        "ort-plain (before: portable, reduce_range)": onnxruntime_variant(),
        "ort-no reduce_range": onnxruntime_variant(reduce_range=False),
        "ort-percentile": onnxruntime_variant(method="percentile"),
        "ort-entropy": onnxruntime_variant(method="entropy"),
        "ort-symmetric activations": onnxruntime_variant(symmetric_activations=True),
        "ortf-first 2 weight layers in float (now the default)": onnxruntime_variant(ignored_first=2),
        "ortf-first 2 weight layers in float + no reduce_range (VNNI targets)": onnxruntime_variant(ignored_first=2, reduce_range=False),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="training run directory")
    parser.add_argument("--only", default="", help="run only the variants whose name starts with one of these (comma-separated)")
    parser.add_argument("--calibration-size", type=int, default=300)
    args = parser.parse_args()

    from converters.onnx_export import export_onnx
    from converters.torch_reference import reference_logits
    from edge_transfer.export_data import draw_calibration, reference_data, run_data
    from edge_transfer.sources import load_run

    model, config = load_run(args.run)
    data = run_data(config)
    cfg = model.preprocessing
    reference = reference_data(data, data.splits.test, "test", cfg, None)
    calibration = draw_calibration(data, data.splits.train, "train", args.calibration_size, cfg)
    exported = model.for_export()
    torch_logits = reference_logits(exported, reference.images)
    targets = reference.targets
    torch_acc = float((torch_logits.argmax(1) == targets).mean())
    print(f"run {args.run}: torch fp32 {100 * torch_acc:.2f}% on {len(targets)} test images; calibration {len(calibration)} train images")
    print("| variant | accuracy | drop vs fp32 | top-1 agreement | build s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        onnx_path = Path(work) / "model.onnx"
        export_onnx(exported, onnx_path, cfg.input_size)
        for name, build in variants().items():
            if not any(name.startswith(prefix) for prefix in args.only.split(",")):
                continue
            t = time.perf_counter()
            try:
                run = build(onnx_path, calibration)
            except Exception as exc:  # a library failing on this model is a result too
                print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:80]} | | | |", flush=True)
                continue
            seconds = time.perf_counter() - t
            logits = np.concatenate([run(reference.images[i : i + 32]) for i in range(0, len(targets), 32)])
            acc = float((logits.argmax(1) == targets).mean())
            agree = float((logits.argmax(1) == torch_logits.argmax(1)).mean())
            print(f"| {name} | {100 * acc:.2f}% | {100 * (torch_acc - acc):+.2f} pt | {100 * agree:.2f}% | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
