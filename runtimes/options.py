"""Options objects: one dataclass per job, each field's default written once, overridden by keyword."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import InputError

Options = TypeVar("Options")


def replace_options(options: Options, overrides: Mapping[str, Any], *, what: str) -> Options:
    """`options` (a dataclass instance) with `overrides` applied; an unknown name is an InputError listing the known."""
    known = [f.name for f in dataclasses.fields(options)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"unknown {what} option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return dataclasses.replace(options, **overrides)  # type: ignore[type-var]


def options_from_namespace(cls: type[Options], values: Any, **extra: Any) -> Options:
    """`cls` from the attributes of `values` (e.g. parsed CLI flags) named like its fields, plus `extra`."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(values).items() if k in names}, **extra)


@dataclass(frozen=True)
class Bound:
    """The range a numeric option may take: [low, high] (`open_low`: low itself excluded), whole numbers if `integer`."""

    low: float
    high: float
    integer: bool = False
    open_low: bool = False

    def problem(self, value: Any) -> str | None:
        """None when `value` is in range, else what is wrong (NaN, a fraction where a count is wanted, out of range)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.integer and value != int(value):
            return f"must be a whole number, got {value}"
        low_ok = value > self.low if self.open_low else value >= self.low
        if not low_ok or value > self.high:

            def num(x: float) -> str:
                return str(int(x)) if self.integer else f"{x:g}"

            low = f"> {num(self.low)}" if self.open_low else f">= {num(self.low)}"
            return f"must be {low} and <= {num(self.high)}, got {value:g}"
        return None


MAX_BATCH = 1024  # images in one call or training step (1024 x 224 x 224 x 3 float32 is 0.6 GB before any activation)
# Every numeric option of the CLI and the API, by field (= flag dest) name: checked before any work starts.
BOUNDS: dict[str, Bound] = {
    # train / qat / probe-layers
    "image_size": Bound(16, 4096, integer=True),
    "max_tokens": Bound(2, 8192, integer=True),
    "crop_pct": Bound(0, 1, open_low=True),
    "val_fraction": Bound(0, 1, open_low=True),
    "test_fraction": Bound(0, 1, open_low=True),
    "epochs": Bound(1, 100_000, integer=True),
    "qat_epochs": Bound(1, 10_000, integer=True),
    "lr": Bound(0, 10, open_low=True),
    "backbone_lr_scale": Bound(0, 100),
    "weight_decay": Bound(0, 100),
    "batch_size": Bound(1, MAX_BATCH, integer=True),
    "feature_batch_size": Bound(1, MAX_BATCH, integer=True),
    "unfreeze_blocks": Bound(0, 1000, integer=True),
    "dropout": Bound(0, 0.99),
    "patience": Bound(0, 100_000, integer=True),
    "seed": Bound(0, 2**32 - 1, integer=True),
    "num_workers": Bound(0, 256, integer=True),
    "freeze_scales_after": Bound(0, 10_000, integer=True),
    # export
    "calibration_size": Bound(1, 100_000, integer=True),
    "max_drop": Bound(0, 100),
    "min_agreement": Bound(0, 1),
    "self_test_size": Bound(0, 10_000, integer=True),
    "min_int8_share": Bound(0, 1),
    "float_first_layers": Bound(0, 10_000, integer=True),
    "trt_max_batch": Bound(1, MAX_BATCH, integer=True),
    "trt_opt_batch": Bound(1, MAX_BATCH, integer=True),
    "trt_workspace_mib": Bound(1, 1 << 20, integer=True),
    "trt_dla_core": Bound(0, 15, integer=True),
    # device commands
    "top_k": Bound(1, 100_000, integer=True),
    "k": Bound(1, 100_000, integer=True),
    "threshold": Bound(-1, 1),
    "worst": Bound(0, 100_000, integer=True),
    "iterations": Bound(1, 10_000_000, integer=True),
    "duration": Bound(0, 86_400, open_low=True),
    "warmup": Bound(0, 1_000_000, integer=True),
    "threads": Bound(1, 1024, integer=True),
    "streams": Bound(1, 1024, integer=True),
    # video and streams
    "stall_timeout": Bound(0, 86_400, open_low=True),
    "every": Bound(1, 1_000_000, integer=True),
    "fps": Bound(0, 10_000, open_low=True),
    "camera": Bound(0, 1024, integer=True),
}


def check_bounds(values: Mapping[str, Any], *, names: Mapping[str, str] | None = None) -> None:
    """Refuse the first value of `values` (field name -> value; None: the default) outside its `BOUNDS` entry, with
    one InputError naming it as `names` spells it (the CLI passes its flags) or by its field name."""
    for key, value in values.items():
        bound = BOUNDS.get(key)
        if bound is None or value is None:
            continue
        problem = bound.problem(value)
        if problem is not None:
            shown = (names or {}).get(key, key)
            raise InputError(f"{shown} {problem}")


DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # 40 MP: every camera frame and photo, far below Pillow's 89 MP bomb warning


def max_image_pixels() -> int:
    """The largest image (width x height) `read_image` decodes: EDGE_TRANSFER_MAX_IMAGE_PIXELS, else 40 MP."""
    import os

    try:
        return max(1, int(os.environ.get("EDGE_TRANSFER_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)))
    except ValueError:
        return DEFAULT_MAX_IMAGE_PIXELS
