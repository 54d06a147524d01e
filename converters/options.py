"""Export options and their defaults, torch-free so the CLI builds its flags from them on any install."""

from __future__ import annotations

from dataclasses import dataclass

from runtimes.cpu import DEFAULT_TARGET_CPU, TARGET_CPUS
from runtimes.selftest import DEFAULT_SELF_TEST_SIZE

DEFAULT_FORMAT = "onnx"
DEFAULT_CALIBRATION_SIZE = 300  # images drawn (seeded) from the training split for int8 calibration
DEFAULT_MAX_DROP_POINTS = 1.0  # the accuracy gate: at most this many points below torch fp32
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
TARGET_CPU_CHOICES = tuple(TARGET_CPUS)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_SIZE",
    "DEFAULT_FORMAT",
    "DEFAULT_MAX_DROP_POINTS",
    "DEFAULT_SELF_TEST_SIZE",
    "DEFAULT_TARGET_CPU",
    "TARGET_CPU_CHOICES",
    "QuantizationOptions",
]


@dataclass
class QuantizationOptions:
    """How int8 formats are made. `target_cpu` (see `runtimes.cpu.TARGET_CPUS`) is the CPU the bundle will run on,
    never the host's: "portable" (default) is safe on every CPU. `reduce_range` overrides its weight range."""

    method: str = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None
    accuracy_aware: bool = False
    target_cpu: str = DEFAULT_TARGET_CPU
