"""ONNX fp32 -> OpenVINO IR (fp32, fp16 weights) and int8 through NNCF post-training quantisation.

- `openvino` / `openvino-fp16`: `openvino.convert_model` on the validated fp32 ONNX, saved with or without fp16
  weight compression (the CPU plugin still computes in fp32/bf16; GPUs and NPUs compute in fp16).
- `openvino-int8`: `nncf.quantize` with full bias correction, on calibration images from the training split, the
  first weight layers left in float (`QuantizationOptions.float_first_layers`). With accuracy control,
  `nncf.quantize_with_accuracy_control` reverts the most sensitive layers to float until the metric on the tuning
  split drops by at most `max_drop`; the layers left in float are read back from the quantised graph and recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.predictor import padded_chunks

from .calibration import CalibrationData
from .nncf_loader import import_nncf

WEIGHT_OPS = ("Convolution", "GroupConvolution", "MatMul")


def read_onnx(path: str | os.PathLike[str]):
    """The ONNX file as an `openvino.Model` (its shapes, static or dynamic, carry over)."""
    import openvino as ov

    return ov.convert_model(str(path))


def save_ir(model, out_dir: str | os.PathLike[str], *, fp16: bool) -> dict[str, Any]:
    """Write model.xml + model.bin into `out_dir`; returns the facts for the manifest."""
    import openvino as ov

    ov.save_model(model, str(Path(out_dir) / "model.xml"), compress_to_fp16=fp16)
    return {"tool": "openvino.convert_model", "weights": "fp16" if fp16 else "fp32", "openvino": ov.__version__}


def first_weight_layers(model, count: int) -> list[str]:
    """The friendly names of the first `count` weight layers (the stem side of a CNN), in execution order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in WEIGHT_OPS][: max(count, 0)]


def float_layers(model) -> list[str]:
    """Weight layers of a quantised model whose activations are not quantised (no FakeQuantize feeding them)."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHT_OPS:
            continue
        source = op.input_value(0).get_node()
        if source.get_type_name() != "FakeQuantize":
            names.append(op.get_friendly_name())
    return names


def quantize_int8(
    model,
    calibration: CalibrationData,
    *,
    accuracy_control: dict[str, Any] | None = None,
    feed_batch: int | None = None,
    overflow_fix: str = "enable",
    float_first_layers: int = 0,
    model_type: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training int8 of an `openvino.Model`. Returns (quantised model, settings for the manifest).
    model_type: "transformer" for NNCF's transformer scheme (attention's softmax and layer norms kept in float).

    overflow_fix: "enable" quantises every layer's weights to 7 bits, so CPUs without VNNI cannot saturate (NNCF's
    overflow fix); "disable" keeps full 8-bit weights, for VNNI/AMX and Arm CPUs only.

    accuracy_control: {"images", "expected" (labels, or torch's top-1), "max_drop" (fraction), "split"} runs
    NNCF's accuracy-aware quantisation, with top-1 hits on that tuning data as the metric.
    feed_batch: the model's fixed batch size, if it has one (inputs are then padded to it).
    float_first_layers: the first N weight layers stay in float (NNCF's ignored scope).
    """
    nncf = import_nncf()

    dataset = calibration.nncf_dataset(feed_batch or 1)
    settings: dict[str, Any] = {
        "tool": "nncf.quantize",
        "nncf": nncf.__version__,
        "preset": "performance (symmetric weights and activations)",
        "bias_correction": "full (fast_bias_correction=False)",
        "per_channel": True,
        "overflow_fix": overflow_fix,
        "float_first_layers": float_first_layers,
    }
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    # full bias correction: documented by NNCF as the more accurate one, and measured so on both digits models
    # (benchmarks/int8_ptq.py); it doubles the build time (about 20 -> 35 s at 128 px on 2 cores)
    common: dict[str, Any] = {"subset_size": len(calibration), "preset": nncf.QuantizationPreset.PERFORMANCE, "fast_bias_correction": False}
    if model_type == "transformer":
        common.update(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
        settings.update(model_type="transformer", preset="mixed (symmetric weights, asymmetric activations)")
    first = first_weight_layers(model, float_first_layers)
    if first:
        common["ignored_scope"] = nncf.IgnoredScope(names=first)
    # NNCF's progress bars and its INFO logger write to stdout: keep stdout for results and JSON, and its INFO lines
    # (e.g. which ignored nodes it found) out of the user's output
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quantized = _run_nncf(nncf, model, dataset, common, accuracy_control, feed_batch, advanced)
    finally:
        nncf_log.setLevel(level)
    if accuracy_control is not None:
        settings.update(
            tool="nncf.quantize_with_accuracy_control",
            accuracy_control={
                "split": accuracy_control.get("split"),
                "count": int(len(accuracy_control["images"])),
                "max_drop": float(accuracy_control["max_drop"]),
            },
        )
    settings["float_layers"] = float_layers(quantized)
    return quantized, settings


def _run_nncf(nncf, model, dataset, common: dict[str, Any], accuracy_control: dict[str, Any] | None, feed_batch: int | None, advanced: Any = None):
    if accuracy_control is None:
        quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
    else:
        images, expected = accuracy_control["images"], accuracy_control["expected"]
        step = feed_batch or 32
        items = [(part, expected[s : s + n]) for s, (part, n) in zip(range(0, len(images), step), padded_chunks(images, step, pad=bool(feed_batch)))]

        def validate(compiled, data) -> float:
            hits = total = 0
            for batch, want in data:
                logits = np.asarray(compiled(batch)[0])[: len(want)]
                hits += int((logits.argmax(1) == want).sum())
                total += len(want)
            return hits / max(total, 1)

        quantized = nncf.quantize_with_accuracy_control(
            model,
            dataset,
            nncf.Dataset(items),
            validation_fn=validate,
            max_drop=float(accuracy_control["max_drop"]),
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=advanced,
            **common,
        )
    return quantized
