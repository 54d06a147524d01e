"""The export table's speed-up: each bundle against plain fp32 on the same backend (timed by `converters.latency`),
and the warning when an int8 bundle is no faster than its fp32 here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .formats import FORMAT_SPECS, ExportJob, FormatSpec
from .latency import batch1_ms, paired_ratio

if TYPE_CHECKING:
    from runtimes.predictor import Predictor

    from .export_result import ExportResult

logger = logging.getLogger(__name__)


def speed_vs_fp32(job: ExportJob, spec: FormatSpec, predictor: Predictor, one: Any) -> dict[str, Any]:
    """This bundle's backend call against the same backend's plain fp32 graph, at the bundle's batch, timed in
    interleaved pairs (`converters.latency.paired_ratio`): the median ratio with its quartiles; nothing for TensorRT,
    whose engine is built and timed on the device."""
    if spec.backend == "tensorrt":
        return {}
    batch = job.input.repeat(one, job.feed_batch)
    base = job.fp32_call(spec.backend) if spec.precision != "fp32" else None  # an fp32 bundle is the baseline, not against itself
    if base is None:
        return {"latency_ms": round(batch1_ms(predictor.native_call(), batch), 3), "latency_batch": job.feed_batch}
    m = paired_ratio(base, predictor.native_call(), batch)
    return {
        "latency_ms": round(m["ms"], 3),
        "latency_batch": job.feed_batch,
        "fp32_latency_ms": round(m["base_ms"], 3),
        "speedup_vs_fp32": round(m["ratio"], 2),
        "speedup_spread": [round(m["ratio_q25"], 2), round(m["ratio_q75"], 2)],  # quartiles of the paired ratios
    }


def speed_verdict(speedup: float, spread: Any) -> str:
    """ "faster", "slower" or "within noise": the ratio's quartiles on the same side of 1 (or, without them, the ratio)."""
    low, high = spread if isinstance(spread, (list, tuple)) and len(spread) == 2 else (speedup, speedup)
    if low > 1.0:
        return "faster"
    if high < 1.0:
        return "slower"
    return "within noise"


def warn_when_int8_is_not_faster(results: list[ExportResult]) -> None:
    """Warn when an int8 bundle is clearly slower than fp32 on the same backend here (the quartiles of its paired
    ratios below 1; ONNX Runtime int8 measured 1.7x slower without VNNI on EfficientNet-Lite0), naming the fastest
    passing bundle instead; say "within noise" (no warning) when the spread straddles 1."""
    measured = [(r.format, v, r.passed) for r in results if (v := r.validation) and v.get("speedup_vs_fp32")]
    qat = {r.format for r in results if (r.validation or {}).get("rung") == "quantisation-aware"}
    passing = {
        name: v["speedup_vs_fp32"]
        for name, v, passed in measured
        if passed and FORMAT_SPECS[name].precision != "fp32" and speed_verdict(v["speedup_vs_fp32"], v.get("speedup_spread")) == "faster"
    }
    best = max(passing, key=passing.__getitem__, default=None)
    for name, v, _ in measured:
        if FORMAT_SPECS[name].precision != "int8":
            continue
        speedup, spread, batch = v["speedup_vs_fp32"], v.get("speedup_spread"), v["latency_batch"]
        verdict = speed_verdict(speedup, spread)
        shown = f"{speedup:.2f}x at batch {batch}" + (f", quartiles {spread[0]:.2f}-{spread[1]:.2f}x" if spread else "")
        if verdict == "within noise":
            logger.info(f"{name}: as fast as fp32 on this CPU within noise ({shown}); `edge-transfer bench` measures it properly")
            continue
        if verdict == "faster":
            continue
        other = f"; here {best} is {passing[best]:.2f}x its fp32" if best is not None and best != name else ""
        why = ""
        if FORMAT_SPECS[name].backend == "onnxruntime":
            why = (
                "; a quantisation-aware graph quantises layer inputs only (TensorRT's layout), which ONNX Runtime runs "
                "as float layers between quantise/dequantise pairs"
                if name in qat
                else "; ONNX Runtime's int8 kernels often do not pay off without VNNI, least of all on depthwise convolutions"
            )
        logger.warning(f"{name} is slower than fp32 on this CPU ({shown}{why}){other}")
