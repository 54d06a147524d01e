"""ONNX fp32 -> fp16 / int8 (static QDQ or dynamic) with onnxruntime's own tools, and int8 sensitivity ranking.

- fp16: `onnxruntime.transformers.float16` with the graph's inputs and outputs kept as they were (uint8 in,
  float32 logits out), so an fp16 bundle is a drop-in replacement for the fp32 one.
- int8 static: `quant_pre_process` (shape inference, fusions) then `quantize_static` in QDQ format with
  per-channel weights and a selectable calibration method. On x86 CPUs without VNNI the int8 GEMM kernels can
  saturate on 8-bit weights, so weights use 7 bits (`reduce_range`) unless the export targets a VNNI or Arm CPU
  (`runtimes.cpu.TARGET_CPUS`: decided for the device, never from the exporting host); the choice is recorded.
- int8 dynamic: `quantize_dynamic` (weights int8, activations quantised on the fly), for comparison.
- sensitivity: how much of the int8 model's logit error (vs the float model) goes away when one quantised node
  runs in float, measured on tuning images; the accuracy-aware loop puts nodes back in float in that order.
- keeping nodes in float is graph surgery on the QDQ model (`with_float_nodes`, `keep_float_inputs`) that
  onnxruntime's own graph optimisations cannot undo; graph outputs (the logits) stay float.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from runtimes.errors import InputError
from runtimes.predictor import padded_chunks

from .calibration import CalibrationData

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZABLE_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, Any]:
    """Weights and compute in fp16; graph inputs/outputs keep their types (uint8 in, float32 out)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"tool": "onnxruntime.transformers.float16", "keep_io_types": True}


def preprocess_for_quantization(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, symbolic_shapes: bool = True) -> None:
    """onnxruntime's recommended pre-processing: symbolic shape inference, graph optimisation, shape inference.
    `symbolic_shapes=False` skips the first, which cannot follow a transformer's Min(max positions, tokens)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=not symbolic_shapes)


def quantized_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of a QDQ model that read a quantised activation (so could run in float instead)."""
    constants = {init.name for init in model.graph.initializer}
    dq_outputs = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0] not in constants}
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and node.name and any(i in dq_outputs for i in node.input)
    ]


def first_weight_nodes(path: str | os.PathLike[str], count: int) -> list[str]:
    """The names of the first `count` Conv/Gemm/MatMul nodes in graph order (the stem side of a CNN)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")][: max(count, 0)]


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
    symmetric_activations: bool = False,
    quantize_bias: bool = True,
) -> dict[str, Any]:
    """Static QDQ int8 (s8 activations, s8 weights) of a pre-processed model. Returns the settings used.

    `symmetric_activations` gives every activation a zero point of 0, which TensorRT's explicit quantisation needs.
    `quantize_bias=False` keeps biases float (no DequantizeLinear on int32 biases, which TensorRT's ONNX parser refuses:
    its DequantizeLinear takes int8 only; TensorRT quantises the bias itself when it fuses the layer).

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
            # Relu/Clip stay in the graph (same speed and accuracy, measured), so the float tensor in front of a
            # QuantizeLinear is the activated one and keep_float_inputs can hand it to a float node unchanged.
            extra_options={
                "ActivationSymmetric": symmetric_activations,
                "WeightSymmetric": True,
                "QDQKeepRemovableActivations": True,
                "QuantizeBias": quantize_bias,
            },
            calibration_providers=["CPUExecutionProvider"],
            **cache,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    model = onnx.load(str(dst))
    float_graph_outputs(model)
    keep_float_inputs(model, exclude)
    onnx.save(model, str(dst))
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activations": "int8 (symmetric, zero point 0)" if symmetric_activations else "int8 (asymmetric)",
        "weights": "int8 (symmetric)" + (", 7-bit range" if reduce_range else ""),
        "biases": "int32 (DequantizeLinear)" if quantize_bias else "float",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "method": method,
        "float_nodes": list(exclude),
    }


