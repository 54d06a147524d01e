"""How much faster each exported bundle is than plain fp32 on the same backend, measured on this host at batch 1.

The export table's `speed-up` column: each bundle's own backend call (`Predictor.native_call`, nothing of ours
around it) against the same backend running the fp32 ONNX graph with nothing changed (ONNX Runtime's default
session; OpenVINO compiled for the CPU with the precision pinned to f32, as bundles are), both timed the same way.
It is a quick indication from the export host, not a benchmark (`edge-transfer bench` is the benchmark, on the
device); it tells a user which int8 is worth it here, e.g. that ONNX Runtime int8 is no faster than fp32 on a CPU
without VNNI.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ITERATIONS, WARMUP = 30, 5
PAIRS = 40  # interleaved pairs of calls for a ratio: a machine's drift hits both calls of a pair alike


def batch1_ms(call: Callable[[np.ndarray], Any], batch: np.ndarray, *, iterations: int = ITERATIONS, warmup: int = WARMUP) -> float:
    """The median milliseconds of `call(batch)` over `iterations` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call(batch)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def paired_ratio(base: Callable[[np.ndarray], Any], call: Callable[[np.ndarray], Any], batch: np.ndarray, *, pairs: int = PAIRS) -> dict[str, float]:
    """`base`'s time over `call`'s, from interleaved pairs of calls (which goes first alternates): the median ratio and
    its quartiles (the spread a noisy machine gives), with each call's median milliseconds."""
    for _ in range(WARMUP):
        base(batch)
        call(batch)
    ratios, base_ms, call_ms = [], [], []
    for i in range(pairs):
        timed = []
        for fn in (base, call) if i % 2 == 0 else (call, base):
            t0 = time.perf_counter()
            fn(batch)
            timed.append(time.perf_counter() - t0)
        b, c = timed if i % 2 == 0 else timed[::-1]
        ratios.append(b / c)
        base_ms.append(1000 * b)
        call_ms.append(1000 * c)
    q25, q50, q75 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return {"ratio": q50, "ratio_q25": q25, "ratio_q75": q75, "base_ms": statistics.median(base_ms), "ms": statistics.median(call_ms)}


def fp32_call(backend: str, onnx_path: str | os.PathLike[str], feeds: Callable[[Any], dict[str, np.ndarray]]) -> Callable[[Any], Any] | None:
    """The plain fp32 call of `backend` on the ONNX graph (None for backends this host cannot run, e.g. TensorRT);
    `feeds` binds a batch to the graph's inputs by name (the modality's)."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, feeds(batch))
    if backend == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda batch: request.infer(feeds(batch))
    return None
