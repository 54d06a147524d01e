"""ONNX fp32 -> fp16 / int8 (static QDQ or dynamic) with onnxruntime's own tools, and int8 sensitivity ranking.

- fp16: `onnxruntime.transformers.float16` with the graph's inputs and outputs kept as they were (uint8 in,
  float32 logits out), so an fp16 bundle is a drop-in replacement for the fp32 one.
- int8 static: `quant_pre_process` (shape inference, fusions) then `quantize_static` in QDQ format with
  per-channel weights and a selectable calibration method. On x86 CPUs without VNNI the int8 GEMM kernels can
  saturate on 8-bit weights, so weights use 7 bits there (`reduce_range`); the choice and the reason are recorded.
- int8 dynamic: `quantize_dynamic` (weights int8, activations quantised on the fly), for comparison.
- sensitivity: how much each quantised Conv/Gemm/MatMul degrades its activations (SQNR drop across the node,
  measured on calibration images), used by the accuracy-aware loop to keep the worst offenders in float.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from runtimes.errors import InputError

from .calibration import CalibrationData

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZABLE_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_kernels(cpuinfo: str | None = None, machine: str | None = None) -> dict[str, Any]:
    """Decide `reduce_range` for this host's CPU (where the bundle is validated), with the reason.

    x86-64 without VNNI multiplies u8 x s8 pairs into saturating 16-bit sums (vpmaddubsw): full 8-bit weights can
    overflow, so weights are quantised to 7 bits. VNNI/AMX x86 CPUs and ARM64 (sdot) accumulate in 32 bits.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return {"reduce_range": False, "reason": f"{machine}: int8 dot products accumulate in 32 bits"}
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return {"reduce_range": True, "reason": f"{machine}: unknown int8 kernels, 7-bit weights to be safe"}
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    found = sorted(flags.intersection(_VNNI_FLAGS))
    if found:
        return {"reduce_range": False, "reason": f"x86-64 with {', '.join(found)}: no saturation, full 8-bit weights"}
    if not flags:
        return {"reduce_range": True, "reason": "x86-64, CPU flags unknown: 7-bit weights (reduce_range) to avoid saturation"}
    return {"reduce_range": True, "reason": "x86-64 without VNNI: 7-bit weights (reduce_range) to avoid u8s8 saturation"}


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, Any]:
    """Weights and compute in fp16; graph inputs/outputs keep their types (uint8 in, float32 out)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"tool": "onnxruntime.transformers.float16", "keep_io_types": True}


def preprocess_for_quantization(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """onnxruntime's recommended pre-processing: symbolic shape inference, graph optimisation, shape inference."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))


def quantizable_nodes(path: str | os.PathLike[str]) -> list[str]:
    """Names of the nodes whose weights int8 quantisation touches, in graph order."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZABLE_WEIGHT_OPS]


class _SkipUint8InputWarning:
    """onnxruntime logs a multi-line warning on the root logger for the uint8 graph input, which is correct to skip."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Inference failed or unsupported type to quantize for tensor")


def quantize_int8_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: CalibrationData,
    *,
    input_name: str,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    exclude: Sequence[str] = (),
    range_cache: str | os.PathLike[str] | None = None,
    feed_batch: int = 1,
) -> dict[str, Any]:
    """Static QDQ int8 (s8 activations, s8 weights) of a pre-processed model. Returns the settings used.

    `range_cache` (a JSON path) keeps the calibrated tensor ranges, so re-quantising with other nodes left in
    float skips calibration (onnxruntime versions without the option simply recalibrate).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise InputError(f"unknown calibration method {method!r} (choose from {', '.join(CALIBRATION_METHODS)})")
    cache = {"calibration_cache_path": str(range_cache)} if range_cache is not None and _accepts("calibration_cache_path") else {}
    quiet = _SkipUint8InputWarning()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(
            str(src),
            str(dst),
            calibration.ort_reader(input_name, feed_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_providers=["CPUExecutionProvider"],
            **cache,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activations": "int8 (asymmetric)",
        "weights": "int8 (symmetric)" + (", 7-bit range" if reduce_range else ""),
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "method": method,
        "float_nodes": list(exclude),
    }


def _accepts(param: str) -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return param in inspect.signature(quantize_static).parameters


def quantize_int8_dynamic(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, reduce_range: bool = False) -> dict[str, Any]:
    """Dynamic int8: weights quantised offline, activations at run time (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8", "activations": "dynamic uint8",
            "per_channel": True, "reduce_range": reduce_range}


def _sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    signal = float(np.linalg.norm(ref))
    noise = float(np.linalg.norm(ref - test))
    if noise == 0.0:
        return 100.0
    return float(min(100.0, 20.0 * np.log10(max(signal, 1e-12) / noise)))