def float_graph_outputs(model: onnx.ModelProto) -> None:
    """Drop the QuantizeLinear/DequantizeLinear pair quantize_static puts on graph outputs (in place).

    Rounding the logits to 256 levels buys no speed (nothing int8 consumes them) and turns close scores into ties.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in producer:
            continue
        inner = q.input[0]
        graph.node.remove(dq)
        source = producer[inner]
        source.output[list(source.output).index(inner)] = output.name
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == inner:
                    node.input[i] = output.name
    _drop_dead_nodes(graph)


def keep_float_inputs(model: onnx.ModelProto, nodes: Sequence[str]) -> None:
    """Feed the named nodes the float tensor in front of their input's QuantizeLinear/DequantizeLinear pair (in place).

    quantize_static leaves an excluded node's weights in float but still gives it a quantised input. onnxruntime's
    WeightBiasQuantization transformer then sees DQ -> Conv(float weights) and quantises the weights itself, per
    tensor, at session creation, so the node is int8 after all, and worse (measured: excluding the stem of
    EfficientNet-Lite0 took digits accuracy from 93.9% to 90.0%). Bypassing the input pair keeps the node in float.
    This is exact because activations stay in the graph (QDQKeepRemovableActivations).
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    wanted = set(nodes)
    for node in graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in constants:
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    _drop_dead_nodes(graph)


