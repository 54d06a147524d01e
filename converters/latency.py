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


def fp32_call(backend: str, onnx_path: str | os.PathLike[str], input_name: str) -> Callable[[np.ndarray], Any] | None:
    """The plain fp32 call of `backend` on the ONNX graph (None for backends this host cannot run, e.g. TensorRT)."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {input_name: batch})
    if backend == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda batch: request.infer(batch)
    return None
