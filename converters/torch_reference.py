"""Logits of the torch model on the CPU: the reference every artifact is validated against."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def reference_logits(model: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """fp32 logits of `model` (moved to the CPU, eval mode) for a uint8 NHWC batch, in chunks of `batch_size`."""
    model = model.eval().to("cpu")
    outs = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size]))).float().numpy())
    return np.concatenate(outs)
