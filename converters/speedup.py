"""The export table's speed-up: each bundle against plain fp32 on the same backend (timed by `converters.latency`),
and the warning when an int8 bundle is no faster than its fp32 here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from .formats import FORMAT_SPECS, ExportJob, FormatSpec
from .latency import batch1_ms

if TYPE_CHECKING:
    from runtimes.predictor import Predictor

    from .export_result import ExportResult

logger = logging.getLogger(__name__)


def speed_vs_fp32(job: ExportJob, spec: FormatSpec, predictor: Predictor, one: np.ndarray) -> dict[str, Any]:
    """This bundle's backend call against the same backend's plain fp32 graph, at the bundle's batch (see
    `converters.latency`); nothing for TensorRT, whose engine is built and timed on the device."""
    if spec.backend == "tensorrt":
        return {}
    batch = np.repeat(one, job.feed_batch, axis=0)
    base = job.fp32_ms(spec.backend, batch)
    ms = batch1_ms(predictor.native_call(), batch)
    return {
        "latency_ms": round(ms, 3),
        "latency_batch": job.feed_batch,
        "fp32_latency_ms": None if base is None else round(base, 3),
        "speedup_vs_fp32": None if base is None or ms <= 0 else round(base / ms, 2),
    }


def warn_when_int8_is_not_faster(results: list[ExportResult]) -> None:
    """Say so when an int8 bundle is no faster than fp32 on the same backend here (ONNX Runtime int8 measured 1.7x
    slower without VNNI, 0.92x with it on EfficientNet-Lite0), naming the fastest passing bundle instead."""
    speedups = {r.format: (v["speedup_vs_fp32"], r.passed, v["latency_batch"]) for r in results if (v := r.validation) and v.get("speedup_vs_fp32")}
    qat = {r.format for r in results if (r.validation or {}).get("rung") == "quantisation-aware"}
    passing = {name: s for name, (s, passed, _) in speedups.items() if passed and FORMAT_SPECS[name].precision != "fp32" and s >= 1.1}
    best = max(passing, key=passing.__getitem__, default=None)
    for name, (speedup, _, batch) in speedups.items():
        if FORMAT_SPECS[name].precision == "int8" and speedup < 1.1:
            other = f"; here {best} is {passing[best]:.2f}x its fp32" if best is not None and best != name else ""
            why = ""
            if FORMAT_SPECS[name].backend == "onnxruntime":
                why = (
                    "; a quantisation-aware graph quantises layer inputs only (TensorRT's layout), which ONNX Runtime runs "
                    "as float layers between quantise/dequantise pairs"
                    if name in qat
                    else "; ONNX Runtime's int8 kernels often do not pay off on depthwise networks, least of all without VNNI"
                )
            logger.warning(f"{name} is no faster than fp32 on this CPU ({speedup:.2f}x at batch {batch}{why}){other}")
