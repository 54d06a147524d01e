"""How much of an int8 bundle really computes in int8: multiply-adds of its weight layers, int8 and float.

A bundle called "int8" may keep layers in float (the stem by default, more after an accuracy-aware search). The
share of multiply-adds (MACs, per image, counted from the layer shapes) done by int8 layers is what decides its
speed, so the export table and the manifest state it, and the gate refuses a bundle below
`QuantizationOptions.min_int8_share`.

- ONNX (QDQ): a Conv/Gemm/MatMul is int8 when its activation input comes from a DequantizeLinear; shapes come from
  onnxruntime's symbolic shape inference (ONNX's own cannot follow the computed "same" padding of TF-style
  convolutions), falling back to ONNX's; a dynamic batch counts as 1.
- OpenVINO IR: a Convolution/GroupConvolution/MatMul is int8 when a FakeQuantize feeds its activation input.
"""

from __future__ import annotations

import os
from math import prod
from typing import Any

import onnx

ONNX_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
ONNX_INTEGER_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")  # int8 by construction


def _summary(layers: list[tuple[str, int, bool]]) -> dict[str, Any]:
    """{"macs_share", "macs", "layers", "int8_layers", "float_layers"} from (name, MACs, is_int8) per layer."""
    total = sum(m for _, m, _ in layers)
    int8 = sum(m for _, m, q in layers if q)
    return {
        "macs_share": round(int8 / total, 4) if total else 0.0,
        "macs": int(total),
        "layers": len(layers),
        "int8_layers": sum(1 for *_, q in layers if q),
        "float_layers": [name for name, _, q in layers if not q],
    }


def _dims(shape: Any) -> list[int]:
    """Static dims of an ONNX TypeProto shape; unknown ones (a dynamic batch) count as 1."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in shape.dim]


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred shapes: ONNX's own inference (fast; enough for the constant-folded graphs int8
    bundles are made from), else onnxruntime's symbolic inference (seconds on a 224 px graph, but it follows the
    computed padding of an unfolded TF-style graph)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {
        v.name
        for v in inferred.graph.value_info
        if v.type.tensor_type.shape.dim and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim[1:])
    }
    if all(node.output[0] in known for node in inferred.graph.node if node.op_type in ONNX_WEIGHT_OPS + ONNX_INTEGER_OPS):
        return inferred
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        symbolic = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if symbolic is not None:
            return symbolic
    except Exception:  # a graph it cannot follow: ONNX's inference gives what it can
        pass
    return inferred


def onnx_int8_share(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The int8 share of a (QDQ or float) ONNX model's multiply-adds; see the module docstring."""
    model = _with_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: _dims(v.type.tensor_type.shape) for v in (*graph.value_info, *graph.input, *graph.output)}
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    producer = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer}

    def weight_shape(name: str) -> list[int]:
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":  # a quantised weight: the int8 initializer's shape
            name = node.input[0]
        return shapes.get(name, [])

    def is_int8(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in constants

    layers = []
    for node in graph.node:
        if node.op_type not in ONNX_WEIGHT_OPS + ONNX_INTEGER_OPS:
            continue
        weight = node.input[3] if node.op_type.startswith("QLinear") else node.input[1]  # QLinear*: (x, scale, zp, w, ...)
        out, w = shapes.get(node.output[0], []), weight_shape(weight)
        if not out or not w:
            continue
        if node.op_type.endswith("Conv") or node.op_type == "ConvInteger":  # (Cout, Cin/groups, kh, kw)
            per_output = prod(w[1:])
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            per_output = w[1] if trans_b else w[0]
        else:
            per_output = w[-2]
        int8 = node.op_type in ONNX_INTEGER_OPS or is_int8(node.input[0])
        layers.append((node.name or node.output[0], prod(out) * per_output, int8))
    return _summary(layers)


def openvino_int8_share(model: Any) -> dict[str, Any]:
    """The int8 share of an `openvino.Model`'s multiply-adds; see the module docstring."""
    from .openvino_convert import WEIGHT_OPS

    def dims(pshape: Any) -> list[int]:
        return [d.get_length() if d.is_static else 1 for d in pshape]

    layers = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in WEIGHT_OPS:
            continue
        out, w = dims(op.get_output_partial_shape(0)), dims(op.input_value(1).get_partial_shape())
        if kind == "Convolution":  # (Cout, Cin, kh, kw)
            per_output = prod(w[1:])
        elif kind == "GroupConvolution":  # (groups, Cout/groups, Cin/groups, kh, kw)
            per_output = prod(w[2:])
        else:
            a = dims(op.input_value(0).get_partial_shape())
            per_output = a[-2] if op.get_attributes().get("transpose_a") else a[-1]
        layers.append((op.get_friendly_name(), prod(out) * per_output, op.input_value(0).get_node().get_type_name() == "FakeQuantize"))
    return _summary(layers)


def bundle_int8_share(model_format: str, model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The int8 share of a bundle's model file ("onnx" or "openvino-ir")."""
    if model_format == "openvino-ir":
        import openvino as ov

        return openvino_int8_share(ov.Core().read_model(str(model_path)))
    return onnx_int8_share(model_path)
