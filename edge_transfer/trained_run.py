"""`TrainedRun`: what `train` and `qat` return, a finished run on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainedRun:
    """A finished training run on disk."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    qat: TrainedRun | None = None  # train(..., qat=True): the quantisation-aware run made from this one
