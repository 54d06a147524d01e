"""The int8 ladder: the rungs an int8 format climbs until its bundle passes its gate (docs/ARCHITECTURE.md).

Rung 1 is post-training quantisation with the improved defaults; rung 2, for formats that support it (`tunable`),
the accuracy-aware search tuned on data other than the held-out split; after that the export refuses the bundle.
`QuantizationOptions.fallback=False` (--no-fallback) stops after rung 1; `accuracy_aware=True` starts on rung 2.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from .formats import FormatSpec
from .options import QuantizationOptions
from .qat_formats import QUANTISATION_AWARE

if TYPE_CHECKING:
    from .export_result import ExportResult

logger = logging.getLogger(__name__)

POST_TRAINING, ACCURACY_AWARE = "post-training", "accuracy-aware"


def ladder(spec: FormatSpec, quantization: QuantizationOptions, *, can_tune: bool, qat: bool = False) -> list[tuple[str | None, QuantizationOptions]]:
    """The rungs one format climbs until its bundle passes: (rung name, quantisation options) in order.

    Float formats have one rung without a name. int8 formats that support the accuracy-aware search (`tunable`)
    start with post-training quantisation and, unless `fallback` is off or there is no tuning data, try the search
    next; `accuracy_aware` starts on the search. Other int8 formats have the post-training rung only. The int8
    bundles of a quantisation-aware run (`qat`) have one rung: the scales it learned."""
    if spec.precision != "int8":
        return [(None, quantization)]
    if qat:
        return [(QUANTISATION_AWARE, quantization)]
    if not spec.tunable:
        return [(POST_TRAINING, quantization)]
    if quantization.accuracy_aware:
        return [(ACCURACY_AWARE, quantization)]
    rungs: list[tuple[str | None, QuantizationOptions]] = [(POST_TRAINING, quantization)]
    if quantization.fallback and can_tune:
        rungs.append((ACCURACY_AWARE, dataclasses.replace(quantization, accuracy_aware=True)))
    elif quantization.fallback:
        logger.info(
            f"{spec.name}: no accuracy-aware rung after post-training int8 (it needs a val split to tune on; "
            "embedding and extensible bundles are quantised post-training only)"
        )
    return rungs


def rung_record(rung: str | None, result: ExportResult) -> dict[str, Any]:
    """What a rung that failed measured, kept in the validation of the bundle that was written."""
    v = result.validation or {}
    keys = ("accuracy_drop", "top1_agreement", "int8_macs_share", "checks", "passed")
    return {"rung": rung, **{k: v.get(k) for k in keys}, "seconds": result.seconds.get("convert")}


# what the accuracy-aware rung tunes: accuracy with labels, top-1 agreement with fp32 where fp32 is confident without
TUNED_CHECKS = ("accuracy_drop", "confident_agreement")


def why_not_climb(result: ExportResult) -> str | None:
    """None when the next (accuracy-aware) rung can help this failed bundle, else why it cannot: the gate failed only
    on checks that rung does not tune (top-5 containment, logit cosine, the int8 share), so it would measure the
    same numbers again."""
    checks = (result.validation or {}).get("checks") or {}
    failed = [name for name, ok in checks.items() if not ok]
    if not failed or any(name in TUNED_CHECKS for name in failed):
        return None
    return (
        f"the accuracy-aware rung tunes {' or '.join(TUNED_CHECKS)}, and the gate failed on {', '.join(failed)}, which it does "
        "not tune: not tried (it would measure the same); calibrate on more images like the held-out ones, or keep more "
        "layers in float (--float-first-layers)"
    )
