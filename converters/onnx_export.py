"""torch -> ONNX for the bundle contract: uint8 NHWC input with a dynamic batch, float32 logits out.

The model passed in already contains its preprocessing (normalisation and NHWC->NCHW), so the graph is
self-describing. The file is checked with the ONNX checker and full shape inference, and is one self-contained
file (weights inside) as long as the model is under protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from runtimes.errors import EdgeTransferError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
EMBEDDING_OUTPUT_NAME = "embedding"
DEFAULT_OPSET = 18
_TWO_GB = 2 * 1024**3


class ExportError(EdgeTransferError):
    """torch.onnx could not turn the model into a valid ONNX graph."""


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs and drop dead nodes (onnxscript's optimizer, the one torch.onnx uses itself)."""
    from onnxscript import optimizer

    return optimizer.optimize(proto)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: tuple[int, int],
    *,
    opset: int = DEFAULT_OPSET,
    batch_size: int | None = None,
    output_name: str = OUTPUT_NAME,
    extra_outputs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Export `model` (uint8 NHWC in, logits out) to `path`; `batch_size=None` makes the batch dimension dynamic.

    `output_name`: "logits" (a classifier) or "embedding"; `extra_outputs` names the model's further outputs
    (an extensible classifier's "features"). Returns facts for the manifest: opset, exporter, ir_version, parameter bytes.
    """
    h, w = input_size
    example = torch.zeros((batch_size or 2, h, w, 3), dtype=torch.uint8)
    axes = {INPUT_NAME: {0: "batch"}}
    return export_onnx_graph(
        model, path, (example,), [INPUT_NAME], axes, opset=opset, batch_size=batch_size, output_name=output_name, extra_outputs=extra_outputs
    )


def export_onnx_graph(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    input_axes: dict[str, dict[int, str]],
    *,
    opset: int = DEFAULT_OPSET,
    batch_size: int | None = None,
    output_name: str = OUTPUT_NAME,
    extra_outputs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Trace `model` on `example` (one tensor per input name) to a checked, constant-folded ONNX file at `path`;
    with `batch_size=None` the inputs' `input_axes` and every output's batch axis are dynamic (any modality)."""
    path = Path(path)
    model = model.eval().to("cpu")
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if param_bytes >= _TWO_GB:
        raise ExportError(f"model weights are {param_bytes / 1e9:.1f} GB; bundles with external ONNX data are not supported yet")
    dynamic = batch_size is None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=input_names,
                output_names=[output_name, *extra_outputs],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={**input_axes, **{name: {0: "batch"} for name in (output_name, *extra_outputs)}} if dynamic else None,
                do_constant_folding=True,
            )
        except Exception as exc:  # torch.onnx raises many types; report them as one export error
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    proto = _fold_constants(onnx.load(str(path)))
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported ONNX fails the checker: {exc}") from exc
    out_dims = [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    return {
        "exporter": "torch.onnx (TorchScript)",
        "opset": opset,
        "ir_version": int(proto.ir_version),
        "output_shape": out_dims,
        "parameter_bytes": int(param_bytes),
    }