def rank_sensitivity(
    float_model: str | os.PathLike[str],
    quant_model: str | os.PathLike[str],
    calibration: CalibrationData,
    *,
    input_name: str,
    samples: int = 16,
    feed_batch: int = 4,
) -> list[tuple[str, float]]:
    """Quantisable nodes ranked most sensitive first: (node name, SQNR dB lost between its input and output).

    Both models are run on the same calibration images with every intermediate tensor exposed
    (onnxruntime's qdq_loss_debug); a node that turns a clean input into a noisy output ranks high.
    """
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    data = calibration.subset(samples)
    with tempfile.TemporaryDirectory(prefix="et-sens-") as tmp:
        acts = {}
        for tag, path in (("float", float_model), ("quant", quant_model)):
            augmented = Path(tmp) / f"{tag}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            collected = collect_activations(str(augmented), data.ort_reader(input_name, feed_batch))
            acts[tag] = {k: np.concatenate([a.ravel() for a in v]) for k, v in collected.items()}
    fa, qa = acts["float"], acts["quant"]

    def sqnr(name: str) -> float:
        if name in fa and name in qa and fa[name].shape == qa[name].shape:
            return _sqnr_db(fa[name], qa[name])
        return 100.0  # not a float tensor (the uint8 graph input) or not comparable: treat as clean

    ranked = []
    for node in onnx.load(str(float_model)).graph.node:
        if node.op_type in QUANTIZABLE_WEIGHT_OPS:
            ranked.append((node.name, round(sqnr(node.input[0]) - sqnr(node.output[0]), 3)))
    ranked.sort(key=lambda kv: kv[1], reverse=True)
    return ranked


def quantize_int8_accuracy_aware(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: CalibrationData,
    *,
    input_name: str,
    tuning_images: np.ndarray,
    expected: np.ndarray,
    baseline: float,
    max_drop: float,
    work_dir: str | os.PathLike[str],
    feed_batch: int = 1,
    log: Callable[[str], None] = lambda msg: None,
    **options: Any,
) -> dict[str, Any]:
    """Static int8 that keeps the most sensitive nodes in float until the tuning metric passes.

    The metric is top-1 hits against `expected` (labels, or torch's own top-1) on `tuning_images`, a split other
    than the held-out one; `baseline` is torch's value of it. Nodes are ranked once (`rank_sensitivity`) and the
    top 1, 2, 4, 8, ... are left in float until `baseline - metric <= max_drop`. Returns the settings, including
    the nodes left in float and the search trail.
    """
    import onnxruntime as ort

    work = Path(work_dir)
    cache = work / "ranges.json"
    cache.unlink(missing_ok=True)

    def metric(path: Path) -> float:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        hits = 0
        for s in range(0, len(tuning_images), feed_batch if feed_batch > 1 else 64):
            part = tuning_images[s : s + (feed_batch if feed_batch > 1 else 64)]
            n = len(part)
            if feed_batch > 1 and n < feed_batch:
                part = np.concatenate([part, np.repeat(part[-1:], feed_batch - n, axis=0)])
            hits += int((session.run(None, {input_name: part})[0][:n].argmax(1) == expected[s : s + n]).sum())
        return hits / len(tuning_images)

    candidate = work / "candidate.onnx"
    settings = quantize_int8_static(src, candidate, calibration, input_name=input_name, range_cache=cache, feed_batch=feed_batch, **options)
    value = metric(candidate)
    trail = [{"float_nodes": 0, "metric": round(value, 6)}]
    log(f"onnx-int8 accuracy-aware: all nodes int8 -> tuning metric {100 * value:.2f}% (torch {100 * baseline:.2f}%)")
    if baseline - value > max_drop:
        ranked = rank_sensitivity(src, candidate, calibration, input_name=input_name, feed_batch=feed_batch)
        k = 1
        while True:
            k = min(k, len(ranked))
            exclude = [name for name, _ in ranked[:k]]
            settings = quantize_int8_static(src, candidate, calibration, input_name=input_name, exclude=exclude,
                                            range_cache=cache, feed_batch=feed_batch, **options)
            value = metric(candidate)
            trail.append({"float_nodes": k, "metric": round(value, 6)})
            log(f"onnx-int8 accuracy-aware: {k} most sensitive node(s) in float -> tuning metric {100 * value:.2f}%")
            if baseline - value <= max_drop or k == len(ranked):
                break
            k *= 2
        settings["sensitivity"] = [{"node": n, "sqnr_loss_db": v} for n, v in ranked[: max(k, 8)]]
    shutil.move(str(candidate), str(dst))
    settings["accuracy_aware"] = {"baseline": round(baseline, 6), "max_drop": max_drop, "tuning_count": int(len(tuning_images)),
                                  "passed_on_tuning": bool(baseline - value <= max_drop), "trail": trail}
    return settings
