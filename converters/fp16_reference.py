"""A reference that really computes in fp16, for judging fp16 bundles on devices that do.

An x86 host cannot show what fp16 arithmetic does to a model: ONNX Runtime's CPU kernels cast an fp16 graph to fp32
(its fp16 kernels are Arm's), OpenVINO decompresses fp16 weights to f32, and torch's CPU half ops accumulate in fp32.
A device with fp16 arithmetic (an Armv8.2 core with `fphp`, TensorRT on a GPU) rounds far more often, and a tolerance
learned from the host alone refuses good bundles there.

`Fp16Arithmetic` runs a torch model with every weight and activation in fp16 and every multiply-accumulate of a
convolution, linear layer, matmul and attention rounded to fp16 after each step, as a fused multiply-add into an fp16
accumulator does. That is the most rounding an fp16 kernel can do, so the self-test's fp16 tolerance set from it covers
devices that round less (a Cortex-A76 under ONNX Runtime: 1.46e-2 against 2.0e-2 from this reference on the same
digits model), while a bundle whose weights changed still fails.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

if TYPE_CHECKING:
    from .export_input import ExportInput
    from .golden import GoldenSet

# images per forward pass: an unfolded convolution holds C*kh*kw x H*W values per image
CHUNK = 2


def fma_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` (broadcasting leading dimensions) with an fp16 accumulator rounded after every multiply-add."""
    a32, b32 = a.half().float(), b.half().float()
    shape = (*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
    acc = torch.zeros(shape, dtype=torch.float32)
    for k in range(a.shape[-1]):
        # an fp16 x fp16 product is exact in fp32; one rounding per step, as a fused multiply-add has
        acc = (acc + a32[..., :, k, None] * b32[..., None, k, :]).half().float()
    return acc.half()


def _conv2d(
    x: torch.Tensor, w: torch.Tensor, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
) -> torch.Tensor:
    out_c, per_group, kh, kw = w.shape
    stride, dilation = _pair(stride), _pair(dilation)
    if padding == "valid":
        padding = 0
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
        x = F.pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))
        padding = 0
    padding = _pair(padding)
    n, _, h, _ = x.shape
    cols = F.unfold(x.float(), (kh, kw), dilation=dilation, padding=padding, stride=stride)  # n, c*kh*kw, L
    length = cols.shape[-1]
    cols = cols.view(n, groups, per_group * kh * kw, length).transpose(-1, -2)
    weights = w.reshape(groups, out_c // groups, per_group * kh * kw).transpose(-1, -2)
    y = fma_matmul(cols, weights).transpose(-1, -2).reshape(n, out_c, length)
    if bias is not None:
        y = (y.float() + bias.float().view(1, out_c, 1)).half()
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    return y.view(n, out_c, out_h, length // out_h)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _linear(x: torch.Tensor, w: torch.Tensor, bias: Any = None) -> torch.Tensor:
    y = fma_matmul(x, w.t())
    return (y.float() + bias.float()).half() if bias is not None else y


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Any = None,
    **_: Any,
) -> torch.Tensor:
    scores = (fma_matmul(q, k.transpose(-1, -2)).float() * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))).half()
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else (scores.float() + attn_mask.float()).half()
    return fma_matmul(torch.softmax(scores.float(), -1).half(), v)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return fma_matmul(a, b) if a.dim() >= 2 and b.dim() >= 2 else torch.matmul(a.half(), b.half())


_ACCUMULATING: dict[Any, Callable[..., torch.Tensor]] = {
    F.conv2d: _conv2d,
    F.linear: _linear,
    F.scaled_dot_product_attention: _attention,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    torch.bmm: _matmul,
}


def _half(t: Any) -> Any:
    return t.half() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t


class Fp16Arithmetic(TorchFunctionMode):
    """Within this mode every float32 tensor an op is given becomes fp16 (each op's result is rounded to fp16), and
    convolutions, linear layers, matmuls and attention accumulate in fp16 (`fma_matmul`)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        args, kwargs = tree_map(_half, (tuple(args), dict(kwargs or {})))
        if func in _ACCUMULATING:
            return _ACCUMULATING[func](*args, **kwargs)
        return func(*args, **kwargs)


def fp16_outputs(reference_outputs: Any, model: nn.Module, batch: Any) -> np.ndarray:
    """`reference_outputs(model, batch)` (the export's torch reference) with `model` computing in fp16 arithmetic;
    `batch` goes `CHUNK` rows at a time (an image array or a text batch: anything sliced by rows)."""
    half = copy.deepcopy(model).eval().to("cpu").half()
    parts = []
    with torch.inference_mode(), Fp16Arithmetic():
        for start in range(0, len(batch), CHUNK):
            parts.append(np.asarray(reference_outputs(half, batch[start : start + CHUNK]), dtype=np.float32))
    return np.concatenate(parts)


def with_fp16_arithmetic(golden: GoldenSet | None, inp: ExportInput, model: nn.Module, precisions: set[str]) -> GoldenSet | None:
    """`golden` with torch's outputs computing in fp16 arithmetic, when an fp16 format is being exported."""
    if golden is None or "fp16" not in precisions:
        return golden
    return dataclasses.replace(golden, fp16_arithmetic=fp16_outputs(inp.reference_outputs, model, golden.images))