def with_float_nodes(quantized: onnx.ModelProto, original: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """A copy of a static-int8 model in which the named nodes compute in float again.

    Their weights and biases come back from `original` (the float model it was quantised from) and their
    activation input skips its QDQ pair; their outputs stay quantised for int8 consumers. This gives the same graph
    as quantising with `exclude=nodes`, without calibrating or quantising again, so trying a candidate is cheap.
    """
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    float_inits = {init.name: init for init in original.graph.initializer}
    float_nodes = {node.name: node for node in original.graph.node}
    wanted = set(nodes)
    restored_names: set[str] = set()
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        source = float_nodes.get(node.name)
        if source is None:
            raise InputError(f"node {node.name!r} is not in the float model it was quantised from")
        for i, name in enumerate(source.input[1:], start=1):
            if name in float_inits:
                if name not in restored_names:
                    restored = onnx.TensorProto()
                    restored.CopyFrom(float_inits[name])
                    restored.name = f"{name}__float"
                    model.graph.initializer.append(restored)
                    restored_names.add(name)
                node.input[i] = f"{name}__float"
    keep_float_inputs(model, nodes)
    return model


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes (and then initializers) that nothing consumes any more."""
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def _accepts(param: str) -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return param in inspect.signature(quantize_static).parameters


def quantize_int8_dynamic(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, reduce_range: bool = False) -> dict[str, Any]:
    """Dynamic int8: weights quantised offline, activations at run time (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return {
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "weights": "int8",
        "activations": "dynamic uint8",
        "per_channel": True,
        "reduce_range": reduce_range,
    }


class _Scorer:
    """Runs candidate models on fixed images (in `feed_batch`-sized, padded chunks) and scores their logits."""

    def __init__(self, input_name: str, images: np.ndarray, feed_batch: int = 1):
        self.input_name = input_name
        self.images = images
        self.chunk = feed_batch if feed_batch > 1 else 64
        self.exact = feed_batch > 1

    def logits(self, model: onnx.ModelProto | str | os.PathLike[str]) -> np.ndarray:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        return np.concatenate(
            [session.run(None, {self.input_name: part})[0][:n] for part, n in padded_chunks(self.images, self.chunk, pad=self.exact)]
        )


def _logit_error(reference: np.ndarray, logits: np.ndarray) -> float:
    """Relative L2 distance between a candidate's logits and the float model's."""
    return float(np.linalg.norm(logits - reference) / max(float(np.linalg.norm(reference)), 1e-12))


def rank_sensitivity(
    float_model: str | os.PathLike[str],
    quant_model: str | os.PathLike[str],
    images: np.ndarray,
    *,
    input_name: str,
    feed_batch: int = 1,
) -> list[tuple[str, float]]:
    """Quantised nodes ranked most harmful first: (node name, logit error removed by keeping it in float).

    Each quantised Conv/Gemm/MatMul is put back in float on its own (`with_float_nodes`, no re-quantisation) and the
    relative logit error against the float model is measured on `images`; the error it removes is its score.
    This measures what the output sees, as NNCF's accuracy control ranks its groups.
    """
    original = onnx.load(str(float_model))
    quantized = onnx.load(str(quant_model))
    scorer = _Scorer(input_name, images, feed_batch)
    reference = scorer.logits(float_model)
    base = _logit_error(reference, scorer.logits(quantized))
    ranked = []
    weight_nodes = {n.name for n in quantized.graph.node if n.op_type in QUANTIZABLE_WEIGHT_OPS}
    # only weight layers: an activation (Clip) in float saves nothing, its input and output stay quantised
    for name in [n for n in quantized_compute_nodes(quantized) if n in weight_nodes]:
        error = _logit_error(reference, scorer.logits(with_float_nodes(quantized, original, [name])))
        ranked.append((name, round(base - error, 6)))
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
    feed_batch: int = 1,
    rank_images: int = 128,
    **options: Any,
) -> dict[str, Any]:
    """Static int8 that keeps the most harmful nodes in float, one at a time, until the tuning metric passes.

    The metric is top-1 hits against `expected` (labels, or torch's own top-1) on `tuning_images`, a split other
    than the held-out one; `baseline` is torch's value of it. Nodes are ranked once (`rank_sensitivity` on the
    first `rank_images` tuning images), then put back in float in that order until `baseline - metric <=
    max_drop`. Returns the settings, including the nodes left in float and the search trail.
    """
    settings = quantize_int8_static(src, dst, calibration, input_name=input_name, feed_batch=feed_batch, **options)
    scorer = _Scorer(input_name, tuning_images, feed_batch)

    def metric(model: onnx.ModelProto | str | os.PathLike[str]) -> float:
        return float((scorer.logits(model).argmax(1) == expected).mean())

    value = metric(dst)
    trail = [{"float_nodes": 0, "metric": round(value, 6)}]
    start = len(options.get("exclude", ()))
    logger.info(f"onnx-int8 accuracy-aware: {start} layer(s) in float -> tuning metric {100 * value:.2f}% (torch {100 * baseline:.2f}%)")
    kept: list[str] = []
    if baseline - value > max_drop:
        ranked = rank_sensitivity(src, dst, tuning_images[:rank_images], input_name=input_name, feed_batch=feed_batch)
        original, quantized = onnx.load(str(src)), onnx.load(str(dst))
        candidate = quantized
        for name, _ in ranked:
            kept.append(name)
            candidate = with_float_nodes(quantized, original, kept)
            value = metric(candidate)
            trail.append({"float_nodes": len(kept), "node": name, "metric": round(value, 6)})  # type: ignore[dict-item]
            logger.info(f"onnx-int8 accuracy-aware: {start + len(kept)} layer(s) in float (+{name}) -> tuning metric {100 * value:.2f}%")
            if baseline - value <= max_drop:
                break
        onnx.save(candidate, str(dst))
        settings["sensitivity"] = [{"node": n, "logit_error_removed": v} for n, v in ranked[: max(len(kept), 8)]]
    settings["float_nodes"] = list(options.get("exclude", ())) + kept
    settings["accuracy_aware"] = {
        "baseline": round(baseline, 6),
        "max_drop": max_drop,
        "tuning_count": int(len(tuning_images)),
        "passed_on_tuning": bool(baseline - value <= max_drop),
        "trail": trail,
    }
    return settings
