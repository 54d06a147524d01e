"""Validate an artifact against its torch reference (the optimum habit, but failing the export by default).

The artifact is run through `runtimes` exactly as a device would run it. Measured: accuracy of torch and of the
artifact on the held-out split (when labels are known), top-1 agreement, max abs logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtimes.errors import InputError
from runtimes.predictor import Predictor

DEFAULT_MIN_AGREEMENT = {"fp32": 0.995, "fp16": 0.99, "int8": 0.97}


@dataclass
class ReferenceData:
    """Held-out images (uint8 NHWC at the model's size) with optional targets, and where they came from."""

    images: np.ndarray
    targets: np.ndarray | None
    split: str
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or len(self.images) == 0:
            raise InputError(f"reference images must be a non-empty uint8 (N, H, W, 3) batch, got {self.images.dtype} {self.images.shape}")
        if self.targets is not None and len(self.targets) != len(self.images):
            raise InputError(f"reference data: {len(self.images)} images but {len(self.targets)} targets")


def _accuracy(logits: np.ndarray, targets: np.ndarray | None) -> float | None:
    if targets is None:
        return None
    return float((logits.argmax(1) == targets).mean())


def compare(
    predictor: Predictor,
    reference_logits: np.ndarray,
    data: ReferenceData,
    *,
    min_agreement: float,
) -> dict[str, Any]:
    """Run `data` through the predictor and compare with `reference_logits`; return the manifest's `validation`."""
    logits = predictor.run_chunked(data.images)
    if logits.shape != reference_logits.shape:
        raise InputError(f"artifact output shape {logits.shape} differs from the torch reference {reference_logits.shape}")
    agree = float((logits.argmax(1) == reference_logits.argmax(1)).mean())
    diff = np.abs(logits.astype(np.float64) - reference_logits.astype(np.float64))
    torch_acc = _accuracy(reference_logits, data.targets)
    art_acc = _accuracy(logits, data.targets)
    return {
        "split": data.split,
        "count": int(len(data.images)),
        **({"data": data.description} if data.description else {}),
        "torch_accuracy": torch_acc,
        "artifact_accuracy": art_acc,
        "accuracy_drop": None if torch_acc is None else round(torch_acc - art_acc, 6),
        "top1_agreement": agree,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "min_agreement": float(min_agreement),
        "runtime": predictor.describe(),
        "passed": bool(agree >= min_agreement),
    }


def format_validation(v: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    return (
        f"validation on {v['split']} ({v['count']} images): torch accuracy {pct(v['torch_accuracy'])}, "
        f"artifact accuracy {pct(v['artifact_accuracy'])}, top-1 agreement {pct(v['top1_agreement'])} "
        f"(need >= {pct(v['min_agreement'])}), max |logit diff| {v['max_abs_logit_diff']:.3g}"
    )
